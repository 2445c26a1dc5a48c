package e2e_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPrivilegedK8sAgentStartsWithoutAPI reproduces the real-cluster
// findings of issue #12: an agent starts while the API server is down, on a
// node without a default route (lab nodes have none: their main tables hold
// only the underlay /15 and the pod routes; the test checks that). Its first
// reads of its Node and of kube-system/kubeadm-config fail. Once the API
// server is back the agent must find its underlay by the Node's InternalIP
// (not the default route), become ready, carry pod traffic encrypted both
// ways, and pick up the cluster's pod range from kubeadm's podSubnet without
// a restart; `wgmesh status -o json` says the range is pending while the
// API is down.
func TestPrivilegedK8sAgentStartsWithoutAPI(t *testing.T) {
	agentStartsWithoutAPI(t, false)
}

// TestPrivilegedK8sKubeadmRangeAfterAPIOutage is the same start with
// --endpoint given, so the underlay is known from the flag alone: what is
// left to fail is the cluster pod range, which must still arrive once the
// API server is back.
func TestPrivilegedK8sKubeadmRangeAfterAPIOutage(t *testing.T) {
	agentStartsWithoutAPI(t, true)
}

// agentStartsWithoutAPI runs the scenarios above; withEndpoint gives node3's
// agent --endpoint.
func agentStartsWithoutAPI(t *testing.T, withEndpoint bool) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 3, Without: []string{"node3"}})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	n3 := k.Nodes[2]
	if out, err := n3.Exec(ctx, "ip", "route", "show", "default"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("node3 must have no IPv4 default route for this scenario: %q, %v", out, err)
	}
	if out, err := n3.Exec(ctx, "ip", "-6", "route", "show", "default"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("node3 must have no IPv6 default route for this scenario: %q, %v", out, err)
	}
	_, err := k.admin.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kubeadm-config"},
		Data: map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n" +
			"networking:\n  podSubnet: 10.244.0.0/16,fd00:10:244::/48\n  serviceSubnet: 10.96.0.0/12\n"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n3.Keygen(ctx); err != nil {
		t.Fatal(err)
	}

	if err := k.server.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	var extra []string
	if withEndpoint {
		extra = []string{"--endpoint", n3.Endpoint().String()}
	}
	ag := k.startAgent(t, n3, extra...)
	// The agent's start-up reads run against the stopped API server: wait
	// until it serves its status (it is past them then) and a few seconds
	// more, so no first read can still succeed late.
	var pendingSeen string
	if err := k8sPoll(ctx, 90*time.Second, func() bool {
		out, err := n3.Wgmesh(ctx, "status", "--interface", n3.Interface, "-o", "json")
		if err != nil {
			return false
		}
		pendingSeen = startupPending(out)
		return true
	}); err != nil {
		t.Fatalf("agent on node3 never served its status while the API server was down:\n%s", ag.LogTail(30))
	}
	time.Sleep(5 * time.Second)
	if out, err := n3.Wgmesh(ctx, "status", "--interface", n3.Interface, "-o", "json"); err == nil {
		pendingSeen = startupPending(out)
	}
	t.Logf("measured: while the API server is down node3's status says clusterCIDRsPending=%q", pendingSeen)
	if pendingSeen == "" {
		t.Errorf("status -o json of node3 while the API server is down does not say the cluster range is pending")
	}
	if err := k.server.StartAPIServer(withTimeout(ctx, 2*time.Minute)); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	back := time.Now()
	t.Logf("measured: kube-apiserver down for %s", back.Sub(down).Round(time.Millisecond))

	// client-go's reflector re-lists with a backoff of up to 30 s plus
	// jitter; the kubeadm read's backoff is capped at 1 min.
	k.waitMesh(t, ctx, k.Nodes)
	t.Logf("measured: node3 ready with its peers %s after the API server returned", time.Since(back).Round(time.Millisecond))
	st, err := k8sAgentStatus(ctx, n3)
	if err != nil {
		t.Fatal(err)
	}
	var mtu struct {
		LinkMTU int `json:"linkMTU"`
	}
	_ = json.Unmarshal([]byte(st.raw), &mtu)
	t.Logf("measured: node3 tunnel MTU %d (eth0 1500)", mtu.LinkMTU)
	if mtu.LinkMTU != 1440 {
		t.Errorf("node3 tunnel MTU %d, want 1440 (eth0's 1500 − 60)", mtu.LinkMTU)
	}

	start := time.Now()
	for _, p := range k8sPodPairs(k.Nodes) {
		if p[0].Node != n3 && p[1].Node != n3 {
			continue
		}
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	t.Logf("measured: node3's pods and the others' answered IPv4 and IPv6 pings both ways after %s", time.Since(start).Round(time.Millisecond))

	var ranges []string
	var pending string
	if err := k8sPoll(ctx, 150*time.Second, func() bool {
		out, err := n3.Wgmesh(ctx, "status", "--interface", n3.Interface, "-o", "json")
		if err != nil {
			return false
		}
		var s struct {
			ClusterCIDRs []string `json:"clusterCIDRs"`
			Pending      string   `json:"clusterCIDRsPending"`
		}
		if i := strings.Index(out, "{"); i < 0 || json.Unmarshal([]byte(out[i:]), &s) != nil {
			return false
		}
		ranges, pending = s.ClusterCIDRs, s.Pending
		return slices.Equal(ranges, []string{"10.244.0.0/16", "fd00:10:244::/48"}) && pending == ""
	}); err != nil {
		t.Errorf("node3's cluster ranges %v (pending %q) never became kubeadm's podSubnet [10.244.0.0/16 fd00:10:244::/48] after the API server returned\n%s",
			ranges, pending, ag.LogTail(30))
	} else {
		t.Logf("measured: node3 took kubeadm's podSubnet %v %s after the API server returned", ranges, time.Since(back).Round(time.Millisecond))
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// startupPending returns clusterCIDRsPending from `wgmesh status -o json`.
func startupPending(out string) string {
	var s struct {
		Pending string `json:"clusterCIDRsPending"`
	}
	if i := strings.Index(out, "{"); i >= 0 {
		_ = json.Unmarshal([]byte(out[i:]), &s)
	}
	return s.Pending
}
