package main

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// TestPrivilegedLab: the benchmark lab's two namespaces reach each other
// over the veth underlay, and close removes them.
func TestPrivilegedLab(t *testing.T) {
	netnslab.SkipUnlessRoot(t, "ping")
	l, err := newLab(false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	if err := l.waitPing(underlayB, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	l.close()
	for _, ns := range []string{l.nsA, l.nsB} {
		if _, err := os.Stat(filepath.Join(netnslab.Dir, ns)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s survived close: %v", ns, err)
		}
	}
}
