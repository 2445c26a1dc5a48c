package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Scenario 7 of the coexistence issue: a duplicate never takes down an
// established node. Three nodes in peers-file mode; while pods of node1 and
// node2 ping each other, every peers file is rewritten so that node3's entry
// carries node2's public key (A; in a second test node3 gets node2's private
// key file as well, as from a cloned disk image) or node2's endpoint (B).
// Not one ping between node1 and node2 may be lost, and nothing may cross in
// plaintext.

// dupesPingCount pings at dupesPingInterval cover the rewrite of the peers
// files and the agents' reaction with seconds to spare.
const (
	dupesPingCount    = 200
	dupesPingInterval = 50 * time.Millisecond
)

// dupesProblem is one entry of `wgmesh status -o json` problems.
type dupesProblem struct {
	Node    string `json:"node"`
	Reason  string `json:"reason"`
	Detail  string `json:"detail"`
	Warning bool   `json:"warning"`
}

// dupesProblems reads a node's current problems from its agent.
func dupesProblems(ctx context.Context, n *lab.Node) ([]dupesProblem, error) {
	st, err := n.Status(ctx)
	if err != nil {
		return nil, err
	}
	var ps []dupesProblem
	for _, raw := range st.Problems {
		var p dupesProblem
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("node %s: status problem %s: %w", n.Name, raw, err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// dupesWaitProblem waits until n's agent reports reason on node about.
func dupesWaitProblem(ctx context.Context, n *lab.Node, about, reason string) ([]dupesProblem, error) {
	var ps []dupesProblem
	err := lab.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		var err error
		if ps, err = dupesProblems(ctx, n); err != nil {
			return false, err
		}
		if slices.ContainsFunc(ps, func(p dupesProblem) bool { return p.Node == about && p.Reason == reason }) {
			return true, nil
		}
		return false, fmt.Errorf("node %s does not report %s on %s yet: %+v", n.Name, reason, about, ps)
	})
	return ps, err
}

// dupesPings are the two ping streams between node1's and node2's pods,
// one per direction and family, running in the background.
type dupesPings struct {
	done    chan struct{}
	results [2]lab.PingResult
	errs    [2]error
	names   [2]string
}

func dupesStartPings(ctx context.Context, n1, n2 *lab.Node) *dupesPings {
	dp := &dupesPings{done: make(chan struct{})}
	type stream struct {
		from *lab.Pod
		dst  netip.Addr
	}
	streams := [2]stream{{n1.Pods[0], n2.Pods[0].Addr4}, {n2.Pods[0], n1.Pods[0].Addr6}}
	finished := make(chan struct{}, len(streams))
	for i, s := range streams {
		dp.names[i] = fmt.Sprintf("%s -> %s", s.from.Name, s.dst)
		go func() {
			dp.results[i], dp.errs[i] = s.from.Ping(ctx, s.dst, dupesPingCount, dupesPingInterval)
			finished <- struct{}{}
		}()
	}
	go func() {
		for range streams {
			<-finished
		}
		close(dp.done)
	}()
	return dp
}

// running reports whether the pings are still going.
func (dp *dupesPings) running() bool {
	select {
	case <-dp.done:
		return false
	default:
		return true
	}
}

// wait waits for both streams and fails the test for every lost ping.
func (dp *dupesPings) wait(t *testing.T, what string) {
	t.Helper()
	<-dp.done
	for i := range dp.results {
		if dp.errs[i] != nil {
			t.Errorf("%s: ping %s: %v", what, dp.names[i], dp.errs[i])
			continue
		}
		r := dp.results[i]
		t.Logf("measured: %s: ping %s: %d/%d answered, %d lost", what, dp.names[i], r.Received, r.Sent, r.Sent-r.Received)
		if r.Sent == 0 || r.Received != r.Sent {
			t.Errorf("%s: %d of %d pings %s lost: the established pair was disturbed", what, r.Sent-r.Received, r.Sent, dp.names[i])
		}
	}
}

// dupesSetup starts the three-node lab and makes sure node1 and node2 talk.
func dupesSetup(t *testing.T) (*labMesh, context.Context) {
	t.Helper()
	m := startCoexist(t, labMeshOptions{Options: lab.Options{Nodes: 3}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	n1, n2 := m.Nodes[0], m.Nodes[1]
	for _, p := range [][2]*lab.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[0], n1.Pods[0]}} {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Fatalf("before the duplicate: IPv%d %s -> %s: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	return m, ctx
}

// dupesRewrite starts the pings between node1 and node2, lets them run for a
// second, then rewrites every peers file with the lab's entries as mutate
// changes them. It returns the pings and the entries written.
func dupesRewrite(t *testing.T, m *labMesh, ctx context.Context, mutate func([]lab.PeerEntry)) (*dupesPings, []lab.PeerEntry) {
	t.Helper()
	pings := dupesStartPings(ctx, m.Nodes[0], m.Nodes[1])
	time.Sleep(time.Second)
	entries := m.Entries()
	mutate(entries)
	if err := m.WritePeersFiles(entries); err != nil {
		t.Fatal(err)
	}
	return pings, entries
}

// dupesCheckKeyProblem waits until observer reports newcomer's DuplicateKey
// and checks every problem it reports: the keeper is never reported, and the
// newcomer's DuplicateKey names the keeper.
func dupesCheckKeyProblem(t *testing.T, m *labMesh, ctx context.Context, observer, newcomer, keeper *lab.Node) ([]dupesProblem, error) {
	t.Helper()
	ps, err := dupesWaitProblem(withTimeout(ctx, 30*time.Second), observer, newcomer.Name, "DuplicateKey")
	for _, p := range ps {
		t.Logf("problem seen by %s: %s %s: %s", observer.Name, p.Node, p.Reason, p.Detail)
		if p.Node == keeper.Name {
			t.Errorf("%s reports the established %s, which keeps its key: %s: %s", observer.Name, keeper.Name, p.Reason, p.Detail)
		}
		if p.Node == newcomer.Name && p.Reason == "DuplicateKey" && !strings.Contains(p.Detail, fmt.Sprintf("%q", keeper.Name)) {
			t.Errorf("%s: %s's DuplicateKey does not name the keeper %s: %s", observer.Name, newcomer.Name, keeper.Name, p.Detail)
		}
	}
	return ps, err
}

// TestPrivilegedCoexistDuplicateKey is scenario 7A: node3's peers-file entry
// starts publishing node2's public key, as a compromised kubelet can write
// into its own Node. node2's entry comes first, so node2 keeps the key on
// every agent: node1 and node2 keep talking without a lost ping, node3 is
// left out (unreachable in strict mode, never plaintext) and reported as
// DuplicateKey naming node2, and node2 is not reported.
func TestPrivilegedCoexistDuplicateKey(t *testing.T) {
	labRequireRoot(t)
	m, ctx := dupesSetup(t)
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]

	pings, _ := dupesRewrite(t, m, ctx, func(e []lab.PeerEntry) { e[2].PublicKey = e[1].PublicKey })
	for _, n := range []*lab.Node{n1, n2} {
		if _, err := dupesCheckKeyProblem(t, m, ctx, n, n3, n2); err != nil {
			t.Errorf("the duplicate key was not reported: %v\n%s", err, m.agents[n.Name].LogTail(20))
		}
	}
	if !pings.running() {
		t.Errorf("the pings ended before the agents had seen the duplicate: they prove nothing; raise dupesPingCount")
	}
	// node1 settles on node2 alone: node3 is left out, not given node2's key.
	if err := n1.WaitPeers(withTimeout(ctx, 30*time.Second), n2); err != nil {
		t.Errorf("node1's peers with the duplicate key: %v", err)
	}
	pings.wait(t, "duplicate key")

	// The newcomer is out of the mesh, unreachable rather than plaintext.
	r, err := n1.Pods[0].Ping(ctx, n3.Pods[0].Addr4, 3, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: node1 -> node3 (the newcomer): %s", r)
	if r.Received != 0 {
		t.Errorf("node1 still reaches node3, which publishes node2's key: %s", r)
	}
	routes, err := n1.Routes(ctx, 51820)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r string) bool { return strings.HasPrefix(r, "unreachable "+n3.PodCIDR4.String()) }) {
		t.Errorf("strict mode: no unreachable route for the newcomer's %s on node1: %q", n3.PodCIDR4, routes)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedCoexistDuplicateKeyClonedNewcomer is scenario 7A with the
// private key copied too, as from a cloned disk image: node3 gets node2's key
// file and its entry node2's public key. node3's own agent finds itself the
// newcomer: it reports that on itself, naming node2, and programs no peer,
// so node3's pods, trying to reach node1, cannot make node1 roam node2's
// endpoint to node3 and take over node2's traffic.
func TestPrivilegedCoexistDuplicateKeyClonedNewcomer(t *testing.T) {
	labRequireRoot(t)
	m, ctx := dupesSetup(t)
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]

	pings, entries := dupesRewrite(t, m, ctx, func(e []lab.PeerEntry) { e[2].PublicKey = e[1].PublicKey })
	key, err := os.ReadFile(n2.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(n3.KeyFile), ".cloned.key")
	if err := os.WriteFile(tmp, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, n3.KeyFile); err != nil {
		t.Fatal(err)
	}
	// node3's agent takes the cloned key by itself and sees that node2,
	// the earlier entry, keeps it.
	_, err = dupesCheckKeyProblem(t, m, ctx, n3, n3, n2)
	if err != nil {
		t.Errorf("node3 does not report that its own key is taken: %v\n%s", err, m.agents[n3.Name].LogTail(20))
	}
	if err == nil && !pings.running() {
		t.Errorf("the pings ended before node3 had taken the cloned key: they prove nothing; raise dupesPingCount")
	}
	if err := n3.WaitPeers(withTimeout(ctx, 30*time.Second)); err != nil {
		t.Errorf("node3, the newcomer with a cloned key, keeps peers: %v", err)
	}
	// node3's pods try to reach node1 while node1 and node2 talk.
	r, err := n3.Pods[0].Ping(ctx, n1.Pods[0].Addr4, 20, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: node3 (cloned key) -> node1: %s", r)
	if r.Received != 0 {
		t.Errorf("node3, the newcomer with node2's cloned key, reaches node1: %s", r)
	}
	pings.wait(t, "cloned key")

	peers, err := n1.WGPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey == n2.PublicKey {
			t.Logf("measured: node1's peer for node2's key has endpoint %s (node2 %s, node3 %s)", p.Endpoint, entries[1].Endpoint, n3.Endpoint())
			if p.Endpoint != entries[1].Endpoint.String() {
				t.Errorf("node1 roamed node2's key to %s, not node2's %s: the clone took over", p.Endpoint, entries[1].Endpoint)
			}
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedCoexistDuplicateEndpoint is scenario 7B: node3's entry
// starts publishing node2's endpoint (two sites behind NAT with one private
// address, or a stale entry). WireGuard tells peers apart by key, so both
// stay programmed: node1 and node2 keep talking without a lost ping, both are
// reported with a DuplicateEndpoint warning, and node3 is reachable again as
// soon as its own packets let WireGuard roam its endpoint.
func TestPrivilegedCoexistDuplicateEndpoint(t *testing.T) {
	labRequireRoot(t)
	m, ctx := dupesSetup(t)
	n1, n2, n3 := m.Nodes[0], m.Nodes[1], m.Nodes[2]

	pings, entries := dupesRewrite(t, m, ctx, func(e []lab.PeerEntry) { e[2].Endpoint = e[1].Endpoint })
	for _, n := range []*lab.Node{n1, n2} {
		ps, err := dupesWaitProblem(withTimeout(ctx, 30*time.Second), n, n3.Name, "DuplicateEndpoint")
		if err != nil {
			t.Errorf("the shared endpoint was not reported: %v\n%s", err, m.agents[n.Name].LogTail(20))
			continue
		}
		for _, p := range ps {
			t.Logf("problem seen by %s: %s %s (warning %v): %s", n.Name, p.Node, p.Reason, p.Warning, p.Detail)
			if p.Reason != "DuplicateEndpoint" || !p.Warning {
				t.Errorf("%s: a shared endpoint must only be a warning, got %s on %s (warning %v): %s", n.Name, p.Reason, p.Node, p.Warning, p.Detail)
			}
		}
	}
	if !pings.running() {
		t.Errorf("the pings ended before the agents had seen the shared endpoint: they prove nothing; raise dupesPingCount")
	}
	// Both stay peers of node1; node3's with node2's endpoint as published.
	if err := n1.WaitPeers(withTimeout(ctx, 30*time.Second), n2, n3); err != nil {
		t.Errorf("node1's peers with the shared endpoint: %v", err)
	}
	pings.wait(t, "duplicate endpoint")

	// node3's first packet to node1 roams its endpoint to where it really
	// is; from then on node1 reaches it too.
	for _, p := range [][2]*lab.Pod{{n3.Pods[0], n1.Pods[0]}, {n1.Pods[0], n3.Pods[0]}} {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr4); err != nil {
			t.Errorf("shared endpoint: %s -> %s after roaming: %v", p[0].Name, p[1].Name, err)
		}
	}
	peers, err := n1.WGPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey == n3.PublicKey {
			t.Logf("measured: node1's peer node3 roamed from the published %s to %s", entries[2].Endpoint, p.Endpoint)
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}
