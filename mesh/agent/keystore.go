package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/wgmesh/wgmesh/mesh"
)

// DefaultKeyFile is where the agent keeps its private key: on the node's disk,
// so the key (and the peers' trust in it) survives restarts and upgrades.
const DefaultKeyFile = "/var/lib/wgmesh/private.key"

// maxKeyFileSize bounds what Load reads: a key file is 45 bytes, anything much
// larger is not a key file.
const maxKeyFileSize = 4096

// KeyStore keeps the node's WireGuard private key in one file, in the format
// of `wg genkey`: standard base64 and a newline. The file must not be
// accessible by group or others (like ssh, a readable key is refused rather
// than used); it is written atomically, so a crash leaves the old key or the
// new one, never a torn file. Errors name the file, never its content.
//
// A KeyStore is safe for concurrent use. Other processes (`wgmesh rotate-key`
// next to a running agent) may replace the file at any time; readers see the
// old or the new key.
type KeyStore struct {
	path string
	mu   sync.Mutex
}

// NewKeyStore returns a store for the key file at path; "" means
// DefaultKeyFile. Nothing is read or created until a method is called.
func NewKeyStore(path string) *KeyStore {
	if path == "" {
		path = DefaultKeyFile
	}
	return &KeyStore{path: path}
}

// Path returns the key file's path.
func (s *KeyStore) Path() string { return s.path }

// Load reads the private key. A missing file yields an error wrapping
// fs.ErrNotExist; a file with group or other permission bits, or one that
// does not hold exactly one valid key, is refused.
func (s *KeyStore) Load() (mesh.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load()
}

// LoadOrCreate reads the private key, or creates the file with a new random
// key if it does not exist (created reports which). A corrupt or exposed file
// is an error and is never replaced: the peers know this node by its key.
// If another process creates the file at the same time, both end up with the
// key that reached the disk first.
func (s *KeyStore) LoadOrCreate() (priv mesh.Key, created bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.load()
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	k, err = mesh.GeneratePrivateKey()
	if err != nil {
		return mesh.Key{}, false, fmt.Errorf("key file %s: %w", s.path, err)
	}
	won, err := s.write(k, false)
	if err != nil {
		return mesh.Key{}, false, err
	}
	if !won {
		// Someone else created it between our load and our write.
		k, err = s.load()
		return k, false, err
	}
	return k, true, nil
}

// Rotate replaces the key with a new random one, atomically, and returns it.
// The old key is gone once Rotate returns; the caller publishes the new
// public key.
func (s *KeyStore) Rotate() (mesh.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		return mesh.Key{}, fmt.Errorf("key file %s: %w", s.path, err)
	}
	if _, err := s.write(k, true); err != nil {
		return mesh.Key{}, err
	}
	return k, nil
}

func (s *KeyStore) load() (mesh.Key, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return mesh.Key{}, fmt.Errorf("read key file: %w", err)
	}
	defer f.Close()
	// Check the opened file, not the path, so a swap in between cannot
	// slip an exposed file past the check.
	st, err := f.Stat()
	if err != nil {
		return mesh.Key{}, fmt.Errorf("read key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return mesh.Key{}, fmt.Errorf("key file %s is not a regular file (%s); point --key-file at a file", s.path, st.Mode().Type())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return mesh.Key{}, fmt.Errorf("key file %s has mode %#o and is accessible by group or others, so the key may be exposed: run \"chmod 600 %s\" (for a Secret volume set defaultMode: 0400), and rotate the key if others could read it", s.path, perm, s.path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return mesh.Key{}, fmt.Errorf("read key file %s: %w", s.path, err)
	}
	if len(data) > maxKeyFileSize {
		return mesh.Key{}, fmt.Errorf("key file %s is corrupt: larger than %d bytes; it is not replaced automatically, move it away to create a new key", s.path, maxKeyFileSize)
	}
	// ParseKey's error never contains its input.
	k, err := mesh.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		return mesh.Key{}, fmt.Errorf("key file %s is corrupt: %w; it is not replaced automatically, restore it or move it away to create a new key", s.path, err)
	}
	if k.IsZero() {
		return mesh.Key{}, fmt.Errorf("key file %s is corrupt: it holds an all-zero key; move it away to create a new key", s.path)
	}
	return k, nil
}

// renameFile and linkFile are replaced in tests to simulate failures.
var (
	renameFile = os.Rename
	linkFile   = os.Link
)

// write stores k through a temporary file in the same directory (same file
// system, so the final step is atomic), synced before and after it is put in
// place. With replace it renames over an existing file; without, it hard-links
// the file into place, which fails if one exists (won is then false).
func (s *KeyStore) write(k mesh.Key, replace bool) (won bool, err error) {
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create key directory %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write key file %s: %w", s.path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		// On success the temp name is gone (renamed) or a second link;
		// either way nothing of it may stay behind.
		if rmErr := os.Remove(tmpName); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
			err = fmt.Errorf("remove temporary key file %s: %w", tmpName, rmErr)
		}
	}()
	if err := writeAndSync(tmp, k); err != nil {
		return false, fmt.Errorf("write key file %s: %w", s.path, err)
	}
	if replace {
		err = renameFile(tmpName, s.path)
	} else {
		err = linkFile(tmpName, s.path)
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("write key file %s: %w", s.path, err)
	}
	if err := syncDir(dir); err != nil {
		return false, fmt.Errorf("write key file %s: %w", s.path, err)
	}
	return true, nil
}

func writeAndSync(f *os.File, k mesh.Key) error {
	// CreateTemp already uses 0600; say so explicitly in case of an odd umask
	// or file system.
	err := f.Chmod(0o600)
	if err == nil {
		_, err = f.WriteString(k.String() + "\n")
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
