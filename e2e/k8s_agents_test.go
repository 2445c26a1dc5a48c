package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/e2e/lab"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// The scenarios below run real agents against a real kube-apiserver. Every
// test has its own lab (nodes, pods, switch, control-plane namespace), its
// own API server and its own capture on the switch; see startK8sLab.

// TestPrivilegedK8sFullMesh is scenario 1 in Kubernetes mode: three agents
// publish their annotations, every pod reaches every other node's pod over
// IPv4 and IPv6, 16 MiB cross intact, and nothing crosses the wire in
// plaintext.
func TestPrivilegedK8sFullMesh(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	for _, n := range k.Nodes {
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if st.Backend != "userspace" && st.Backend != "kernel" {
			t.Errorf("agent on %s reports backend %q, want userspace or kernel", n.Name, st.Backend)
		}
		obj, err := k.admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			kube.AnnotationPublicKey: n.PublicKey,
			kube.AnnotationEndpoint:  netip.AddrPortFrom(n.Underlay, uint16(n.ListenPort)).String(),
			kube.AnnotationBackend:   st.Backend,
		}
		for key, v := range want {
			if got := obj.Annotations[key]; got != v {
				t.Errorf("Node %s annotation %s = %q, want %q", n.Name, key, got, v)
			}
		}
		var others []string
		for _, m := range otherNodes(k.Lab, n) {
			others = append(others, m.Name)
		}
		if st.Node != n.Name || !slices.Equal(st.peerNodes(), others) {
			t.Errorf("wgmesh status on %s: node %q, peers %v; want %s with peers %v", n.Name, st.Node, st.peerNodes(), n.Name, others)
		}
	}

	start := time.Now()
	for _, p := range labPairs(k.Lab) {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	t.Logf("measured: all %d pod pairs answered IPv4 and IPv6 pings after %s", len(labPairs(k.Lab)), time.Since(start).Round(time.Millisecond))
	for _, n := range k.Nodes {
		if err := n.WaitHandshakes(withTimeout(ctx, 30*time.Second), start.Add(-time.Minute)); err != nil {
			t.Errorf("handshakes on %s: %v", n.Name, err)
		}
	}
	from, to := k.Nodes[0].Pods[0], k.Nodes[1].Pods[0]
	res, err := lab.Transfer(withTimeout(ctx, 2*time.Minute), from, to, to.Addr4, 16<<20)
	if err != nil {
		t.Errorf("transfer %s -> %s: %v", from.Name, to.Name, err)
	} else {
		t.Logf("measured: 16 MiB TCP %s -> %s: %s", from.Name, to.Name, res)
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// TestPrivilegedK8sNodeJoin is scenario 2: a fourth node registers and starts
// its agent; every agent programs it (peer and tunnel routes) and the pods
// reach its pod. Reports how long that took, median and maximum over the
// agents.
func TestPrivilegedK8sNodeJoin(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 4, Registered: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	old, n4 := k.Nodes[:3], k.Nodes[3]
	if _, err := n4.Keygen(ctx); err != nil {
		t.Fatal(err)
	}
	k.join(t, ctx, n4, old, "join", 90*time.Second)
	// The mesh as a whole: every pod pair, both families, the new node too.
	for _, p := range labPairs(k.Lab) {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s after the join: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// join registers n and starts its agent, then measures until every agent of
// old has n programmed (peer and tunnel routes), n has them, and their pods
// reach n's pod; it logs median and maximum over old. Each agent gets limit
// to program the new node.
func (k *k8sLab) join(t *testing.T, ctx context.Context, n *lab.Node, old []*lab.Node, what string, limit time.Duration) {
	t.Helper()
	t0 := time.Now()
	k.register(t, ctx, n)
	k.startAgent(t, n)

	var published time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		err := lab.Poll(withTimeout(ctx, limit), 50*time.Millisecond, func(ctx context.Context) (bool, error) {
			obj, err := k.admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return obj.Annotations[kube.AnnotationPublicKey] == n.PublicKey, nil
		})
		published = time.Since(t0)
		if err != nil {
			t.Errorf("%s: %s never published its key: %v", what, n.Name, err)
		}
	})
	peerAt := make([]time.Duration, len(old))
	for i, m := range old {
		wg.Go(func() {
			err := lab.Poll(withTimeout(ctx, limit), 100*time.Millisecond, func(ctx context.Context) (bool, error) {
				return k8sProgrammed(ctx, m, n)
			})
			peerAt[i] = time.Since(t0)
			if err != nil {
				t.Errorf("%s: agent on %s never programmed %s: %v\n%s", what, m.Name, n.Name, err, k.agent(m.Name).LogTail(20))
			}
		})
	}
	var selfAt time.Duration
	wg.Go(func() {
		err := lab.Poll(withTimeout(ctx, limit), 100*time.Millisecond, func(ctx context.Context) (bool, error) {
			for _, m := range old {
				if ok, err := k8sProgrammed(ctx, n, m); !ok {
					return false, err
				}
			}
			return true, nil
		})
		selfAt = time.Since(t0)
		if err != nil {
			t.Errorf("%s: the new agent on %s never programmed the others: %v\n%s", what, n.Name, err, k.agent(n.Name).LogTail(20))
		}
	})
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Only now do pods talk to the new node: until both ends have their
	// routes, the lab's plain host-gw routes would carry the packets.
	reachAt := make([]time.Duration, len(old))
	for i, m := range old {
		wg.Go(func() {
			for _, fam := range families {
				if err := waitPing(withTimeout(ctx, 60*time.Second), m.Pods[0], n.Pods[0].Addr(fam)); err != nil {
					t.Errorf("%s: IPv%d %s -> %s: %v", what, fam, m.Pods[0].Name, n.Pods[0].Name, err)
				}
			}
			reachAt[i] = time.Since(t0)
		})
	}
	wg.Wait()
	p50, maxD := k8sPercentiles(peerAt)
	r50, rmax := k8sPercentiles(reachAt)
	t.Logf("measured: %s of %s: key annotation published after %s; new agent programmed the %d others after %s",
		what, n.Name, published.Round(time.Millisecond), len(old), selfAt.Round(time.Millisecond))
	t.Logf("measured: %s of %s: peer+routes on the existing agents p50 %s max %s (each: %s)",
		what, n.Name, p50.Round(time.Millisecond), maxD.Round(time.Millisecond), k8sDurations(peerAt))
	t.Logf("measured: %s of %s: pods reach it (IPv4+IPv6) p50 %s max %s after the Node was created",
		what, n.Name, r50.Round(time.Millisecond), rmax.Round(time.Millisecond))
}

// k8sProgrammed reports whether n's agent has m as a peer and tunnel routes
// for both of m's pod CIDRs.
func k8sProgrammed(ctx context.Context, n, m *lab.Node) (bool, error) {
	if m.PublicKey == "" {
		return false, fmt.Errorf("node %s has no key", m.Name)
	}
	keys, err := k8sPeerKeys(ctx, n)
	if err != nil {
		return false, err
	}
	if !slices.Contains(keys, m.PublicKey) {
		return false, fmt.Errorf("node %s: %s is no peer yet", n.Name, m.Name)
	}
	routes, err := k8sRoutesMentioning(ctx, n, m.PodCIDR4, m.PodCIDR6)
	if err != nil {
		return false, err
	}
	via := 0
	for _, r := range routes {
		if strings.Contains(r, "dev "+n.Interface) && !strings.HasPrefix(r, "unreachable") && !strings.HasPrefix(r, "throw") {
			via++
		}
	}
	if via != 2 {
		return false, fmt.Errorf("node %s: routes for %s are %q, want both pod CIDRs via %s", n.Name, m.Name, routes, n.Interface)
	}
	return true, nil
}

func k8sDurations(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(time.Millisecond).String())
	}
	return strings.Join(s, ", ")
}

