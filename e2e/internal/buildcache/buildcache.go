// Package buildcache holds what the e2e module's cached builds (the Kubernetes
// binaries in e2e/apiserver, the User-Mode Linux kernels in e2e/uml) share:
// where a cache lives and the lock that lets concurrent test processes build
// an entry once.
package buildcache

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Root is the directory a cache named name lives in: $env when set, else
// name under the user's cache directory (os.UserCacheDir: $XDG_CACHE_HOME,
// else ~/.cache).
func Root(env, name string) (string, error) {
	if dir := os.Getenv(env); dir != "" {
		return dir, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find a cache directory for %s: %w (set %s)", name, err, env)
	}
	return filepath.Join(dir, name), nil
}

// Lock takes an exclusive flock on path, creating the file, and returns the
// function that releases it. The lock dies with the process, so a build
// killed half way never wedges the next one.
func Lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// Tail is the last n bytes of a build's output, for error messages.
func Tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
