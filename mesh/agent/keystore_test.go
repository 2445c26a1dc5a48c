package agent

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
)

func keyPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "wgmesh", "private.key")
}

// dirEntries lists the names in dir, to spot leftover temporary files.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestNewKeyStoreDefault(t *testing.T) {
	if got := NewKeyStore("").Path(); got != DefaultKeyFile {
		t.Errorf("NewKeyStore(\"\").Path() = %q, want %q", got, DefaultKeyFile)
	}
}

func TestLoadOrCreateCreatesPrivateFile(t *testing.T) {
	path := keyPath(t)
	s := NewKeyStore(path)
	k, created, err := s.LoadOrCreate()
	if err != nil || !created {
		t.Fatalf("LoadOrCreate = created %v, %v; want a new key", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %#o, want 0600", perm)
	}
	dst, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := dst.Mode().Perm(); perm != 0o700 {
		t.Errorf("key directory mode = %#o, want 0700", perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != k.String()+"\n" {
		t.Errorf("file content is not the key in wg genkey format")
	}
	if got := dirEntries(t, filepath.Dir(path)); len(got) != 1 {
		t.Errorf("key directory holds %q, want only the key file", got)
	}

	k2, created, err := NewKeyStore(path).LoadOrCreate()
	if err != nil || created || k2 != k {
		t.Fatalf("second LoadOrCreate: created %v, err %v, same key %v; want the existing key", created, err, k2 == k)
	}
	k3, err := s.Load()
	if err != nil || k3 != k {
		t.Fatalf("Load: err %v, same key %v", err, k3 == k)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := NewKeyStore(keyPath(t)).Load()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestLoadRefusesExposedFile(t *testing.T) {
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o601} {
		path := keyPath(t)
		s := NewKeyStore(path)
		k, _, err := s.LoadOrCreate()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, _, err = s.LoadOrCreate()
		if err == nil {
			t.Fatalf("mode %#o: LoadOrCreate accepted an exposed key file", mode)
		}
		msg := err.Error()
		if !strings.Contains(msg, path) || !strings.Contains(msg, "chmod 600") {
			t.Errorf("mode %#o: error %q does not name the file and the fix", mode, msg)
		}
		if strings.Contains(msg, k.String()) {
			t.Errorf("error contains the key")
		}
		// The file is left for the operator to fix, not replaced.
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Load(); err != nil || got != k {
			t.Errorf("mode %#o: after chmod 600 Load = same %v, %v", mode, got == k, err)
		}
	}
}

func TestLoadRefusesCorruptFile(t *testing.T) {
	valid := keyVectors[0].priv
	for name, content := range map[string]string{
		"empty":       "",
		"newline":     "\n",
		"truncated":   valid[:20],
		"garbage":     "not a key at all\n",
		"two keys":    valid + "\n" + keyVectors[1].priv + "\n",
		"trailing":    valid + "x\n",
		"zero key":    strings.Repeat("A", 43) + "=\n",
		"public hex":  strings.Repeat("ab", 32) + "\n",
		"oversized":   strings.Repeat(valid+"\n", 200),
		"binary junk": "\x00\x01\x02" + valid[3:],
	} {
		t.Run(name, func(t *testing.T) {
			path := keyPath(t)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, created, err := NewKeyStore(path).LoadOrCreate()
			if err == nil || created {
				t.Fatalf("LoadOrCreate of a corrupt file: created %v, err %v; want a refusal", created, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) || !strings.Contains(msg, "corrupt") {
				t.Errorf("error %q does not name the file and say it is corrupt", msg)
			}
			// No part of a key may leak: check every long run of the content.
			if len(content) >= 12 && strings.Contains(msg, content[3:12]) {
				t.Errorf("error %q contains file content", msg)
			}
			after, err := os.ReadFile(path)
			if err != nil || string(after) != content {
				t.Errorf("the corrupt file was modified or removed")
			}
		})
	}
}

func TestLoadAcceptsWhitespaceVariants(t *testing.T) {
	for _, content := range []string{
		keyVectors[0].priv,
		keyVectors[0].priv + "\n",
		keyVectors[0].priv + "\r\n",
		"  " + keyVectors[0].priv + "\n\n",
	} {
		path := keyPath(t)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := NewKeyStore(path).Load()
		if err != nil {
			t.Fatalf("Load(%q-like file): %v", strings.TrimSpace(content)[:4], err)
		}
		if k.PublicKey().String() != keyVectors[0].pub {
			t.Errorf("loaded key does not match the vector")
		}
	}
}

func TestLoadRefusesDirectory(t *testing.T) {
	path := keyPath(t)
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := NewKeyStore(path).LoadOrCreate(); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("LoadOrCreate on a directory: %v, want an error naming it", err)
	}
}

func TestRotate(t *testing.T) {
	path := keyPath(t)
	s := NewKeyStore(path)
	old, _, err := s.LoadOrCreate()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[mesh.Key]bool{old: true}
	for range 5 {
		k, err := s.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		if seen[k] {
			t.Fatal("Rotate returned a key used before")
		}
		seen[k] = true
		got, err := NewKeyStore(path).Load()
		if err != nil || got != k {
			t.Fatalf("after Rotate Load = same %v, %v", got == k, err)
		}
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("after Rotate mode = %v, %v", st.Mode().Perm(), err)
		}
	}
	if got := dirEntries(t, filepath.Dir(path)); len(got) != 1 {
		t.Errorf("key directory holds %q after rotations, want only the key file", got)
	}
}

func TestRotateRepairsExposedFile(t *testing.T) {
	path := keyPath(t)
	s := NewKeyStore(path)
	if _, _, err := s.LoadOrCreate(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := s.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(); err != nil || got != k {
		t.Fatalf("Load after rotating an exposed key: same %v, %v", got == k, err)
	}
}

// TestRotateIsAtomic reads the file continuously while it is rotated: every
// read must see a complete old or new key, never a missing or partial file.
func TestRotateIsAtomic(t *testing.T) {
	path := keyPath(t)
	writer := NewKeyStore(path)
	if _, _, err := writer.LoadOrCreate(); err != nil {
		t.Fatal(err)
	}
	// A second store, as a second process would have.
	reader := NewKeyStore(path)
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		reads := 0
		for {
			select {
			case <-done:
				if reads == 0 {
					errc <- errors.New("reader never ran")
				}
				return
			default:
			}
			if _, err := reader.Load(); err != nil {
				errc <- err
				return
			}
			reads++
		}
	}()
	for range 200 {
		if _, err := writer.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Fatalf("a reader saw a broken key file during rotation: %v", err)
	}
	if got := dirEntries(t, filepath.Dir(path)); len(got) != 1 {
		t.Errorf("key directory holds %q, want only the key file", got)
	}
}

func TestFailedWriteLeavesNothingBehind(t *testing.T) {
	path := keyPath(t)
	s := NewKeyStore(path)
	old, _, err := s.LoadOrCreate()
	if err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected rename failure")
	saved := renameFile
	renameFile = func(string, string) error { return injected }
	t.Cleanup(func() { renameFile = saved })

	if _, err := s.Rotate(); !errors.Is(err, injected) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Rotate with a failing rename: %v, want the injected error naming the file", err)
	}
	if got, err := s.Load(); err != nil || got != old {
		t.Fatalf("old key not intact after a failed rotation: same %v, %v", got == old, err)
	}
	if got := dirEntries(t, filepath.Dir(path)); len(got) != 1 {
		t.Errorf("key directory holds %q after a failed write, want only the key file", got)
	}
}

func TestFailedCreateLeavesNothingBehind(t *testing.T) {
	path := keyPath(t)
	injected := errors.New("injected link failure")
	saved := linkFile
	linkFile = func(string, string) error { return injected }
	t.Cleanup(func() { linkFile = saved })

	if _, _, err := NewKeyStore(path).LoadOrCreate(); !errors.Is(err, injected) {
		t.Fatalf("LoadOrCreate with a failing link: %v, want the injected error", err)
	}
	if got := dirEntries(t, filepath.Dir(path)); len(got) != 0 {
		t.Errorf("key directory holds %q after a failed create, want nothing", got)
	}
}

// TestConcurrentCreateAgrees starts several stores (as several processes
// would) on a missing file: all must end with the same key.
func TestConcurrentCreateAgrees(t *testing.T) {
	path := keyPath(t)
	const n = 8
	keys := make([]mesh.Key, n)
	errs := make([]error, n)
	var created int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, c, err := NewKeyStore(path).LoadOrCreate()
			keys[i], errs[i] = k, err
			if c {
				mu.Lock()
				created++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("store %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("store %d got a different key than store 0", i)
		}
	}
	if created != 1 {
		t.Errorf("%d stores report creating the key, want 1", created)
	}
	final, err := NewKeyStore(path).Load()
	if err != nil || final != keys[0] {
		t.Fatalf("file holds another key than the stores returned: %v", err)
	}
}

// TestWgGenkeyCompatible checks both directions with the wg tool: a key made
// by `wg genkey` loads, and `wg pubkey` reads our file.
func TestWgGenkeyCompatible(t *testing.T) {
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg not installed")
	}
	path := keyPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	gen, err := exec.Command("wg", "genkey").Output()
	if err != nil {
		t.Fatalf("wg genkey: %v", err)
	}
	if err := os.WriteFile(path, gen, 0o600); err != nil {
		t.Fatal(err)
	}
	s := NewKeyStore(path)
	k, created, err := s.LoadOrCreate()
	if err != nil || created {
		t.Fatalf("LoadOrCreate of a wg genkey file: created %v, %v", created, err)
	}
	if wantPub := wgPubkey(t, path); k.PublicKey().String() != wantPub {
		t.Errorf("public key of the wg genkey file differs from wg pubkey")
	}

	rotated, err := s.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if got := wgPubkey(t, path); got != rotated.PublicKey().String() {
		t.Errorf("wg pubkey of our file = %s, want %s", got, rotated.PublicKey())
	}
}

func wgPubkey(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("wg", "pubkey")
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wg pubkey < %s: %v", path, err)
	}
	return strings.TrimSpace(string(out))
}

