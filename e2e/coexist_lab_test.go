package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// The coexistence lab: the TestPrivilegedCoexist… scenarios put wgmesh on a
// crowded node — next to another component's nft rules and marks, a TPROXY
// service, a second wgmesh instance, a NodePort — and check that the
// zero-plaintext promise holds and the neighbour keeps working. They share
// this file's helpers instead of each building its own lab.

// coexistOptions are the defaults of the coexistence scenarios: two nodes
// (the smallest mesh in which one node's pods talk to another's), one pod
// each, everything else as a new user would run it.
func coexistOptions(o labMeshOptions) labMeshOptions {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Prefix == "" {
		o.Prefix = "wgmcx"
	}
	return o
}

// startCoexist builds a coexistence lab with agents running (see
// startLabMesh; Neighbour installs the other software first).
func startCoexist(t *testing.T, o labMeshOptions) *labMesh {
	t.Helper()
	coexistRemoveStaleOnce(t)
	return startLabMesh(t, coexistOptions(o))
}

// coexistRemoveStaleOnce removes labs with the coexistence prefix left by
// killed runs (newTestLab only sweeps the default prefix).
func coexistRemoveStaleOnce(t *testing.T) {
	t.Helper()
	coexistStale.Do(func() {
		if removed, err := lab.RemoveStale("wgmcx"); err != nil || len(removed) > 0 {
			t.Logf("removed stale coexistence lab namespaces %v (%v)", removed, err)
		}
	})
}

var coexistStale sync.Once

// nsExec runs a command inside a namespace and returns its combined output.
func nsExec(ctx context.Context, ns string, cmd ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, cmd...)...).CombinedOutput()
	return string(out), err
}

// sh runs a shell script inside a namespace and returns its combined
// output; the error carries the script's output, which says why.
func sh(ctx context.Context, ns, script string) (string, error) {
	out, err := nsExec(ctx, ns, "sh", "-ec", script)
	if err != nil {
		return out, fmt.Errorf("in %s: %s: %w\n%s", ns, script, err, out)
	}
	return out, nil
}

// mustSh is sh that fails the test.
func mustSh(t *testing.T, ctx context.Context, ns, script string) string {
	t.Helper()
	out, err := sh(ctx, ns, script)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// nodeStatusJSON is `wgmesh status -o json` on a node, decoded loosely so
// scenarios can look at the fields they care about.
func nodeStatusJSON(t *testing.T, ctx context.Context, n *lab.Node) map[string]any {
	t.Helper()
	out, err := n.Wgmesh(ctx, "status", "-o", "json", "--interface", n.Interface)
	if err != nil {
		t.Fatalf("wgmesh status on %s: %v\n%s", n.Name, err, out)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &doc); err != nil {
		t.Fatalf("wgmesh status -o json on %s: %v\n%s", n.Name, err, out)
	}
	return doc
}

// plaintextSoFar counts what the running capture has seen so far.
func (m *labMesh) plaintextSoFar(t *testing.T) lab.Counts {
	t.Helper()
	c, err := m.capture.Snapshot()
	if err != nil {
		t.Fatalf("capture snapshot: %v", err)
	}
	return c
}

// pingLoss sends count pings at interval from a pod and returns how many
// were lost.
func pingLoss(ctx context.Context, from *lab.Pod, dst netip.Addr, count int, interval time.Duration) (lost int, err error) {
	r, err := from.Ping(ctx, dst, count, interval)
	if err != nil {
		return 0, err
	}
	return r.Sent - r.Received, nil
}
