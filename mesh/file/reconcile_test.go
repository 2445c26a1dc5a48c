package file

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/agent/agenttest"
)

// TestReconcilerWithFileSource runs the real reconciler on the real peers
// file source: file edits reach the device, an invalid edit changes nothing.
func TestReconcilerWithFileSource(t *testing.T) {
	dir := t.TempDir()
	keys := agent.NewKeyStore(filepath.Join(dir, "private.key"))
	priv, _, err := keys.LoadOrCreate()
	if err != nil {
		t.Fatal(err)
	}
	self := "  - name: host-a\n    publicKey: \"" + priv.PublicKey().String() + "\"\n    endpoint: \"198.18.0.1:51820\"\n    podCIDRs: [\"10.244.1.0/24\"]\n"
	peer := func(name, key, n string) string {
		return "  - name: " + name + "\n    publicKey: \"" + key + "\"\n    endpoint: \"198.18.0." + n + ":51820\"\n    podCIDRs: [\"10.244." + n + ".0/24\"]\n"
	}
	path := filepath.Join(dir, "peers.yaml")
	writeAtomic(t, path, "nodes:\n"+self+peer("host-b", keyA, "2"))

	logs := &logBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	src, err := New(Options{Path: path, NodeName: "host-a", Poll: -1, Debounce: 10 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	dev := &agenttest.Device{}
	rec, err := agent.New(agent.Options{
		NodeName: "host-a", Nodes: src, Publisher: src, Device: dev, Router: &agenttest.Router{}, Key: priv, Keys: keys,
		Derive: mesh.DeriveOptions{IPv4: true, IPv6: true}, ListenPort: 51820, Resync: 50 * time.Millisecond,
		Debounce: 10 * time.Millisecond, MinBackoff: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	eventually(t, "host-b configured", func() bool { return dev.PeerNames() == "host-b" && rec.Ready() })
	if !strings.Contains(logs.String(), "published this node's identity") {
		t.Errorf("publish did not succeed:\n%s", logs)
	}

	writeAtomic(t, path, "nodes:\n"+self+peer("host-b", keyA, "2")+peer("host-c", keyB, "3"))
	eventually(t, "host-c configured", func() bool { return dev.PeerNames() == "host-b,host-c" })

	// An invalid edit (host bits set) leaves host-c in place through resyncs.
	writeAtomic(t, path, "nodes:\n"+self+peer("host-b", keyA, "2")+strings.Replace(peer("host-c", keyB, "3"), ".0/24", ".1/24", 1))
	eventually(t, "the invalid edit noticed", func() bool { return src.Err() != nil })
	n := dev.Count()
	eventually(t, "resyncs", func() bool { return dev.Count() >= n+2 })
	if got := dev.PeerNames(); got != "host-b,host-c" {
		t.Errorf("after an invalid edit: peers %q, want the last good host-b,host-c", got)
	}
	if !slices.ContainsFunc(strings.Split(logs.String(), "\n"), func(l string) bool {
		return strings.Contains(l, path+":13: nodes[2].podCIDRs[0]")
	}) {
		t.Errorf("the invalid edit is not logged with path and line:\n%s", logs)
	}
}
