package file

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

// wait bounds every wait for the Source; generous because the test machine
// may be busy, and never reached when the code works.
const wait = 10 * time.Second

// logBuf is a goroutine-safe log sink for asserting on log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) count(s string) int { return strings.Count(l.String(), s) }

// warnings counts the warning lines that contain s.
func (l *logBuf) warnings(s string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, s) {
			n++
		}
	}
	return n
}

func nodeYAML(names ...string) string {
	var b strings.Builder
	b.WriteString("nodes:\n")
	for i, n := range names {
		b.WriteString("  - name: " + n + "\n")
		b.WriteString("    endpoint: \"198.18.0." + string(rune('1'+i)) + ":51820\"\n")
	}
	return b.String()
}

// writeAtomic replaces path the way editors and config tools do: write a
// temporary file, then rename it over the old one.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

type harness struct {
	src  *Source
	logs *logBuf
	done chan error
}

// start runs a Source on path until the test ends. Polling is off unless
// poll > 0, so the tests prove that notifications alone are enough.
func start(t *testing.T, path string, poll time.Duration) *harness {
	t.Helper()
	if poll == 0 {
		poll = -1
	}
	logs := &logBuf{}
	src, err := New(Options{
		Path: path, NodeName: "host-a", Poll: poll, Debounce: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{src: src, logs: logs, done: make(chan error, 1)}
	go func() { h.done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(wait):
			t.Error("Run did not return after cancel")
		}
	})
	return h
}

// changed waits for a Changes signal.
func (h *harness) changed(t *testing.T) {
	t.Helper()
	select {
	case <-h.src.Changes():
	case <-time.After(wait):
		t.Fatalf("no Changes signal; log:\n%s", h.logs)
	}
}

// names returns the names of the nodes in force.
func (h *harness) names() string {
	var out []string
	for _, n := range h.src.Nodes() {
		out = append(out, n.Name)
	}
	return strings.Join(out, ",")
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSourceLoadsAndFollowsRenameReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, nodeYAML("host-a", "host-b"))
	h := start(t, path, 0)
	h.changed(t)
	if !h.src.Synced() || h.names() != "host-a,host-b" {
		t.Fatalf("synced=%v nodes=%s", h.src.Synced(), h.names())
	}
	writeAtomic(t, path, nodeYAML("host-a", "host-b", "host-c"))
	h.changed(t)
	if got := h.names(); got != "host-a,host-b,host-c" {
		t.Errorf("after rename-replace: nodes %s", got)
	}
	// An in-place rewrite (truncate and write) is noticed as well.
	if err := os.WriteFile(path, []byte(nodeYAML("host-a")), 0o644); err != nil {
		t.Fatal(err)
	}
	h.changed(t)
	eventually(t, "in-place rewrite", func() bool { return h.names() == "host-a" })
}

func TestSourceInvalidFileKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, nodeYAML("host-a", "host-b"))
	h := start(t, path, 0)
	h.changed(t)

	writeAtomic(t, path, "nodes:\n  - name: host-a\n  - name: host-c\n    podCIDRs: [\"10.244.3.1/24\"]\n")
	eventually(t, "the invalid file to be noticed", func() bool { return h.src.Err() != nil })
	if got := h.names(); got != "host-a,host-b" {
		t.Errorf("nodes after invalid file = %s, want the last good host-a,host-b", got)
	}
	if !h.src.Synced() {
		t.Error("Synced went false after an invalid file")
	}
	select {
	case <-h.src.Changes():
		t.Error("Changes signalled for an invalid file")
	default:
	}
	logs := h.logs.String()
	if !strings.Contains(logs, path+":4: nodes[1].podCIDRs[0]: \\\"10.244.3.1/24\\\" has host bits set") ||
		!strings.Contains(logs, "stays in force") {
		t.Errorf("log does not name path, line, field and reason, or the configuration in force:\n%s", logs)
	}

	writeAtomic(t, path, nodeYAML("host-a", "host-c"))
	h.changed(t)
	if got := h.names(); got != "host-a,host-c" || h.src.Err() != nil {
		t.Errorf("after fix: nodes %s, err %v", got, h.src.Err())
	}
}

