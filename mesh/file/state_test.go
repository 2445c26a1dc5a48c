package file

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
)

// TestSourceState: State says when the file was last read validly, why
// the file on disk is not in force (with the configuration that stays),
// and whether the file in force gives this node another key than the one
// the agent published; each clears with the fix.
func TestSourceState(t *testing.T) {
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "peers.yaml")
	good := "nodes:\n  - name: host-a\n    publicKey: \"" + priv.PublicKey().String() + "\"\n"
	writeAtomic(t, path, good)
	h := start(t, path, 0)
	h.changed(t)
	st := h.src.State()
	if st.LastSuccess.IsZero() || st.Err != nil || st.SelfErr != nil {
		t.Fatalf("after a valid file: %+v", st)
	}
	if err := h.src.Publish(context.Background(), agent.Self{Name: "host-a", PublicKey: priv.PublicKey()}); err != nil {
		t.Fatal(err)
	}

	writeAtomic(t, path, "nodes:\n  - name: [x\n")
	eventually(t, "the invalid file in State", func() bool { return h.src.State().Err != nil })
	st = h.src.State()
	if !strings.Contains(st.Err.Error(), path) || !strings.Contains(st.Err.Error(), "stays in force") || st.FailingSince.IsZero() {
		t.Errorf("State of an invalid file: %+v, want the path, the configuration in force and since when", st)
	}

	writeAtomic(t, path, "nodes:\n  - name: host-a\n    publicKey: \""+keyB+"\"\n")
	h.changed(t)
	st = h.src.State()
	if st.Err != nil || !st.FailingSince.IsZero() || st.SelfErr == nil || !strings.Contains(st.SelfErr.Error(), keyB) {
		t.Errorf("State with another key for this node: %+v, want SelfErr naming %s", st, keyB)
	}
	writeAtomic(t, path, good)
	h.changed(t)
	if st = h.src.State(); st.Err != nil || st.SelfErr != nil {
		t.Errorf("State after the fix: %+v", st)
	}
}
