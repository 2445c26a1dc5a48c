package main

import (
	"bytes"
	"context"
	"flag"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// graphNow is the fixed "now" of the golden pictures.
var graphNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ago(d time.Duration) *time.Time {
	t := graphNow.Add(-d)
	return &t
}

// localStatus is an agent's /status on node-a: node-b answers, node-c has
// been silent for 7 minutes, node-d never answered, node-e has no key and
// is reached in plaintext (--allow-unencrypted), node-f publishes node-b's
// key and is left out, node-b and node-c share an endpoint.
func localStatus() metrics.Status {
	return metrics.Status{
		Node: "node-a", Interface: "wgmesh0", AgentRunning: true,
		Peers: []metrics.PeerStatus{
			{Node: "node-b", PublicKey: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb=", LastHandshake: ago(42 * time.Second)},
			{Node: "node-c", PublicKey: "ccccccccccccccccccccccccccccccccccccccccccc=", LastHandshake: ago(7 * time.Minute)},
			{Node: "node-d", PublicKey: "ddddddddddddddddddddddddddddddddddddddddddd="},
		},
		Unencrypted: []string{"node-e"},
		Problems: []metrics.ProblemStatus{
			{Node: "node-b", Reason: "DuplicateEndpoint", Detail: "198.18.0.12:51820 also node-c", Warning: true},
			{Node: "node-c", Reason: "DuplicateEndpoint", Detail: "198.18.0.12:51820 also node-b", Warning: true},
			{Node: "node-e", Reason: "NoKey"},
			{Node: "node-f", Reason: "DuplicateKey", Detail: "node-b keeps the key"},
		},
	}
}

// clusterReport is verify's report of a six-node cluster: one node without
// a key, one unmanaged (plaintext by choice), one sharing an endpoint.
func clusterReport() kube.VerifyReport {
	return kube.VerifyReport{
		Nodes:     6,
		NodeNames: []string{"edge-1", "node-1", "node-2", "node-3", "node-4", "win-1"},
		Problems:  []mesh.Problem{{Node: "node-4", Reason: mesh.ReasonNoKey}},
		Warnings: []mesh.Problem{
			{Node: "node-2", Reason: mesh.ReasonDuplicateEndpoint},
			{Node: "node-3", Reason: mesh.ReasonDuplicateEndpoint},
		},
		Unencrypted: []string{"win-1"},
	}
}

// TestGraphGolden renders the local and the cluster views and compares the
// DOT text with testdata/graph (go test -run TestGraphGolden -update
// rewrites them; `make graph-example` also redraws docs/mesh.svg).
func TestGraphGolden(t *testing.T) {
	noAgent := metrics.Status{Interface: "wgmesh0", Peers: []metrics.PeerStatus{
		{PublicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", LastHandshake: ago(10 * time.Second)},
	}}
	for name, g := range map[string]meshGraph{
		"local":    localGraph(localStatus()),
		"cluster":  clusterGraph(clusterReport(), "cluster, 6 nodes"),
		"no-agent": localGraph(noAgent),
	} {
		var buf bytes.Buffer
		if err := renderDOT(&buf, g, graphNow); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", "graph", name+".dot")
		if *update {
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if d := cmp.Diff(string(want), buf.String()); d != "" {
			t.Errorf("%s: DOT differs from %s (-want +got):\n%s", name, path, d)
		}
	}
}

// TestGraphStates pins the model behind the picture, so a golden update
// cannot silently recolour a node.
func TestGraphStates(t *testing.T) {
	state := func(g meshGraph) map[string]nodeState {
		m := map[string]nodeState{}
		for _, n := range g.Nodes {
			m[n.Name] = n.State
		}
		return m
	}
	if d := cmp.Diff(map[string]nodeState{
		"node-a": stateEncrypted, "node-b": stateEncrypted, "node-c": stateEncrypted, "node-d": stateEncrypted,
		"node-e": stateUnencrypted, "node-f": stateBlocked,
	}, state(localGraph(localStatus()))); d != "" {
		t.Errorf("local states (-want +got):\n%s", d)
	}
	cg := clusterGraph(clusterReport(), "")
	if d := cmp.Diff(map[string]nodeState{
		"edge-1": stateEncrypted, "node-1": stateEncrypted, "node-2": stateEncrypted, "node-3": stateEncrypted,
		"node-4": stateBlocked, "win-1": stateUnencrypted,
	}, state(cg)); d != "" {
		t.Errorf("cluster states (-want +got):\n%s", d)
	}
	kinds := map[edgeKind]int{}
	for _, e := range cg.Edges {
		kinds[e.Kind]++
		if e.A == "node-4" || e.B == "node-4" {
			t.Errorf("a left-out node has an edge: %+v", e)
		}
	}
	// 4 meshed nodes: 6 tunnels; win-1 in plaintext to each of the 4.
	if kinds[edgeExpected] != 6 || kinds[edgePlaintext] != 4 {
		t.Errorf("cluster edges %v, want 6 expected and 4 plaintext", kinds)
	}
}

// TestGraphSVG renders the golden local view with Graphviz (skipped without
// dot): the SVG names every node.
func TestGraphSVG(t *testing.T) {
	if _, err := exec.LookPath("dot"); err != nil {
		t.Skipf("Graphviz dot not installed: %v", err)
	}
	var dotText, svg bytes.Buffer
	if err := renderDOT(&dotText, localGraph(localStatus()), graphNow); err != nil {
		t.Fatal(err)
	}
	if err := renderSVG(context.Background(), &svg, dotText.Bytes()); err != nil {
		t.Fatal(err)
	}
	// dot escapes "-" as &#45; in text.
	out := html.UnescapeString(svg.String())
	if !strings.Contains(out, "<svg") {
		t.Fatalf("dot -Tsvg printed no SVG:\n%.300s", out)
	}
	for _, s := range []string{"node-a", "node-f", "left out: DuplicateKey", "no handshake", "plaintext", "7m0s ago"} {
		if !strings.Contains(out, s) {
			t.Errorf("SVG lacks %q", s)
		}
	}
	// The README's picture is this view (make graph-example).
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "mesh.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if ex := html.UnescapeString(string(b)); !strings.Contains(ex, "seen by node-a") || !strings.Contains(ex, "left out: DuplicateKey") {
		t.Error("docs/mesh.svg is not the local golden view: run make graph-example")
	}
	if err := renderSVG(context.Background(), &svg, []byte("graph {")); err == nil || !strings.Contains(err.Error(), "-Tsvg") {
		t.Errorf("broken DOT: err %v, want dot's complaint", err)
	}
}

// TestGraphCommand runs `wgmesh graph` against an agent's /status, and the
// command-line errors: a bad -o is a usage error, -o svg without dot says
// how to get it.
func TestGraphCommand(t *testing.T) {
	addr, _ := agentServer(t)
	r := wgmesh(t, nil, "graph", "--metrics-addr", addr)
	if r.code != exitOK {
		t.Fatalf("graph: code %d: %s", r.code, r.stderr)
	}
	for _, s := range []string{"graph wgmesh {", `"node-self" -- "node-b"`, "(this agent)"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("graph output lacks %q:\n%s", s, r.stdout)
		}
	}
	if r := wgmesh(t, nil, "graph", "-o", "png", "--metrics-addr", addr); r.code != exitUsage || !strings.Contains(r.stderr, `-o "png": want dot or svg`) {
		t.Errorf("graph -o png: code %d, stderr %q", r.code, r.stderr)
	}
	t.Setenv("PATH", t.TempDir())
	if r := wgmesh(t, nil, "graph", "-o", "svg", "--metrics-addr", addr); r.code != exitFailure || !strings.Contains(r.stderr, "needs Graphviz's dot") {
		t.Errorf("graph -o svg without dot: code %d, stderr %q", r.code, r.stderr)
	}
}
