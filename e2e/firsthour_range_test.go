package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// The first-hour range scenarios (issue 17, item 1): pod traffic to a node
// the agent does not know — an entry removed from the peers file, a file
// read half-written, a node not yet in the file at the first start — must be
// dropped, never sent in plaintext, once the operator states the cluster's
// pod range. The lab's main tables route the other nodes' pod CIDRs in
// plaintext (host-gw style), so anything the wgmesh table lets through shows
// on the capture.
//
// A binary without --cluster-cidrs (the branch point) runs the same steps
// without the range, which reproduces the window the scenarios close.

// rangeCIDRs is the lab's pod range: every node's pod CIDRs lie inside.
const rangeCIDRs = "10.244.0.0/16,fd00:10:244::/48"

// rangeSupported reports whether the binary knows --cluster-cidrs.
func rangeSupported(t *testing.T) bool {
	t.Helper()
	out, _ := exec.Command(labWgmeshBinary(t), "agent", "--help").CombinedOutput()
	if strings.Contains(string(out), "--cluster-cidrs") {
		return true
	}
	t.Logf("%s has no --cluster-cidrs: running the scenario without a cluster range", labWgmeshBinary(t))
	return false
}

// startRange builds the two-node range lab with agents running.
func startRange(t *testing.T, args []string) *labMesh {
	t.Helper()
	rangeRemoveStale(t)
	return startLabMesh(t, labMeshOptions{Options: lab.Options{Nodes: 2, Prefix: "wgmfr"}, AgentArgs: args})
}

var rangeStale sync.Once

// rangeRemoveStale removes, once per test binary, the range lab's
// namespaces a killed earlier run left behind.
func rangeRemoveStale(t *testing.T) {
	rangeStale.Do(func() {
		if removed, err := lab.RemoveStale("wgmfr"); err != nil || len(removed) > 0 {
			t.Logf("removed stale range lab namespaces %v (%v)", removed, err)
		}
	})
}

// rangePingUnknown pings the unknown node's pod from the node's pod, both
// families, and requires that nothing answers (the packets were dropped) and
// that the capture saw no plaintext while it ran.
func rangePingUnknown(t *testing.T, ctx context.Context, m *labMesh, from, unknown *lab.Node) {
	t.Helper()
	before := m.plaintextSoFar(t)
	for _, dst := range []netip.Addr{unknown.Pods[0].Addr4, unknown.Pods[0].Addr6} {
		r, err := from.Pods[0].Ping(ctx, dst, 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("measured: %s -> %s's pod %s: %s", from.Pods[0].Name, unknown.Name, dst, r)
		if r.Received > 0 {
			t.Errorf("%s's pod reached %s's pod at %s although %s does not know %s: %s", from.Name, unknown.Name, dst, from.Name, unknown.Name, r)
		}
	}
	after := m.plaintextSoFar(t)
	if d := after.Plaintext - before.Plaintext; d != 0 {
		t.Errorf("%d plaintext pod packets crossed the wire while %s's pod pinged the unknown %s", d, from.Name, unknown.Name)
	}
}

// rangeRequireCovered checks the node's table holds the range's unreachable
// routes, its egress guard holds the unknown node's pod addresses but not
// its own, and its status names the ranges.
func rangeRequireCovered(t *testing.T, ctx context.Context, n, unknown *lab.Node) {
	t.Helper()
	for fam, set := range map[int]string{4: "encrypt4", 6: "encrypt6"} {
		nft, err := n.Exec(ctx, "nft", "list", "set", "inet", instanceNFTTable(n.Interface), set)
		if err != nil {
			t.Fatalf("nft on %s: %v", n.Name, err)
		}
		if !k8sNftCovers(nft, unknown.Pods[0].Addr(fam)) {
			t.Errorf("%s's egress guard does not hold %s's pod %s:\n%s", n.Name, unknown.Name, unknown.Pods[0].Addr(fam), nft)
		}
		if k8sNftCovers(nft, n.Pods[0].Addr(fam)) {
			t.Errorf("%s's egress guard holds its own pod %s:\n%s", n.Name, n.Pods[0].Addr(fam), nft)
		}
	}
	routes, err := n.Routes(ctx, 51820)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"unreachable 10.244.0.0/16", "unreachable fd00:10:244::/48"} {
		if !strings.Contains(strings.Join(routes, "\n"), want) {
			t.Errorf("%s table 51820 lacks %q: %q", n.Name, want, routes)
		}
	}
	st := nodeStatusJSON(t, ctx, n)
	if got := fmt.Sprint(st["clusterCIDRs"]); got != "[10.244.0.0/16 fd00:10:244::/48]" {
		t.Errorf("%s status clusterCIDRs = %s", n.Name, got)
	}
}