func TestSourceClusterCIDRsFollowTheFileInForce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, "clusterCIDRs: [\"10.244.0.0/16\"]\n"+nodeYAML("host-a"))
	h := start(t, path, 0)
	h.changed(t)
	if got := fmt.Sprint(h.src.ClusterCIDRs()); got != "[10.244.0.0/16]" {
		t.Fatalf("ClusterCIDRs = %s", got)
	}
	// An invalid file keeps the ranges in force with the nodes.
	writeAtomic(t, path, "clusterCIDRs: [\"10.244.0.1/16\"]\n"+nodeYAML("host-a"))
	eventually(t, "the invalid file to be noticed", func() bool { return h.src.Err() != nil })
	if got := fmt.Sprint(h.src.ClusterCIDRs()); got != "[10.244.0.0/16]" {
		t.Errorf("ClusterCIDRs after an invalid file = %s, want the last good", got)
	}
	writeAtomic(t, path, nodeYAML("host-a"))
	h.changed(t)
	if got := h.src.ClusterCIDRs(); got != nil {
		t.Errorf("ClusterCIDRs after the field was removed = %v", got)
	}
}

func TestSourceInvalidAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, "nodes: [\n")
	h := start(t, path, 0)
	eventually(t, "the first read", func() bool { return h.src.Err() != nil })
	if h.src.Synced() || len(h.src.Nodes()) != 0 {
		t.Fatalf("synced=%v nodes=%s with an invalid file", h.src.Synced(), h.names())
	}
	if !strings.Contains(h.logs.String(), "no configuration is in force yet") {
		t.Errorf("log does not say nothing is in force:\n%s", h.logs)
	}
	err := h.src.Publish(context.Background(), agent.Self{Name: "host-a"})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Publish before a valid file = %v, want an error naming the file", err)
	}
	writeAtomic(t, path, nodeYAML("host-a"))
	h.changed(t)
	if !h.src.Synced() {
		t.Error("not synced after the file was fixed")
	}
}

func TestSourceFileAppearsLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	h := start(t, path, 0)
	eventually(t, "the first read", func() bool { return h.src.Err() != nil })
	if !os.IsNotExist(h.src.Err()) {
		t.Errorf("Err = %v, want not-exist", h.src.Err())
	}
	writeAtomic(t, path, nodeYAML("host-a"))
	h.changed(t)
	if h.names() != "host-a" {
		t.Errorf("nodes %s", h.names())
	}
	// Deleting the file keeps the configuration in force.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removal", func() bool { return h.src.Err() != nil })
	if h.names() != "host-a" || !h.src.Synced() {
		t.Errorf("after removal: synced=%v nodes=%s", h.src.Synced(), h.names())
	}
}

// TestSourceConfigMapSwap replays how the kubelet updates a ConfigMap
// volume: the file is a symlink through "..data", and an update swaps
// "..data" to a new directory by renaming a new symlink over it. The file's
// own directory entry never changes.
func TestSourceConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, data string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "peers.yaml"), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01", nodeYAML("host-a"))
	path := filepath.Join(dir, "peers.yaml")
	if err := os.Symlink("..data/peers.yaml", path); err != nil {
		t.Fatal(err)
	}
	h := start(t, path, 0)
	h.changed(t)
	version("..2026_02", nodeYAML("host-a", "host-b"))
	h.changed(t)
	if got := h.names(); got != "host-a,host-b" {
		t.Errorf("after the ..data swap: nodes %s", got)
	}
}

// TestSourcePollsWithoutDirectory starts before the file's directory exists,
// so no watch can be set up; polling must still find the file.
func TestSourcePollsWithoutDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	path := filepath.Join(dir, "peers.yaml")
	h := start(t, path, 20*time.Millisecond)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, path, nodeYAML("host-a"))
	h.changed(t)
	// The poll also set up the watch: a later change needs no poll.
	writeAtomic(t, path, nodeYAML("host-a", "host-b"))
	h.changed(t)
	if got := h.names(); got != "host-a,host-b" {
		t.Errorf("nodes %s", got)
	}
}

func TestSourceReloadSignalsUnchangedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, nodeYAML("host-a"))
	h := start(t, path, 0)
	h.changed(t)
	h.src.Reload()
	h.changed(t)
}

func TestSourceNodesIsACopy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, "nodes:\n  - name: host-a\n    podCIDRs: [\"10.244.1.0/24\"]\n    labels: {a: b}\n")
	h := start(t, path, 0)
	h.changed(t)
	n := h.src.Nodes()
	n[0].PodCIDRs[0] = netip.MustParsePrefix("10.0.0.0/8")
	n[0].Labels["a"] = "changed"
	n = h.src.Nodes()
	if n[0].PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") || n[0].Labels["a"] != "b" {
		t.Errorf("Nodes shares memory with the Source: %+v", n[0])
	}
}

func TestSourceRunTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.yaml")
	h := start(t, path, 0)
	eventually(t, "the first Run", func() bool { return h.src.Err() != nil })
	if err := h.src.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestPublish(t *testing.T) {
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.PublicKey()
	other := mustKey(t, keyB)
	self := agent.Self{Name: "host-a", PublicKey: pub, Endpoint: netip.MustParseAddrPort("198.18.0.1:51820")}
	tests := []struct {
		name    string
		file    string
		wantErr []string
		wantLog []string
	}{
		{name: "matching key", file: "nodes:\n  - name: host-a\n    publicKey: \"" + pub.String() + "\"\n"},
		{name: "other key", file: "nodes:\n  - name: host-a\n    publicKey: \"" + other.String() + "\"\n",
			wantErr: []string{"peers.yaml", `node "host-a"`, other.String(), "this agent's public key is " + pub.String()}},
		{name: "no key", file: "nodes:\n  - name: host-a\n",
			wantLog: []string{"has no publicKey", pub.String()}},
		{name: "no entry", file: "nodes:\n  - name: host-b\n",
			wantLog: []string{"this node has no entry", pub.String(), "endpoint=198.18.0.1:51820"}},
		{name: "other endpoint", file: "nodes:\n  - name: host-a\n    endpoint: \"198.18.0.9:51820\"\n",
			wantLog: []string{"different endpoint", "fileEndpoint=198.18.0.9:51820"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "peers.yaml")
			writeAtomic(t, path, tt.file)
			h := start(t, path, 0)
			h.changed(t)
			err := h.src.Publish(context.Background(), self)
			if (err != nil) != (len(tt.wantErr) > 0) {
				t.Fatalf("Publish = %v, want error %v", err, tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(h.logs.String(), w) {
					t.Errorf("log does not contain %q:\n%s", w, h.logs)
				}
			}
			if strings.Contains(h.logs.String(), priv.String()) || (err != nil && strings.Contains(err.Error(), priv.String())) {
				t.Error("private key leaked into a log or error")
			}
		})
	}
}

// TestPublishedKeyCheckedOnReload: an edit that gives the local node another
// key after Publish is reported as well.
func TestPublishedKeyCheckedOnReload(t *testing.T) {
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "peers.yaml")
	writeAtomic(t, path, "nodes:\n  - name: host-a\n    publicKey: \""+priv.PublicKey().String()+"\"\n")
	h := start(t, path, 0)
	h.changed(t)
	if err := h.src.Publish(context.Background(), agent.Self{Name: "host-a", PublicKey: priv.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h.logs.String(), "no longer matches") {
		t.Fatal("mismatch logged for a matching file")
	}
	writeAtomic(t, path, "nodes:\n  - name: host-a\n    publicKey: \""+keyB+"\"\n")
	h.changed(t)
	if logs := h.logs.String(); !strings.Contains(logs, "no longer matches") || !strings.Contains(logs, keyB) {
		t.Errorf("edited key not reported:\n%s", logs)
	}
}

func TestReportRateLimits(t *testing.T) {
	logs := &logBuf{}
	src, err := New(Options{Path: "p.yaml", NodeName: "host-a", ReportEvery: time.Hour, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	a := mesh.Problem{Node: "host-b", Reason: mesh.ReasonNoKey, Detail: "no public key"}
	b := mesh.Problem{Node: "host-c", Reason: mesh.ReasonCIDROverlap, Detail: "10.244.1.0/24 also claimed by host-d"}
	for range 5 {
		src.Report([]mesh.Problem{a})
	}
	if n := logs.count("node=host-b"); n != 1 {
		t.Errorf("unchanged problem logged %d times, want 1:\n%s", n, logs)
	}
	src.Report([]mesh.Problem{a, b, b})
	if logs.count("node=host-b") != 1 || logs.count("node=host-c") != 1 {
		t.Errorf("a new problem must be logged once, old ones not again:\n%s", logs)
	}
	src.Report([]mesh.Problem{b})
	if !strings.Contains(logs.String(), "mesh problem resolved") || logs.count("node=host-b") != 2 {
		t.Errorf("resolved problem not logged:\n%s", logs)
	}
	src.Report(nil)
	src.Report(nil)
	if n := logs.count("resolved"); n != 2 {
		t.Errorf("%d resolved lines, want 2:\n%s", n, logs)
	}

	// With a short interval an unchanged set is repeated.
	src.o.ReportEvery = time.Nanosecond
	src.Report([]mesh.Problem{a})
	time.Sleep(time.Millisecond)
	src.Report([]mesh.Problem{a})
	if n := logs.warnings("node=host-b reason=NoKey"); n != 3 {
		t.Errorf("problem logged %d times in total, want 3 (first, after return, repeat):\n%s", n, logs)
	}
}
