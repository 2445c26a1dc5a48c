package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	ktesting "k8s.io/client-go/testing"
)

// meshNode is a healthy member: key i, endpoint 198.18.0.i, pod CIDR
// 10.244.i.0/24.
func meshNode(name string, i byte) *corev1.Node {
	n := fatNode(name, map[string]string{
		AnnotationPublicKey: testKey(i).String(),
		AnnotationEndpoint:  fmt.Sprintf("198.18.0.%d:51820", i),
	}, fmt.Sprintf("198.18.0.%d", i))
	n.Spec.PodCIDRs = []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd00:10:244:%d::/64", i)}
	return n
}

func with(n *corev1.Node, f func(*corev1.Node)) *corev1.Node {
	f(n)
	return n
}

func TestVerify(t *testing.T) {
	windows := func(l map[string]string) bool { return l["kubernetes.io/os"] == "windows" }
	tests := []struct {
		name        string
		nodes       []*corev1.Node
		opts        mesh.DeriveOptions
		problems    []string // "node Reason"
		warnings    []string // "node Reason"
		unencrypted []string
	}{
		{name: "empty cluster"},
		{name: "healthy", nodes: []*corev1.Node{meshNode("a", 1), meshNode("b", 2), meshNode("c", 3)}},
		{
			name:     "keyless node",
			nodes:    []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) { delete(n.Annotations, AnnotationPublicKey) })},
			problems: []string{"b NoKey"},
		},
		{
			name:        "keyless node with allow-unencrypted is still a problem",
			nodes:       []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) { delete(n.Annotations, AnnotationPublicKey) })},
			opts:        mesh.DeriveOptions{IPv4: true, IPv6: true, AllowUnencrypted: true},
			problems:    []string{"b NoKey"},
			unencrypted: []string{"b"},
		},
		{
			name: "unmanaged keyless node is no problem",
			nodes: []*corev1.Node{meshNode("a", 1), with(fatNode("win", nil, "198.18.0.9"), func(n *corev1.Node) {
				n.Labels["kubernetes.io/os"] = "windows"
				n.Spec.PodCIDRs = []string{"10.244.9.0/24"}
			})},
			opts:        mesh.DeriveOptions{IPv4: true, IPv6: true, Unmanaged: windows},
			unencrypted: []string{"win"},
		},
		{
			name: "duplicate keys",
			nodes: []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) {
				n.Annotations[AnnotationPublicKey] = testKey(1).String()
			}), meshNode("c", 3)},
			problems: []string{"b DuplicateKey"},
		},
		{
			// b's Node is older: it keeps the key whatever the names say.
			name: "duplicate keys: the older Node keeps the key",
			nodes: []*corev1.Node{
				with(meshNode("a", 1), func(n *corev1.Node) { n.CreationTimestamp = metav1.Unix(2000, 0) }),
				with(meshNode("b", 2), func(n *corev1.Node) {
					n.Annotations[AnnotationPublicKey] = testKey(1).String()
					n.CreationTimestamp = metav1.Unix(1000, 0)
				}),
			},
			problems: []string{"a DuplicateKey"},
		},
		{
			name: "duplicate endpoint is a warning",
			nodes: []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) {
				n.Annotations[AnnotationEndpoint] = "198.18.0.1:51820"
			})},
			warnings: []string{"a DuplicateEndpoint", "b DuplicateEndpoint"},
		},
		{
			name: "pod CIDR overlap",
			nodes: []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) {
				n.Spec.PodCIDRs = []string{"10.244.0.0/16"}
			})},
			problems: []string{"a CIDROverlap", "b CIDROverlap"},
		},
		{
			name: "IPv6 overlap ignored when IPv6 is off",
			nodes: []*corev1.Node{meshNode("a", 1), with(meshNode("b", 2), func(n *corev1.Node) {
				n.Spec.PodCIDRs = []string{"10.244.2.0/24", "fd00:10:244::/48"}
			})},
			opts: mesh.DeriveOptions{IPv4: true},
		},
		{
			name: "invalid annotations and no endpoint",
			nodes: []*corev1.Node{
				with(meshNode("a", 1), func(n *corev1.Node) { n.Annotations[AnnotationPublicKey] = "not-a-key" }),
				with(meshNode("b", 2), func(n *corev1.Node) { n.Annotations[AnnotationForceEndpoint] = "somewhere" }),
				with(meshNode("c", 3), func(n *corev1.Node) { delete(n.Annotations, AnnotationEndpoint) }),
				meshNode("d", 4),
			},
			problems: []string{"a InvalidKey", "b InvalidEndpoint", "c NoEndpoint"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objs []runtime.Object
			for _, n := range tt.nodes {
				objs = append(objs, n)
			}
			r, err := Verify(context.Background(), fake.NewClientset(objs...), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range r.Problems {
				got = append(got, fmt.Sprintf("%s %s", p.Node, p.Reason))
			}
			if !slices.Equal(got, tt.problems) {
				t.Errorf("problems = %q, want %q\n%+v", got, tt.problems, r.Problems)
			}
			var warnings []string
			for _, p := range r.Warnings {
				warnings = append(warnings, fmt.Sprintf("%s %s", p.Node, p.Reason))
			}
			if !slices.Equal(warnings, tt.warnings) {
				t.Errorf("warnings = %q, want %q\n%+v", warnings, tt.warnings, r.Warnings)
			}
			if !slices.Equal(r.Unencrypted, tt.unencrypted) {
				t.Errorf("unencrypted = %q, want %q", r.Unencrypted, tt.unencrypted)
			}
			if r.Nodes != len(tt.nodes) {
				t.Errorf("Nodes = %d, want %d", r.Nodes, len(tt.nodes))
			}
			if r.OK() != (len(tt.problems) == 0 && len(tt.unencrypted) == 0) {
				t.Errorf("OK() = %v with problems %q, unencrypted %q", r.OK(), got, r.Unencrypted)
			}
		})
	}
}

// TestVerifyPaginates serves the node list in pages, as a real API server
// does for large clusters.
func TestVerifyPaginates(t *testing.T) {
	client := fake.NewClientset()
	var all []corev1.Node
	for i := 1; i <= 7; i++ {
		all = append(all, *meshNode(fmt.Sprintf("n%d", i), byte(i)))
	}
	var limits []int64
	client.PrependReactor("list", "nodes", func(a ktesting.Action) (bool, runtime.Object, error) {
		opts := a.(ktesting.ListActionImpl).GetListOptions()
		limits = append(limits, opts.Limit)
		start := 0
		if opts.Continue != "" {
			fmt.Sscanf(opts.Continue, "page-%d", &start)
		}
		end := min(start+3, len(all))
		l := &corev1.NodeList{Items: all[start:end]}
		if end < len(all) {
			l.Continue = fmt.Sprintf("page-%d", end)
		}
		return true, l, nil
	})
	r, err := Verify(context.Background(), client, mesh.DeriveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Nodes != 7 || !r.OK() || len(limits) != 3 || limits[0] != verifyPageSize {
		t.Errorf("report %+v after %d list calls with limits %v", r, len(limits), limits)
	}

	failing := fake.NewClientset()
	failing.PrependReactor("list", "nodes", func(ktesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf("connection refused")
	})
	if _, err := Verify(context.Background(), failing, mesh.DeriveOptions{}); err == nil || !strings.Contains(err.Error(), "list nodes") {
		t.Errorf("err = %v", err)
	}
}