// TestLoadFollowsSecretVolumeSymlink reads a key laid out like a Kubernetes
// Secret volume: the name is a symlink into a timestamped directory, and the
// file has mode 0400 (defaultMode).
func TestLoadFollowsSecretVolumeSymlink(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_01_01_00_00_00.000000001")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "private.key"), []byte(keyVectors[1].priv+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(filepath.Base(data), "private.key"), filepath.Join(dir, "private.key")); err != nil {
		t.Fatal(err)
	}
	k, created, err := NewKeyStore(filepath.Join(dir, "private.key")).LoadOrCreate()
	if err != nil || created {
		t.Fatalf("LoadOrCreate through a symlink: created %v, %v", created, err)
	}
	if k.PublicKey().String() != keyVectors[1].pub {
		t.Error("loaded key does not match the vector")
	}
}

// keyVectors are private keys with the public keys `wg pubkey` gives for
// them (the same vectors as package mesh's key tests).
var keyVectors = []struct{ priv, pub string }{
	{"2POeogxgDFSEvluf+v1KS9HLiyiJeMeIpVL9Wcho7H4=", "XuJc3jW/4bJb6kVoROnwqaVZ+crhC1YcYGEHiDsfOEk="},
	{"GOV4+OLf/tlnneeUP42RsnmOZlY7osuKRoKjN6h3tl4=", "djpKU0V+UxSVDRPcumOYaDiINZaEbfAqJ0Eb/oi/ukE="},
}
