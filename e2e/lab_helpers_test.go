package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// labRequireRoot skips privileged tests for non-root users.
func labRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged: needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "tcpdump", "ping", "wg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("privileged: %s not installed", tool)
		}
	}
}

// labWgmeshBinary finds the agent binary: $WGMESH_BIN (set by `make e2e`),
// else ../bin/wgmesh from `make build`. Tests that need it skip without it.
func labWgmeshBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv("WGMESH_BIN")
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("..", "bin", "wgmesh"))
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("wgmesh binary %s not found: run `make build` or set WGMESH_BIN", p)
	}
	return p
}

// newTestLab builds a lab whose files live in the test's temp directory and
// which is removed when the test ends. It logs where the lab is so a failing
// run can be inspected.
func newTestLab(t *testing.T, o lab.Options) *lab.Lab {
	t.Helper()
	removeStaleOnce.Do(func() {
		// Labs of test binaries that were killed (timeout, Ctrl-C) before
		// their cleanups ran; labs of running processes are left alone.
		if removed, err := lab.RemoveStale(lab.DefaultPrefix); err != nil || len(removed) > 0 {
			t.Logf("removed stale lab namespaces %v (%v)", removed, err)
		}
	})
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	o.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, o)
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, a := range l.Agents() {
				t.Logf("agent %s log tail:\n%s", a.Node.Name, a.LogTail(40))
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		for _, ns := range l.Namespaces() {
			if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err == nil {
				t.Errorf("namespace %s still exists after Close", ns)
			}
		}
	})
	return l
}

// labMesh is a lab with keys, peers files, a running capture and one agent
// per node (except those listed in without).
type labMesh struct {
	*lab.Lab
	capture *lab.Capture
	agents  map[string]*lab.Agent
}

type labMeshOptions struct {
	lab.Options
	// Without names nodes that get no agent (and no key in the peers file).
	Without []string
	// AgentArgs are extra agent flags.
	AgentArgs []string
	// Neighbour, if set, runs after the lab is built and the capture
	// started, before keys are made and agents start: it installs the
	// other software a scenario puts on the nodes (nft rules, a TPROXY
	// service, a second VPN).
	Neighbour func(ctx context.Context, l *lab.Lab) error
}

func startLabMesh(t *testing.T, o labMeshOptions) *labMesh {
	t.Helper()
	o.Wgmesh = labWgmeshBinary(t)
	l := newTestLab(t, o.Options)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := &labMesh{Lab: l, agents: map[string]*lab.Agent{}}
	var err error
	if m.capture, err = l.StartCapture(ctx); err != nil {
		t.Fatal(err)
	}
	if o.Neighbour != nil {
		if err := o.Neighbour(ctx, l); err != nil {
			t.Fatalf("install the neighbouring software: %v", err)
		}
	}
	skip := map[string]bool{}
	for _, name := range o.Without {
		skip[name] = true
	}
	var entries []lab.PeerEntry
	for _, n := range l.Nodes {
		if !skip[n.Name] {
			if _, err := n.Keygen(ctx); err != nil {
				t.Fatal(err)
			}
		}
		entries = append(entries, n.Entry())
	}
	if err := l.WritePeersFiles(entries); err != nil {
		t.Fatal(err)
	}
	var managed []*lab.Node
	for _, n := range l.Nodes {
		if skip[n.Name] {
			continue
		}
		a, err := l.StartAgent(n, o.AgentArgs...)
		if err != nil {
			t.Fatal(err)
		}
		m.agents[n.Name] = a
		managed = append(managed, n)
	}
	for _, n := range managed {
		var want []*lab.Node
		for _, p := range managed {
			if p != n {
				want = append(want, p)
			}
		}
		if err := n.WaitPeers(ctx, want...); err != nil {
			t.Fatalf("agent on %s did not configure its peers: %v\n%s", n.Name, err, m.agents[n.Name].LogTail(30))
		}
	}
	// Ready means the last reconcile applied cleanly. Not fatal: the data
	// path checks of the scenario still tell what works.
	for _, n := range managed {
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		if err := n.WaitReady(rctx); err != nil {
			t.Errorf("agent on %s is not ready: %v", n.Name, err)
		}
		rcancel()
	}
	return m
}

// stopCapture stops the capture and fails the test if it missed packets.
func (m *labMesh) stopCapture(t *testing.T) lab.CaptureResult {
	t.Helper()
	r, err := m.capture.Stop()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	if r.KernelDropped > 0 {
		t.Errorf("capture dropped %d packets: a zero plaintext count would not be trustworthy", r.KernelDropped)
	}
	return r
}

// requireNoPlaintext is the central assertion of every scenario.
func requireNoPlaintext(t *testing.T, r lab.CaptureResult) {
	t.Helper()
	t.Logf("measured: capture %s", r.Counts)
	if r.Plaintext != 0 {
		t.Errorf("%d plaintext pod packets crossed the wire, e.g. %s", r.Plaintext, strings.Join(r.PlaintextSamples, "; "))
	}
	if r.WireGuard == 0 {
		t.Errorf("no WireGuard packets captured: the traffic did not go through the tunnel (or the capture saw nothing)")
	}
}

// labPairs lists every ordered pair of distinct nodes' first pods.
func labPairs(l *lab.Lab) [][2]*lab.Pod {
	var pairs [][2]*lab.Pod
	for _, a := range l.Nodes {
		for _, b := range l.Nodes {
			if a != b {
				pairs = append(pairs, [2]*lab.Pod{a.Pods[0], b.Pods[0]})
			}
		}
	}
	return pairs
}

// waitPing pings until every reply arrives (a fresh tunnel may lose the first
// packets while the handshake completes) or ctx ends.
func waitPing(ctx context.Context, from *lab.Pod, dst netip.Addr) error {
	return lab.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		r, err := from.Ping(ctx, dst, 3, 100*time.Millisecond)
		if err != nil {
			return false, err
		}
		if r.Received != r.Sent {
			return false, fmt.Errorf("ping %s -> %s: %s", from.Name, dst, r)
		}
		return true, nil
	})
}

var families = []int{4, 6}

var removeStaleOnce sync.Once
