package kube

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

// failFirst makes the first n reads of kubeadm-config fail with err; it
// returns the number of reads so far.
func failFirst(client *fake.Clientset, n int, err error) func() int {
	var mu sync.Mutex
	calls := 0
	client.PrependReactor("get", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= n {
			return true, nil, err
		}
		return false, nil, nil
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
}

func fastKubeadm(o *Options) {
	o.KubeadmRanges = true
	o.KubeadmMinBackoff, o.KubeadmMaxBackoff, o.KubeadmForbiddenRetry = 5*time.Millisecond, 20*time.Millisecond, 50*time.Millisecond
}

// TestKubeadmRangesRetried: a read that fails transiently at start (API
// server unreachable) is retried in the background; until it succeeds the
// state is pending and says why, then the ranges are returned and Changes
// is signalled so the reconciler applies them.
func TestKubeadmRangesRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"unreachable", errors.New("dial tcp 198.18.0.2:6443: connect: connection refused")},
		{"unavailable", apierrors.NewServiceUnavailable("etcd is starting")},
		// RBAC granted after the agent started (a ClusterRoleBinding
		// applied after the DaemonSet, an API server whose RBAC cache is
		// still empty after its start): retried too.
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, KubeadmConfigName, fmt.Errorf("rbac"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(kubeadmConfig(clusterConfiguration))
			// Hold the first failure until the pending state is checked.
			calls := failFirst(client, 3, tc.err)
			s := newSource(t, client, fastKubeadm)
			if st := s.ClusterRanges(); !st.Pending || s.ClusterCIDRs() != nil {
				t.Errorf("before Run: %+v, want pending without ranges", st)
			}
			start(t, client, s)
			eventually(t, "kubeadm ranges read", func() bool { return s.ClusterCIDRs() != nil })
			if got := fmt.Sprint(s.ClusterCIDRs()); got != "[10.244.0.0/16 fd00:10:244::/48]" {
				t.Errorf("ClusterCIDRs = %s", got)
			}
			if st := s.ClusterRanges(); st.Pending || st.Detail != "" {
				t.Errorf("after the read: %+v, want neither pending nor a detail", st)
			}
			if n := calls(); n != 4 {
				t.Errorf("%d reads, want 4 (3 failed, 1 succeeded)", n)
			}
			expectSignal(t, s, "Changes after the ranges arrived")
		})
	}
}

// TestKubeadmRangesPendingDetail: while the reads fail the state says
// pending, names the ConfigMap and the failure; Forbidden says how to fix
// it.
func TestKubeadmRangesPendingDetail(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want []string
	}{
		{"unreachable", errors.New("connection refused"), []string{"kube-system/kubeadm-config", "connection refused", "retrying in"}},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, KubeadmConfigName, fmt.Errorf("rbac")),
			[]string{"RBAC forbids", "kube-system/kubeadm-config", "backing off to every", "--cluster-cidrs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset(kubeadmConfig(clusterConfiguration))
			calls := failFirst(client, 1<<30, tc.err)
			s := newSource(t, client, fastKubeadm)
			start(t, client, s)
			eventually(t, "two failed reads", func() bool { return calls() >= 2 })
			st := s.ClusterRanges()
			if !st.Pending || st.CIDRs != nil {
				t.Errorf("state %+v, want pending without ranges", st)
			}
			for _, w := range tc.want {
				if !strings.Contains(st.Detail, w) {
					t.Errorf("detail %q lacks %q", st.Detail, w)
				}
			}
		})
	}
}

// TestKubeadmRangesFinal: no ConfigMap, no field, or an unusable value end
// the read after one attempt, not pending, saying why; nothing is guessed.
func TestKubeadmRangesFinal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client *fake.Clientset
		want   string
	}{
		{"no ConfigMap", fake.NewClientset(), "not a kubeadm cluster"},
		{"no field", fake.NewClientset(kubeadmConfig("networking: {}\n")), "not a kubeadm cluster"},
		{"unusable", fake.NewClientset(kubeadmConfig("networking:\n  podSubnet: 10.244.0.1/16\n")), "host bits set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := failFirst(tc.client, 0, nil)
			s := newSource(t, tc.client, fastKubeadm)
			start(t, tc.client, s)
			eventually(t, "read ended", func() bool { return !s.ClusterRanges().Pending })
			time.Sleep(100 * time.Millisecond) // several backoffs: no retry may follow
			st := s.ClusterRanges()
			if st.CIDRs != nil || !strings.Contains(st.Detail, tc.want) {
				t.Errorf("state %+v, want no ranges and a detail with %q", st, tc.want)
			}
			if n := calls(); n != 1 {
				t.Errorf("%d reads, want 1", n)
			}
		})
	}
}

// TestKubeadmRangesOff: without the option nothing is read.
func TestKubeadmRangesOff(t *testing.T) {
	client := fake.NewClientset(kubeadmConfig(clusterConfiguration))
	calls := failFirst(client, 0, nil)
	s := newSource(t, client, nil)
	start(t, client, s)
	time.Sleep(50 * time.Millisecond)
	if n := calls(); n != 0 || s.ClusterCIDRs() != nil || s.ClusterRanges().Pending || s.ClusterRanges().Detail != "" {
		t.Errorf("%d reads, state %+v; want none", n, s.ClusterRanges())
	}
}

// TestKubeadmRangesForbiddenAtAPIStart: an API server that has just
// started answers Forbidden until its RBAC cache is filled; the first
// retries after a Forbidden come quickly, so the range arrives long before
// the (here one-hour) cap on the Forbidden backoff.
func TestKubeadmRangesForbiddenAtAPIStart(t *testing.T) {
	client := fake.NewClientset(kubeadmConfig(clusterConfiguration))
	calls := failFirst(client, 2, apierrors.NewForbidden(schema.GroupResource{Resource: "configmaps"}, KubeadmConfigName, fmt.Errorf("rbac cache not synced")))
	s := newSource(t, client, func(o *Options) {
		fastKubeadm(o)
		o.KubeadmForbiddenRetry = time.Hour
	})
	start(t, client, s)
	eventually(t, "kubeadm ranges read after two Forbidden answers", func() bool { return s.ClusterCIDRs() != nil })
	if n := calls(); n != 3 {
		t.Errorf("%d reads, want 3", n)
	}
}
