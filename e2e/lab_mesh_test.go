package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// TestPrivilegedLabFullMesh is scenario 1 in peers-file mode: three agents,
// every pod reaches every other node's pod over IPv4 and IPv6, 16 MiB go each
// way between every pair intact, and nothing crosses the wire in plaintext.
func TestPrivilegedLabFullMesh(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	start := time.Now()
	for _, p := range labPairs(m.Lab) {
		for _, fam := range families {
			pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
			err := waitPing(pctx, p[0], p[1].Addr(fam))
			pcancel()
			if err != nil {
				t.Errorf("IPv%d %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	t.Logf("measured: every pod pair answered pings after %s", time.Since(start).Round(time.Millisecond))
	for _, n := range m.Nodes {
		hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
		if err := n.WaitHandshakes(hctx, start.Add(-time.Minute)); err != nil {
			t.Errorf("handshakes on %s: %v", n.Name, err)
		}
		hcancel()
	}
	var total int64
	var totalDur time.Duration
	for _, p := range labPairs(m.Lab) {
		for _, fam := range families {
			tctx, tcancel := context.WithTimeout(ctx, 2*time.Minute)
			res, err := lab.Transfer(tctx, p[0], p[1], p[1].Addr(fam), 16<<20)
			tcancel()
			if err != nil {
				t.Errorf("IPv%d transfer %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
				continue
			}
			total += res.Bytes
			totalDur += res.Duration
			t.Logf("measured: IPv%d %s -> %s: %s", fam, p[0].Name, p[1].Name, res)
		}
	}
	if totalDur > 0 {
		t.Logf("measured: %d MiB moved, average %.1f MiB/s per transfer", total>>20, float64(total)/(1<<20)/totalDur.Seconds())
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedLabKeyRotation is scenario 4 in peers-file mode: node1
// rotates its key while traffic flows to it; once the others learn the new
// public key from their peers files, traffic resumes. The stream must arrive
// intact and nothing may cross the wire in plaintext meanwhile.
func TestPrivilegedLabKeyRotation(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	stream, probe := startTrafficToNode1(ctx, t, m, false)
	defer probe.Stop()

	oldKey := n1.PublicKey
	rotated := time.Now()
	newKey, err := n1.RotateKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newKey == oldKey {
		t.Fatalf("rotate-key kept the public key %s", oldKey)
	}
	// The running agent picks the new key up by itself (DESIGN.md); it is
	// in force when the interface shows the new public key.
	err = lab.Poll(withTimeout(ctx, 20*time.Second), 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		out, err := n1.Exec(ctx, "wg", "show", n1.Interface, "public-key")
		return strings.TrimSpace(out) == newKey, err
	})
	if err != nil {
		t.Errorf("agent on %s did not take the rotated key within 20s without a restart: %v", n1.Name, err)
		_ = m.agents[n1.Name].Signal(syscall.SIGHUP)
	}
	t.Logf("measured: agent applied the rotated key after %s", time.Since(rotated).Round(time.Millisecond))
	// Tell everyone the new key, as an operator's config management would.
	if err := m.WritePeersFiles(m.Entries()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*lab.Node{n2, n3} {
		if err := n.WaitPeers(withTimeout(ctx, 30*time.Second), otherNodes(m.Lab, n)...); err != nil {
			t.Errorf("%s did not learn node1's new key: %v", n.Name, err)
		}
	}
	// Traffic resumes: the stream makes progress again and the probe answers.
	if err := waitStreamFlowing(withTimeout(ctx, 60*time.Second), stream); err != nil {
		t.Error(err)
	}
	if err := waitPing(withTimeout(ctx, 30*time.Second), n3.Pods[0], n1.Pods[0].Addr6); err != nil {
		t.Error(err)
	}
	res, pr := stopTraffic(ctx, t, stream, probe)
	t.Logf("measured: key rotation: stream %s; probe %s", res, pr)
	t.Logf("measured: key rotation interruption: stream %s, probe %s",
		res.LongestGap.Round(time.Millisecond), pr.LongestGap.Round(time.Millisecond))
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedLabAgentKill9 is scenario 5: the agent on node1 is killed with
// SIGKILL during a continuous transfer and started again. While it is gone the
// persistent interface keeps the routes pointing into the tunnel, so packets
// are dropped, never sent in plaintext; after the restart the same TCP
// connection carries on and the data arrive intact.
func TestPrivilegedLabAgentKill9(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	stream, probe := startTrafficToNode1(ctx, t, m, true)
	defer probe.Stop()

	agent := m.agents[n1.Name]
	killed := time.Now()
	if err := agent.Kill9(); err != nil {
		t.Fatal(err)
	}
	// While the agent is dead, pods keep trying; the capture will show
	// whether anything leaked. Give it a few seconds of pressure.
	time.Sleep(3 * time.Second)
	// The interface outlives its agent, so the routes into it stay and
	// packets for the other nodes are dropped rather than routed in
	// plaintext through the main table.
	routes, err := n1.Routes(ctx, 51820)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{n2.PodCIDR4, n2.PodCIDR6, n3.PodCIDR4, n3.PodCIDR6} {
		if !hasRouteFor(routes, p) {
			t.Errorf("with the agent dead, table 51820 on %s lost its route for %s: %q", n1.Name, p, routes)
		}
	}
	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitPeers(withTimeout(ctx, 30*time.Second), n2, n3); err != nil {
		t.Errorf("restarted agent did not configure its peers: %v", err)
	}
	if err := waitStreamFlowing(withTimeout(ctx, 60*time.Second), stream); err != nil {
		t.Error(err)
	}
	resumed := time.Since(killed)
	res, pr := stopTraffic(ctx, t, stream, probe)
	t.Logf("measured: kill -9 + restart (3 s dead): stream %s; probe %s; flowing again %s after the kill",
		res, pr, resumed.Round(time.Millisecond))
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedLabNoAgentStrict is scenario 7: node3 runs no agent and has no
// key in the peers file. In strict mode (the default) its pods are
// unreachable from the others and nothing leaves in plaintext; with
// --allow-unencrypted the traffic flows, in plaintext, and the capture says so.
func TestPrivilegedLabNoAgentStrict(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Without: []string{"node3"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	// The managed pair works, so the silence towards node3 means something.
	if err := waitPing(withTimeout(ctx, 30*time.Second), n1.Pods[0], n2.Pods[0].Addr4); err != nil {
		t.Fatal(err)
	}
	for _, from := range []*lab.Pod{n1.Pods[0], n2.Pods[0]} {
		for _, fam := range families {
			r, err := from.Ping(ctx, n3.Pods[0].Addr(fam), 5, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("measured: strict: %s -> %s (no agent): %s", from.Name, n3.Pods[0].Addr(fam), r)
			if r.Received != 0 {
				t.Errorf("strict mode: %s reached agent-less %s: %s", from.Name, n3.Pods[0].Addr(fam), r)
			}
		}
	}
	if _, err := lab.Transfer(withTimeout(ctx, 5*time.Second), n1.Pods[0], n3.Pods[0], n3.Pods[0].Addr4, 1<<20); err == nil {
		t.Errorf("strict mode: TCP from %s to agent-less node3 succeeded", n1.Name)
	}
	routes, err := n1.Routes(ctx, 51820)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r string) bool { return strings.HasPrefix(r, "unreachable "+n3.PodCIDR4.String()) }) {
		t.Errorf("strict mode: no unreachable route for %s on %s: %q", n3.PodCIDR4, n1.Name, routes)
	}
	strict := m.stopCapture(t)
	t.Logf("measured: strict capture %s", strict.Counts)
	if strict.Plaintext != 0 {
		t.Errorf("strict mode: %d plaintext pod packets, e.g. %s", strict.Plaintext, strings.Join(strict.PlaintextSamples, "; "))
	}

	// Same cluster, agents restarted with --allow-unencrypted.
	capt, err := m.StartCaptureFile(ctx, m.Dir()+"/capture-unencrypted.pcap")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*lab.Node{n1, n2} {
		if err := m.agents[n.Name].Stop(withTimeout(ctx, 20*time.Second)); err != nil {
			t.Errorf("stop agent on %s: %v", n.Name, err)
		}
		a, err := m.StartAgent(n, "--allow-unencrypted")
		if err != nil {
			t.Fatal(err)
		}
		m.agents[n.Name] = a
	}
	for _, from := range []*lab.Pod{n1.Pods[0], n2.Pods[0]} {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), from, n3.Pods[0].Addr(fam)); err != nil {
				t.Errorf("--allow-unencrypted: %s cannot reach agent-less node3: %v", from.Name, err)
			}
		}
	}
	if err := waitPing(withTimeout(ctx, 30*time.Second), n1.Pods[0], n2.Pods[0].Addr6); err != nil {
		t.Errorf("--allow-unencrypted: managed pair broke: %v", err)
	}
	// The agents say loudly that node3's traffic is plaintext.
	for _, n := range []*lab.Node{n1, n2} {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(st.Unencrypted, n3.Name) || st.Strict {
			t.Errorf("--allow-unencrypted: %s status: unencrypted nodes %v, strict %v; want node3 listed, strict off", n.Name, st.Unencrypted, st.Strict)
		}
	}
	if _, err := capt.Stop(); err != nil {
		t.Fatal(err)
	}
	// Plaintext to and from node3 is what --allow-unencrypted means; any
	// other plaintext (node1 <-> node2) is a leak.
	cl := lab.DefaultClassifier()
	cl.Exempt = []netip.Prefix{n3.PodCIDR4, n3.PodCIDR6}
	r, err := capt.Recount(cl)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: --allow-unencrypted capture %s: %d plaintext packets to/from agent-less node3 (expected and reported)", r, r.Exempted)
	if r.Exempted == 0 {
		t.Errorf("--allow-unencrypted: traffic to node3 flowed but the capture saw no plaintext for it")
	}
	if r.Plaintext != 0 {
		t.Errorf("--allow-unencrypted: %d plaintext packets between managed nodes, e.g. %s", r.Plaintext, strings.Join(r.PlaintextSamples, "; "))
	}
}

// TestPrivilegedLabNodeRemoved is scenario 3 in peers-file mode: node3 is
// deleted from the peers file; the others drop its peer and its routes, and
// the remaining pair keeps its session undisturbed.
func TestPrivilegedLabNodeRemoved(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	if err := waitPing(ctx, n1.Pods[0], n2.Pods[0].Addr4); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*lab.Node{n1, n2} {
		routes, err := n.Routes(ctx, 51820)
		if err != nil {
			t.Fatal(err)
		}
		if !hasRouteFor(routes, n3.PodCIDR4) || !hasRouteFor(routes, n3.PodCIDR6) {
			t.Fatalf("before removal %s has no routes for node3: %q", n.Name, routes)
		}
	}
	probe, err := lab.StartProbe(n1.Pods[0], n2.Pods[0], n2.Pods[0].Addr4, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Stop()
	time.Sleep(500 * time.Millisecond)
	// node3 leaves: its own agent stops, the others' files lose it.
	if err := m.agents[n3.Name].Stop(withTimeout(ctx, 20*time.Second)); err != nil {
		t.Errorf("stop agent on node3: %v", err)
	}
	removed := time.Now()
	entries := m.Entries()[:2]
	for _, n := range []*lab.Node{n1, n2} {
		if err := n.WritePeersFile(entries); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*lab.Node{n1, n2} {
		if err := n.WaitPeers(withTimeout(ctx, 30*time.Second), otherNodes(m.Lab, n, n3)...); err != nil {
			t.Errorf("%s kept node3's peer: %v", n.Name, err)
		}
		err := lab.Poll(withTimeout(ctx, 30*time.Second), 200*time.Millisecond, func(ctx context.Context) (bool, error) {
			routes, err := n.Routes(ctx, 51820)
			if err != nil {
				return false, err
			}
			if hasRouteFor(routes, n3.PodCIDR4) || hasRouteFor(routes, n3.PodCIDR6) {
				return false, fmt.Errorf("%s table 51820 still routes node3: %q", n.Name, routes)
			}
			return true, nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("measured: node3's peer and routes gone from both nodes %s after the file change", time.Since(removed).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	pr := probe.Stop()
	t.Logf("measured: node1 -> node2 probe across the removal: %s", pr)
	if pr.Received == 0 {
		t.Errorf("node1 -> node2 stopped working after node3 left: %s", pr)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

func hasRouteFor(routes []string, p interface{ String() string }) bool {
	for _, r := range routes {
		f := strings.Fields(r)
		for i, w := range f {
			// "10.244.3.0/24 dev ..." or "unreachable 10.244.3.0/24 ..."
			if w == p.String() && i <= 1 {
				return true
			}
		}
	}
	return false
}

// otherNodes lists the lab's nodes except the given ones.
func otherNodes(l *lab.Lab, except ...*lab.Node) []*lab.Node {
	var out []*lab.Node
	for _, n := range l.Nodes {
		if !slices.Contains(except, n) {
			out = append(out, n)
		}
	}
	return out
}

// waitStreamFlowing waits until the stream has received new data in the last
// half second, twice in a row.
func waitStreamFlowing(ctx context.Context, s *lab.Stream) error {
	before, _ := s.Progress()
	return lab.Poll(ctx, 250*time.Millisecond, func(context.Context) (bool, error) {
		b, idle := s.Progress()
		if b > before && idle < 500*time.Millisecond {
			return true, nil
		}
		return false, fmt.Errorf("stream stalled: %d bytes received, idle %s", b, idle.Round(time.Millisecond))
	})
}

// withTimeout derives a context that ends after d. Its timer releases it at
// the latest after d, and every test cancels the parent at its end, so the
// cancel function is not needed by the callers.
func withTimeout(ctx context.Context, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(ctx, d)
	context.AfterFunc(c, cancel)
	return c
}

// TestPrivilegedLabIPv6Underlay runs the mesh over an IPv6 underlay: the
// endpoints are IPv6, both pod families still flow, the interface MTU
// leaves room for the larger IPv6 header, and nothing leaks.
func TestPrivilegedLabIPv6Underlay(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Options: lab.Options{IPv6Underlay: true}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range labPairs(m.Lab) {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d over IPv6 underlay %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	n1 := m.Nodes[0]
	peers, err := n1.WGPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if !strings.HasPrefix(p.Endpoint, "[2001:2::") {
			t.Errorf("%s: peer %s endpoint %q is not on the IPv6 underlay", n1.Name, p.PublicKey, p.Endpoint)
		}
	}
	st, err := n1.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Auto MTU: 1500 - 80 for WireGuard over IPv6 (DESIGN.md).
	if st.LinkMTU != 1420 {
		t.Errorf("%s: interface MTU %d over an IPv6 underlay, want 1420", n1.Name, st.LinkMTU)
	}
	res, err := lab.Transfer(withTimeout(ctx, 2*time.Minute), n1.Pods[0], m.Nodes[1].Pods[0], m.Nodes[1].Pods[0].Addr4, 16<<20)
	if err != nil {
		t.Error(err)
	}
	t.Logf("measured: IPv6 underlay: MTU %d, pod MTU %d, transfer %s", st.LinkMTU, st.PodMTU, res)
	requireNoPlaintext(t, m.stopCapture(t))
}

// startTrafficToNode1 waits until node2's and node3's pods reach node1's pod,
// then starts a 2 MiB/s stream from node2's pod and a 20 ms probe from
// node3's pod towards it, one over each family (the stream over IPv6 when
// streamV6), and gives them a second to settle: the load under which the
// disruption scenarios measure their interruption.
func startTrafficToNode1(ctx context.Context, t *testing.T, m *labMesh, streamV6 bool) (*lab.Stream, *lab.Probe) {
	t.Helper()
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]
	streamAddr, probeAddr := n1.Pods[0].Addr4, n1.Pods[0].Addr6
	if streamV6 {
		streamAddr, probeAddr = probeAddr, streamAddr
	}
	for _, p := range []*lab.Pod{n2.Pods[0], n3.Pods[0]} {
		if err := waitPing(ctx, p, streamAddr); err != nil {
			t.Fatal(err)
		}
	}
	stream, err := lab.StartStream(ctx, n2.Pods[0], n1.Pods[0], streamAddr, lab.StreamOptions{Rate: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	probe, err := lab.StartProbe(n3.Pods[0], n1.Pods[0], probeAddr, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	return stream, probe
}

// stopTraffic ends what startTrafficToNode1 started and returns its results.
func stopTraffic(ctx context.Context, t *testing.T, stream *lab.Stream, probe *lab.Probe) (lab.TransferResult, lab.ProbeResult) {
	t.Helper()
	stream.Stop()
	res, err := stream.Wait(withTimeout(ctx, 60*time.Second))
	if err != nil {
		t.Error(err)
	}
	return res, probe.Stop()
}
