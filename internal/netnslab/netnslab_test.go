package netnslab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		id   string
		ok   bool
	}{
		{"wgmlab-123-abcdef-n1", 123, "abcdef", true},
		{"wgmlab-123-abcdef-n1-p2", 123, "abcdef", true},
		{"wgmlab-123-abcdef", 0, "", false},
		{"wgmlabx-123-abcdef-sw", 0, "", false},
		{"wgmlab-x-abcdef-sw", 0, "", false},
		{"other-1-a-b", 0, "", false},
	} {
		pid, id, ok := ParseName("wgmlab", tc.name)
		if pid != tc.pid || id != tc.id || ok != tc.ok {
			t.Errorf("ParseName(%q) = %d, %q, %v; want %d, %q, %v", tc.name, pid, id, ok, tc.pid, tc.id, tc.ok)
		}
	}
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	if pid, got, ok := ParseName("wgmt", Base("wgmt", id)+"-r"); !ok || pid != os.Getpid() || got != id {
		t.Errorf("ParseName(Base(...)) = %d, %q, %v; want this pid and %q", pid, got, ok, id)
	}
}

func FuzzParseName(f *testing.F) {
	f.Add("wgmlab-123-abcdef-n1")
	f.Add("wgmlab-0-x-")
	f.Add("wgmlab--")
	f.Fuzz(func(t *testing.T, name string) {
		pid, id, ok := ParseName("wgmlab", name)
		if ok && (pid <= 0 || strings.Contains(id, "-") || !strings.HasPrefix(name, "wgmlab-")) {
			t.Fatalf("ParseName(%q) = %d, %q, true", name, pid, id)
		}
	})
}

// TestPrivilegedLabLifecycle: New removes a lab a killed run left behind
// (its pid no longer runs) and leaves a live process's alone; the test's
// own namespaces, with a process inside, go in Cleanup.
func TestPrivilegedLabLifecycle(t *testing.T) {
	SkipUnlessRoot(t, "sleep")
	const prefix = "wgmnl"
	ctx := context.Background()
	// pid 2^22+1 is above the kernel's pid_max limit: never a live process.
	stale := prefix + "-4194305-dead00-x"
	// pid 1 always runs.
	live := prefix + "-1-live00-x"
	for _, ns := range []string{stale, live} {
		if err := Add(ctx, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Remove(ns) })
	}
	var l *Lab
	t.Run("lab", func(t *testing.T) {
		l = New(t, prefix, "a", "b")
		if err := Veth(ctx, "va", l.NS[0], "vb", l.NS[1]); err != nil {
			t.Fatal(err)
		}
		if out := l.Run(t, 1, "ip", "-br", "link", "show", "vb"); !strings.HasPrefix(out, "vb@") {
			t.Errorf("veth end b: %q", out)
		}
		sleeper := l.Cmd(0, "sleep", "600")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		go sleeper.Wait()
	})
	exists := func(ns string) bool {
		_, err := os.Stat(filepath.Join(Dir, ns))
		return !errors.Is(err, os.ErrNotExist)
	}
	if exists(stale) {
		t.Errorf("the stale namespace %s survived New", stale)
	}
	if !exists(live) {
		t.Errorf("New removed %s of a live process", live)
	}
	for _, ns := range l.NS {
		if exists(ns) {
			t.Errorf("the lab's namespace %s survived its test's Cleanup", ns)
		}
	}
}