// TestPrivilegedK8sNodeLeave is scenario 3: a node is taken out of the
// cluster (its agent stops, its Node is deleted); its peer, its routes and
// its strict-mode filter entries disappear from every other node, nothing
// about it remains in their status, and the rest of the mesh keeps working.
func TestPrivilegedK8sNodeLeave(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n3, rest := k.Nodes[2], k.Nodes[:2]
	for _, p := range labPairs(k.Lab) {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr4); err != nil {
			t.Fatalf("%s -> %s before the leave: %v", p[0].Name, p[1].Name, err)
		}
	}
	// What must go away has to be there first, or its absence proves nothing.
	for _, n := range rest {
		if ok, err := k8sProgrammed(ctx, n, n3); !ok {
			t.Fatalf("before the leave: %v", err)
		}
		nft, err := n.Exec(ctx, "nft", "list", "table", "inet", "wgmesh")
		if err != nil {
			t.Fatalf("nft on %s: %v", n.Name, err)
		}
		for _, p := range []netip.Prefix{n3.PodCIDR4, n3.PodCIDR6} {
			if !k8sNftCovers(nft, p.Addr()) {
				t.Fatalf("before the leave, %s's strict filter does not cover %s's pod CIDR %s:\n%s", n.Name, n3.Name, p, nft)
			}
		}
	}

	if err := k.agent(n3.Name).Stop(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Errorf("stop the agent on %s: %v", n3.Name, err)
	}
	t0 := time.Now()
	if err := k.admin.CoreV1().Nodes().Delete(ctx, n3.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete Node %s: %v", n3.Name, err)
	}
	gone := make([]time.Duration, len(rest))
	var wg sync.WaitGroup
	for i, n := range rest {
		wg.Go(func() {
			err := lab.Poll(withTimeout(ctx, 90*time.Second), 100*time.Millisecond, func(ctx context.Context) (bool, error) {
				return k8sForgotten(ctx, n, n3)
			})
			gone[i] = time.Since(t0)
			if err != nil {
				t.Errorf("%s still has traces of the deleted %s: %v\n%s", n.Name, n3.Name, err, k.agent(n.Name).LogTail(20))
			}
		})
	}
	wg.Wait()
	p50, maxD := k8sPercentiles(gone)
	t.Logf("measured: leave of %s: peer, routes and filter entries gone p50 %s max %s (each: %s)", n3.Name, p50.Round(time.Millisecond), maxD.Round(time.Millisecond), k8sDurations(gone))

	// Stays gone (a resync must not bring anything back) and nothing in
	// the agents' status mentions the node.
	time.Sleep(2 * time.Second)
	for _, n := range rest {
		if ok, err := k8sForgotten(ctx, n, n3); !ok {
			t.Errorf("after the leave settled: %v", err)
		}
		if err := n.WaitPeers(withTimeout(ctx, 10*time.Second), otherNodes(k.Lab, n, n3)...); err != nil {
			t.Errorf("peers after the leave: %v", err)
		}
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(st.raw, n3.Name) || len(st.Problems) > 0 || len(st.Unencrypted) > 0 {
			t.Errorf("status of %s after %s left: problems %+v, unencrypted %v, peers %v", n.Name, n3.Name, st.Problems, st.Unencrypted, st.peerNodes())
		}
	}
	for _, fam := range families {
		for _, p := range [][2]*lab.Pod{{rest[0].Pods[0], rest[1].Pods[0]}, {rest[1].Pods[0], rest[0].Pods[0]}} {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s after the leave: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// k8sForgotten reports whether n carries nothing about m any more: no peer
// with its key, no route and no filter entry for its pod CIDRs.
func k8sForgotten(ctx context.Context, n, m *lab.Node) (bool, error) {
	keys, err := k8sPeerKeys(ctx, n)
	if err != nil {
		return false, err
	}
	if slices.Contains(keys, m.PublicKey) {
		return false, fmt.Errorf("node %s: %s is still a peer", n.Name, m.Name)
	}
	routes, err := k8sRoutesMentioning(ctx, n, m.PodCIDR4, m.PodCIDR6)
	if err != nil {
		return false, err
	}
	if len(routes) > 0 {
		return false, fmt.Errorf("node %s: table %d still routes %s's pod CIDRs: %q", n.Name, k8sRouteTable, m.Name, routes)
	}
	nft, err := n.Exec(ctx, "nft", "list", "table", "inet", "wgmesh")
	if err != nil {
		return false, err
	}
	for _, p := range []netip.Prefix{m.PodCIDR4, m.PodCIDR6} {
		if k8sNftCovers(nft, p.Addr()) {
			return false, fmt.Errorf("node %s: table inet wgmesh still filters %s's pod CIDR %s", n.Name, m.Name, p)
		}
	}
	return true, nil
}

// TestPrivilegedK8sAPIServerOutage is scenario 6: kube-apiserver is stopped
// for $WGMESH_E2E_APISERVER_OUTAGE (60s by default) while pods ping each
// other continuously: not one echo may be lost, no agent may die. Once it is
// back, a node that joins afterwards is programmed everywhere: the agents
// re-established their watches.
func TestPrivilegedK8sAPIServerOutage(t *testing.T) {
	outage := k8sOutage(t)
	k := startK8sLab(t, k8sLabOptions{Nodes: 4, Registered: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute+outage)
	defer cancel()
	old, n4 := k.Nodes[:3], k.Nodes[3]
	if _, err := n4.Keygen(ctx); err != nil {
		t.Fatal(err)
	}
	// Warm-up: every tunnel has a session before the clock starts.
	for _, p := range k8sPodPairs(old) {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Fatalf("warm-up IPv%d %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	pids := map[string]int{}
	for _, n := range old {
		pids[n.Name] = k.agent(n.Name).Pid()
	}

	// The pings cover the outage and 20 s beyond, so the agents' resync
	// after the API server returns is measured too: it must not disturb
	// established sessions either.
	const interval = 200 * time.Millisecond
	const after = 20 * time.Second
	count := int((outage + after) / interval)
	pairs := []struct {
		from, to *lab.Pod
		fam      int
	}{
		{old[0].Pods[0], old[1].Pods[0], 4},
		{old[1].Pods[0], old[2].Pods[0], 6},
		{old[2].Pods[0], old[0].Pods[0], 4},
	}
	stopping := time.Now()
	if err := k.server.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	t.Logf("measured: kube-apiserver took %s to exit after SIGTERM; down for %s now, pinging for %s", down.Sub(stopping).Round(time.Millisecond), outage, outage+after)
	results := make([]lab.PingResult, len(pairs))
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() {
			results[i], errs[i] = p.from.Ping(withTimeout(ctx, outage+after+time.Minute), p.to.Addr(p.fam), count, interval)
		})
	}
	// Midway, the agents must still be alive and keep their peers.
	time.Sleep(outage / 2)
	for _, n := range old {
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Errorf("status of %s during the outage: %v", n.Name, err)
			continue
		}
		t.Logf("measured: during the outage %s reports ready=%v, %d peers", n.Name, st.Ready, len(st.Peers))
		if len(st.Peers) != len(old)-1 {
			t.Errorf("during the outage %s has peers %v, want the other %d", n.Name, st.peerNodes(), len(old)-1)
		}
	}
	time.Sleep(time.Until(down.Add(outage)))
	restart := time.Now()
	if err := k.server.StartAPIServer(withTimeout(ctx, 2*time.Minute)); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	t.Logf("measured: kube-apiserver down %s (process gone to ready again), ready %s after its restart", time.Since(down).Round(time.Millisecond), time.Since(restart).Round(time.Millisecond))
	wg.Wait()
	for i, p := range pairs {
		if errs[i] != nil {
			t.Errorf("ping IPv%d %s -> %s during the outage and resync: %v", p.fam, p.from.Name, p.to.Name, errs[i])
			continue
		}
		r := results[i]
		t.Logf("measured: during the outage and resync IPv%d %s -> %s: %s", p.fam, p.from.Name, p.to.Name, r)
		if r.Sent != count || r.Received != r.Sent {
			t.Errorf("IPv%d %s -> %s during the API server outage: %s, want all %d answered", p.fam, p.from.Name, p.to.Name, r, count)
		}
	}
	for _, n := range old {
		if a := k.agent(n.Name); !a.Running() || a.Pid() != pids[n.Name] {
			t.Errorf("agent on %s did not survive the outage (running %v, pid %d, was %d)\n%s", n.Name, a.Running(), a.Pid(), pids[n.Name], a.LogTail(30))
		}
	}
	// A change after the outage reaches every agent.
	// client-go's reflectors re-list with a backoff of up to 30 s plus as
	// much jitter after failed attempts, so an agent may need a minute to
	// notice the API server is back.
	k.join(t, ctx, n4, old, "join after the outage", 150*time.Second)
	for _, n := range old {
		if err := n.WaitReady(withTimeout(ctx, 60*time.Second)); err != nil {
			t.Errorf("agent on %s not ready after the outage: %v", n.Name, err)
		}
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// TestPrivilegedK8sNodeWithoutAgent is scenario 7: node3 is registered (pod
// CIDRs, InternalIP) but runs no agent and publishes nothing. In strict mode
// its pods are unreachable from the others and no plaintext leaves; with
// --allow-unencrypted traffic to it flows (plaintext, by choice) while the
// rest stays encrypted, and `wgmesh verify` fails naming node3 either way.
func TestPrivilegedK8sNodeWithoutAgent(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Without: []string{"node3"}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, n2, n3 := k.Nodes[0], k.Nodes[1], k.Nodes[2]
	agentNodes := []*lab.Node{n1, n2}
	target := n3.Pods[0]

	// Strict (the default): unreachable routes, nothing answers, no leak.
	for _, n := range agentNodes {
		if err := k8sWaitRouteKind(withTimeout(ctx, 30*time.Second), n, n3, "unreachable"); err != nil {
			t.Errorf("strict mode: %v", err)
		}
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Strict || slices.Contains(st.Unencrypted, n3.Name) {
			t.Errorf("status of %s: strict %v, unencrypted %v; want strict and node3 not unencrypted", n.Name, st.Strict, st.Unencrypted)
		}
	}
	if err := waitPing(withTimeout(ctx, 30*time.Second), n1.Pods[0], n2.Pods[0].Addr4); err != nil {
		t.Errorf("%s -> %s: %v", n1.Name, n2.Name, err)
	}
	for _, n := range agentNodes {
		for _, fam := range families {
			r, err := n.Pods[0].Ping(ctx, target.Addr(fam), 5, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("measured: strict mode IPv%d %s -> %s (no agent): %s", fam, n.Pods[0].Name, target.Name, r)
			if r.Received != 0 {
				t.Errorf("strict mode: %s reached %s on a node without an agent: %s", n.Pods[0].Name, target.Addr(fam), r)
			}
		}
	}
	snap, err := k.capture.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: strict phase capture %s", snap)
	if snap.Plaintext != 0 {
		t.Errorf("strict mode: %d plaintext pod packets on the wire, e.g. %s", snap.Plaintext, strings.Join(snap.PlaintextSamples, "; "))
	}
	k.requireVerifyNames(t, ctx, n3.Name)

	// --allow-unencrypted: the operator accepts plaintext to node3.
	for _, n := range agentNodes {
		k.startAgent(t, n, "--allow-unencrypted")
	}
	k.waitMesh(t, ctx, agentNodes)
	for _, n := range agentNodes {
		if err := k8sWaitRouteKind(withTimeout(ctx, 30*time.Second), n, n3, "throw"); err != nil {
			t.Errorf("--allow-unencrypted: %v", err)
		}
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if st.Strict || !slices.Contains(st.Unencrypted, n3.Name) {
			t.Errorf("status of %s with --allow-unencrypted: strict %v, unencrypted %v; want node3 listed", n.Name, st.Strict, st.Unencrypted)
		}
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), n.Pods[0], target.Addr(fam)); err != nil {
				t.Errorf("--allow-unencrypted: IPv%d %s -> %s: %v", fam, n.Pods[0].Name, target.Name, err)
			}
		}
	}
	for _, fam := range families {
		if err := waitPing(withTimeout(ctx, 30*time.Second), n1.Pods[0], n2.Pods[0].Addr(fam)); err != nil {
			t.Errorf("--allow-unencrypted: IPv%d %s -> %s: %v", fam, n1.Name, n2.Name, err)
		}
	}
	k.requireVerifyNames(t, ctx, n3.Name)
	if out := k.requireVerifyNames(t, ctx, n3.Name, "--allow-unencrypted"); !strings.Contains(out, "NOT encrypted: "+n3.Name) {
		t.Errorf("wgmesh verify --allow-unencrypted does not list %s as not encrypted", n3.Name)
	}

	r := k.stopCapture(t)
	t.Logf("measured: whole capture %s", r.Counts)
	if r.Plaintext == 0 {
		t.Errorf("no plaintext counted although node3 was reached without encryption: the counter is blind")
	}
	exempt, err := k.capture.Recount(lab.Classifier{
		PodPrefixes: lab.DefaultClassifier().PodPrefixes,
		Exempt:      []netip.Prefix{n3.PodCIDR4, n3.PodCIDR6},
	})
	if err != nil {
		t.Fatal(err)
	}
	requireNoPlaintext(t, lab.CaptureResult{Counts: exempt})
}

// k8sWaitRouteKind waits until n's wgmesh table has a route of kind
// ("unreachable", "throw") for both of m's pod CIDRs.
func k8sWaitRouteKind(ctx context.Context, n, m *lab.Node, kind string) error {
	return lab.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		routes, err := k8sRoutesMentioning(ctx, n, m.PodCIDR4, m.PodCIDR6)
		if err != nil {
			return false, err
		}
		hits := 0
		for _, r := range routes {
			if strings.HasPrefix(r, kind+" ") {
				hits++
			}
		}
		if hits != 2 || len(routes) != 2 {
			return false, fmt.Errorf("node %s: routes for %s's pod CIDRs %q, want %s for both", n.Name, m.Name, routes, kind)
		}
		return true, nil
	})
}

