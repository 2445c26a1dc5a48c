package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kiloWireguardGo is the wireguard-go module version of B5: the release
// 0.0.20230223 (commit 21636207a675), which Kilo's userspace sidecar runs
// (its image builds that tag). It predates wireguard-go's TUN TSO/GRO and
// UDP GSO/GRO, but has batched sendmmsg/recvmmsg: the userspace peer users
// of other meshes meet today.
const kiloWireguardGo = "v0.0.0-20230223181233-21636207a675"

// buildPinnedWireguardGo builds wireguard-go's main package at version
// from the module proxy, in a scratch module of its own so that the exact
// dependency versions of that release are used (not ours), and keeps the
// binary in the user's cache directory for the next run.
func buildPinnedWireguardGo(version string) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("build wireguard-go %s: no cache directory: %w", version, err)
	}
	dir := filepath.Join(cache, "wgmesh-bench", "wireguard-go@"+version)
	bin := filepath.Join(dir, "wireguard-go")
	if out, err := exec.Command(bin, "--version").Output(); err == nil && strings.Contains(string(out), "wireguard-go") {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build wireguard-go %s: %w", version, err)
	}
	steps := [][]string{
		{"go", "mod", "init", "wgmesh-bench-wireguard-go"},
		{"go", "get", "golang.zx2c4.com/wireguard@" + version},
		// Its golang.org/x/net of 2022 reaches into package syscall with
		// go:linkname, which the Go 1.23+ linker refuses unless told not
		// to check; upgrading x/net instead would change the competitor.
		{"go", "build", "-trimpath", "-ldflags=-checklinkname=0", "-o", bin, "golang.zx2c4.com/wireguard"},
	}
	_ = os.Remove(filepath.Join(dir, "go.mod"))
	_ = os.Remove(filepath.Join(dir, "go.sum"))
	for _, s := range steps {
		c := exec.Command(s[0], s[1:]...)
		c.Dir = dir
		// Outside our module and workspace, with no flags of ours.
		c.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := c.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build wireguard-go %s: %s: %w: %s", version, strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return bin, nil
}
