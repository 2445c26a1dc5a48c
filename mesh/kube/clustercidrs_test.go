package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

const clusterConfiguration = `apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: v1.30.0
networking:
  dnsDomain: cluster.local
  podSubnet: 10.244.0.0/16,fd00:10:244::/48
  serviceSubnet: 10.96.0.0/12
`

func kubeadmConfig(data string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: KubeadmConfigNamespace, Name: KubeadmConfigName},
		Data:       map[string]string{"ClusterConfiguration": data},
	}
}

func TestKubeadmPodSubnet(t *testing.T) {
	ctx := context.Background()
	cidrs, found, err := KubeadmPodSubnet(ctx, fake.NewClientset(kubeadmConfig(clusterConfiguration)))
	if err != nil || !found || fmt.Sprint(cidrs) != "[10.244.0.0/16 fd00:10:244::/48]" {
		t.Errorf("KubeadmPodSubnet = %v, %v, %v", cidrs, found, err)
	}
	// No ConfigMap (not a kubeadm cluster), or no podSubnet: not found.
	for _, c := range []*fake.Clientset{fake.NewClientset(), fake.NewClientset(kubeadmConfig("networking: {}\n"))} {
		if cidrs, found, err := KubeadmPodSubnet(ctx, c); err != nil || found || cidrs != nil {
			t.Errorf("without podSubnet: %v, %v, %v", cidrs, found, err)
		}
	}
	// RBAC without the read: an error the caller can tell apart (it may
	// be granted later).
	forbidden := fake.NewClientset()
	forbidden.PrependReactor("get", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, KubeadmConfigName, fmt.Errorf("rbac"))
	})
	if cidrs, found, err := KubeadmPodSubnet(ctx, forbidden); !apierrors.IsForbidden(err) || errors.Is(err, ErrKubeadmUnusable) || found || cidrs != nil {
		t.Errorf("forbidden: %v, %v, %v", cidrs, found, err)
	}
	// A value that cannot be used is an error naming the ConfigMap and field.
	_, _, err = KubeadmPodSubnet(ctx, fake.NewClientset(kubeadmConfig("networking:\n  podSubnet: 10.244.0.1/16\n")))
	if err == nil || !errors.Is(err, ErrKubeadmUnusable) || !strings.Contains(err.Error(), "ConfigMap kube-system/kubeadm-config, ClusterConfiguration: networking.podSubnet: \"10.244.0.1/16\" has host bits set") {
		t.Errorf("bad podSubnet: %v", err)
	}
}

func TestParseKubeadmPodSubnet(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{in: clusterConfiguration, want: "[10.244.0.0/16 fd00:10:244::/48]"},
		{in: "", want: "[]"},
		{in: "networking:\n  podSubnet: \"\"\n", want: "[]"},
		{in: "networking:\n  podSubnet: 7\n", err: "want a string"},
		{in: "networking: [\n", err: "not a ClusterConfiguration document"},
		{in: "networking:\n  podSubnet: 0.0.0.0/0\n", err: "whole address family"},
	} {
		got, err := ParseKubeadmPodSubnet(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseKubeadmPodSubnet(%q) = %v, %v; want error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != tt.want {
			t.Errorf("ParseKubeadmPodSubnet(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseKubeadmPodSubnet(f *testing.F) {
	for _, s := range []string{clusterConfiguration, "", "networking: {podSubnet: [a]}", "networking:\n  podSubnet: 10.244.0.1/16,::/0\n", "&a [*a]", "networking: &n {podSubnet: *n}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cidrs, err := ParseKubeadmPodSubnet(s)
		if err != nil && cidrs != nil {
			t.Fatalf("prefixes %v with error %v", cidrs, err)
		}
		for _, p := range cidrs {
			if !p.IsValid() || p != p.Masked() || p.Bits() == 0 {
				t.Fatalf("accepted %v", p)
			}
		}
	})
}