// TestPrivilegedFirstHourRangeEntryRemoved: host-b's entry is removed from
// host-a's peers file while host-b still runs; host-a's pods must not reach
// host-b's pods in plaintext.
func TestPrivilegedFirstHourRangeEntryRemoved(t *testing.T) {
	labRequireRoot(t)
	var args []string
	ok := rangeSupported(t)
	if ok {
		args = []string{"--cluster-cidrs", rangeCIDRs}
	}
	m := startRange(t, args)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a, b := m.Nodes[0], m.Nodes[1]
	for _, dst := range []netip.Addr{b.Pods[0].Addr4, b.Pods[0].Addr6} {
		if err := waitPing(withTimeout(ctx, time.Minute), a.Pods[0], dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.WritePeersFile([]lab.PeerEntry{a.Entry()}); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitPeers(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Fatalf("%s kept %s's peer: %v", a.Name, b.Name, err)
	}
	rangePingUnknown(t, ctx, m, a, b)
	if ok {
		rangeRequireCovered(t, ctx, a, b)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedFirstHourRangeHalfWrittenFile: host-a's peers file is
// rewritten in place and the agent reads it half-written — valid YAML that
// ends after host-a's own entry. The range comes from the file's
// clusterCIDRs field, written first.
func TestPrivilegedFirstHourRangeHalfWrittenFile(t *testing.T) {
	labRequireRoot(t)
	ok := rangeSupported(t)
	m := startRange(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a, b := m.Nodes[0], m.Nodes[1]
	header := ""
	if ok {
		header = "clusterCIDRs: [\"10.244.0.0/16\", \"fd00:10:244::/48\"]\n"
	}
	full := header + string(lab.RenderPeersFile(m.Entries()))
	if err := os.WriteFile(a.PeersFile, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok {
		err := lab.Poll(withTimeout(ctx, 30*time.Second), 200*time.Millisecond, func(ctx context.Context) (bool, error) {
			st, err := a.Status(ctx)
			return err == nil && st.Ready, err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, dst := range []netip.Addr{b.Pods[0].Addr4, b.Pods[0].Addr6} {
		if err := waitPing(withTimeout(ctx, time.Minute), a.Pods[0], dst); err != nil {
			t.Fatal(err)
		}
	}
	// The writer truncates and writes host-a's part; host-b's entry would
	// follow in a second write that the agent has not seen yet.
	cut := strings.Index(full, "  - name: "+b.Name+"\n")
	if cut < 0 {
		t.Fatalf("no entry for %s in\n%s", b.Name, full)
	}
	f, err := os.OpenFile(a.PeersFile, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(full[:cut]); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitPeers(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Fatalf("%s did not read the half-written file: %v", a.Name, err)
	}
	rangePingUnknown(t, ctx, m, a, b)
	if ok {
		rangeRequireCovered(t, ctx, a, b)
	}
	// The writer finishes: host-b is back.
	if _, err := f.WriteString(full[cut:]); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitPeers(withTimeout(ctx, 30*time.Second), b); err != nil {
		t.Fatalf("%s did not read the completed file: %v", a.Name, err)
	}
	if err := waitPing(withTimeout(ctx, time.Minute), a.Pods[0], b.Pods[0].Addr4); err != nil {
		t.Fatal(err)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedFirstHourRangeFirstStart: host-a starts with a peers file
// that lists only itself (its copy of the file is behind host-b's); host-b's
// pods are outside its knowledge from its first apply on, and must not be
// reached in plaintext. Then host-a learns host-b and the mesh forms.
func TestPrivilegedFirstHourRangeFirstStart(t *testing.T) {
	labRequireRoot(t)
	var args []string
	ok := rangeSupported(t)
	if ok {
		args = []string{"--cluster-cidrs", rangeCIDRs}
	}
	rangeRemoveStale(t)
	l := newTestLab(t, lab.Options{Nodes: 2, Prefix: "wgmfr", Wgmesh: labWgmeshBinary(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := &labMesh{Lab: l, agents: map[string]*lab.Agent{}}
	var err error
	if m.capture, err = l.StartCapture(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := l.Nodes[0], l.Nodes[1]
	for _, n := range l.Nodes {
		if _, err := n.Keygen(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.WritePeersFile([]lab.PeerEntry{a.Entry()}); err != nil {
		t.Fatal(err)
	}
	if err := b.WritePeersFile(l.Entries()); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		ag, err := l.StartAgent(n, args...)
		if err != nil {
			t.Fatal(err)
		}
		m.agents[n.Name] = ag
	}
	for _, n := range l.Nodes {
		if err := n.WaitReady(withTimeout(ctx, time.Minute)); err != nil {
			t.Fatalf("agent on %s: %v", n.Name, err)
		}
	}
	if err := b.WaitPeers(withTimeout(ctx, 30*time.Second), a); err != nil {
		t.Fatal(err)
	}
	// host-b's pod sends too: its handshakes reach host-a (WireGuard on
	// the wire) and are refused there, its pings never arrive.
	probe, err := b.Pods[0].Ping(ctx, a.Pods[0].Addr4, 5, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: %s -> %s's pod: %s", b.Pods[0].Name, a.Name, probe)
	rangePingUnknown(t, ctx, m, a, b)
	if ok {
		rangeRequireCovered(t, ctx, a, b)
	}
	// host-a's file catches up: the mesh forms.
	if err := a.WritePeersFile(l.Entries()); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitPeers(withTimeout(ctx, 30*time.Second), b); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{b.Pods[0].Addr4, b.Pods[0].Addr6} {
		if err := waitPing(withTimeout(ctx, time.Minute), a.Pods[0], dst); err != nil {
			t.Fatal(err)
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedFirstHourRangeNodeDeleted: in Kubernetes mode the agents
// read the pod range from kube-system/kubeadm-config under the deploy
// base's RBAC; host-b's Node object is deleted while its machine (and
// agent) still runs, and host-a's pods must not reach host-b's in
// plaintext.
func TestPrivilegedFirstHourRangeNodeDeleted(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	a, b := k.Nodes[0], k.Nodes[1]
	_, err := k.admin.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kubeadm-config"},
		Data: map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\n" +
			"networking:\n  podSubnet: 10.244.0.0/16,fd00:10:244::/48\n  serviceSubnet: 10.96.0.0/12\n"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The agent reads the ConfigMap at start.
	ag := k.agent(a.Name)
	if err := ag.Stop(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := ag.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitReady(withTimeout(ctx, time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{b.Pods[0].Addr4, b.Pods[0].Addr6} {
		if err := waitPing(withTimeout(ctx, time.Minute), a.Pods[0], dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.admin.CoreV1().Nodes().Delete(ctx, b.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete Node %s: %v", b.Name, err)
	}
	if err := a.WaitPeers(withTimeout(ctx, time.Minute)); err != nil {
		t.Fatalf("%s kept the deleted %s as a peer: %v", a.Name, b.Name, err)
	}
	before, err := k.capture.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{b.Pods[0].Addr4, b.Pods[0].Addr6} {
		r, err := a.Pods[0].Ping(ctx, dst, 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("measured: %s -> deleted %s's pod %s: %s", a.Pods[0].Name, b.Name, dst, r)
		if r.Received > 0 {
			t.Errorf("%s's pod reached the deleted %s's pod at %s: %s", a.Name, b.Name, dst, r)
		}
	}
	after, err := k.capture.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Plaintext - before.Plaintext; d != 0 {
		t.Errorf("%d plaintext pod packets crossed the wire while %s's pod pinged the deleted %s", d, a.Name, b.Name)
	}
	if rangeSupported(t) {
		rangeRequireCovered(t, ctx, a, b)
	}
	requireNoPlaintext(t, k.stopCapture(t))
}
