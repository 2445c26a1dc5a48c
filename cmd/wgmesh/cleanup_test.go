package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh/agent"
)

// TestRemoveKeyFile: --remove-key removes a WireGuard private key file
// (also one with loose permissions), reports a missing one as not found,
// and refuses anything else, leaving it in place.
func TestRemoveKeyFile(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "private.key")
	if _, _, err := agent.NewKeyStore(key).LoadOrCreate(); err != nil {
		t.Fatal(err)
	}
	if removed, err := removeKeyFile(key); err != nil || !removed {
		t.Fatalf("removeKeyFile(key) = %v, %v; want removed", removed, err)
	}
	if _, err := os.Stat(key); !os.IsNotExist(err) {
		t.Fatalf("key file still there: %v", err)
	}
	if removed, err := removeKeyFile(key); err != nil || removed {
		t.Fatalf("second removeKeyFile = %v, %v; want not found, no error", removed, err)
	}

	// wg genkey's output with a group-readable mode is still a key.
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, []byte("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if removed, err := removeKeyFile(loose); err != nil || !removed {
		t.Errorf("removeKeyFile(loose) = %v, %v; want removed", removed, err)
	}

	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(other, link); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("A", 5000)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{other, "not a WireGuard private key"},
		{link, "not a regular file"},
		{dir, "not a regular file"},
		{big, "too large"},
	} {
		removed, err := removeKeyFile(c.path)
		if err == nil || removed || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("removeKeyFile(%s) = %v, %v; want a refusal naming the file and %q", c.path, removed, err, c.want)
		}
		if _, err := os.Lstat(c.path); err != nil {
			t.Errorf("refused %s is gone: %v", c.path, err)
		}
	}
}

// TestWaitBlocks: `wgmesh wait` blocks until it is stopped, then exits 0.
func TestWaitBlocks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	a := &app{streams: streams{in: strings.NewReader(""), out: &strings.Builder{}, err: &strings.Builder{}},
		getenv: func(string) string { return "" }, inCluster: func() bool { return false }}
	done := make(chan int, 1)
	go func() { done <- a.execute(ctx, []string{"wait"}) }()
	select {
	case code := <-done:
		t.Fatalf("wait returned %d before it was stopped", code)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("wait exit code %d, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("wait did not return after it was stopped")
	}
}