// requireVerifyNames runs `wgmesh verify` in the lab, requires it to fail
// naming node, and returns its output.
func (k *k8sLab) requireVerifyNames(t *testing.T, ctx context.Context, node string, extra ...string) string {
	t.Helper()
	out, code, err := k.verify(withTimeout(ctx, time.Minute), extra...)
	if err != nil {
		t.Fatalf("wgmesh verify %v: %v\n%s", extra, err, out)
	}
	t.Logf("wgmesh verify %v exited %d:\n%s", extra, code, out)
	if code == 0 || !strings.Contains(out, node) {
		t.Errorf("wgmesh verify %v exited %d; want non-zero and output naming %s", extra, code, node)
	}
	return out
}

// TestPrivilegedK8sBadInput is scenario 8: next to a healthy four-node mesh
// appear a Node with a malformed key, a newer one publishing node4's key and
// one claiming node4's endpoint. The malformed one and the newcomer are not
// programmed; node4's Node is older, so node4 keeps its key and stays in the
// mesh; the endpoint claimant is programmed on every agent, node4's
// included, as WireGuard tells peers apart by key (it runs no agent, so its
// pods are unreachable, never plaintext). Each offender gets a Warning
// Event, and the mesh keeps working without a plaintext packet.
func TestPrivilegedK8sBadInput(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	healthy, n4 := k.Nodes[:3], k.Nodes[3]
	if err := waitPing(withTimeout(ctx, 30*time.Second), healthy[0].Pods[0], n4.Pods[0].Addr4); err != nil {
		t.Fatalf("%s -> %s before the bad input: %v", healthy[0].Name, n4.Name, err)
	}

	n4Endpoint := netip.AddrPortFrom(n4.Underlay, uint16(n4.ListenPort)).String()
	bad := []struct {
		node   k8sNode
		reason string
	}{
		{k8sNode{Name: "badkey", Annotations: map[string]string{
			kube.AnnotationPublicKey: "not-a-wireguard-key", kube.AnnotationEndpoint: "198.18.0.31:51820"}}, "InvalidKey"},
		{k8sNode{Name: "dupkey", Annotations: map[string]string{
			kube.AnnotationPublicKey: n4.PublicKey, kube.AnnotationEndpoint: "198.18.0.32:51820"}}, "DuplicateKey"},
		{k8sNode{Name: "dupendpoint", Annotations: map[string]string{
			kube.AnnotationPublicKey: k8sTestKey(t).PublicKey().String(), kube.AnnotationEndpoint: n4Endpoint}}, "DuplicateEndpoint"},
	}
	var badCIDRs []netip.Prefix
	var stubs []*lab.Node // the bad nodes as WaitPeers sees them
	for i := range bad {
		b := &bad[i].node
		c4 := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", 31+i))
		c6 := netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", 31+i))
		b.PodCIDRs = []string{c4.String(), c6.String()}
		b.InternalIP = fmt.Sprintf("198.18.0.%d", 31+i)
		badCIDRs = append(badCIDRs, c4, c6)
		stubs = append(stubs, &lab.Node{Name: b.Name, PublicKey: b.Annotations[kube.AnnotationPublicKey], PodCIDR4: c4, PodCIDR6: c6})
		created := k8sCreateNode(t, ctx, k.admin, *b)
		// The seniority rule needs dupkey's Node to be younger than
		// node4's; creationTimestamp has whole seconds.
		if b.Name == "dupkey" {
			n4obj, err := k.admin.CoreV1().Nodes().Get(ctx, n4.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !n4obj.CreationTimestamp.Before(&created.CreationTimestamp) {
				t.Fatalf("test setup: %s created at %s, not after %s at %s", b.Name, created.CreationTimestamp, n4.Name, n4obj.CreationTimestamp)
			}
		}
	}
	t0 := time.Now()

	// Every agent keeps node4 (its Node is older than dupkey's) and
	// programs the endpoint claimant, and no agent programs the malformed
	// key or the newcomer.
	claimant := stubs[2]
	var wg sync.WaitGroup
	for _, n := range k.Nodes {
		wg.Go(func() {
			want := append(k8sOthers(k.Nodes, n), claimant)
			if err := n.WaitPeers(withTimeout(ctx, 90*time.Second), want...); err != nil {
				t.Errorf("%s: peers with the bad input: %v\n%s", n.Name, err, k.agent(n.Name).LogTail(20))
			}
		})
	}
	wg.Wait()
	t.Logf("measured: agents settled on the bad input after %s", time.Since(t0).Round(time.Millisecond))
	for _, n := range healthy {
		routes, err := k8sRoutesMentioning(ctx, n, badCIDRs[:4]...)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if strings.Contains(r, "dev "+n.Interface) {
				t.Errorf("%s routes a rejected node's pod CIDR into the tunnel: %s", n.Name, r)
			}
		}
		st, err := k8sAgentStatus(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Problems {
			t.Logf("problem seen by %s: %s %s: %s", n.Name, p.Node, p.Reason, p.Detail)
		}
		for _, b := range bad {
			if !slices.ContainsFunc(st.Problems, func(p k8sProblem) bool {
				return p.Node == b.node.Name && p.Reason == b.reason
			}) {
				t.Errorf("status of %s lacks problem %s on %s", n.Name, b.reason, b.node.Name)
			}
		}
		if slices.ContainsFunc(st.Problems, func(p k8sProblem) bool { return p.Node == n4.Name && p.Reason == "DuplicateKey" }) {
			t.Errorf("status of %s reports DuplicateKey on %s, which keeps its key", n.Name, n4.Name)
		}
	}

	// Warning Events on the offending Nodes.
	for _, b := range bad {
		var events []string
		err := lab.Poll(withTimeout(ctx, 60*time.Second), 500*time.Millisecond, func(ctx context.Context) (bool, error) {
			evs, err := k.warningEvents(ctx, b.node.Name)
			if err != nil {
				return false, err
			}
			events = events[:0]
			found := false
			for _, e := range evs {
				events = append(events, fmt.Sprintf("%s %q by %s", e.Reason, e.Message, e.Source.Host))
				found = found || e.Reason == b.reason
			}
			return found, nil
		})
		if err != nil {
			t.Errorf("no Warning Event %s on Node %s (events: %v): %v", b.reason, b.node.Name, events, err)
		} else {
			t.Logf("events on %s: %v", b.node.Name, events)
		}
	}

	// The mesh, node4 included, is unaffected.
	for _, p := range k8sPodPairs(k.Nodes) {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s with the bad input present: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	requireNoPlaintext(t, k.stopCapture(t))
}
