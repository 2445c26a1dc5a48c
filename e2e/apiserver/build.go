package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/e2e/internal/buildcache"
)

// KubernetesVersion is the kube-apiserver release the e2e module builds. It
// must agree with the k8s.io/kubernetes requirement in e2e/go.mod and with the
// main module's client-go minor version.
const KubernetesVersion = "v1.33.4"

// Binary names inside the directory returned by Build.
const (
	APIServerBinary         = "kube-apiserver"
	EtcdBinary              = "etcd"
	KubeletBinary           = "kubelet"
	ControllerManagerBinary = "kube-controller-manager"
	SchedulerBinary         = "kube-scheduler"
	ProxyBinary             = "kube-proxy"
	KubectlBinary           = "kubectl"
)

// binaries is every file Build leaves in its directory: the control plane,
// the node components the cluster lab runs (e2e/cluster), and kubectl, which
// the cluster tests run exactly as users do.
var binaries = []string{APIServerBinary, EtcdBinary, KubeletBinary, ControllerManagerBinary, SchedulerBinary, ProxyBinary, KubectlBinary}

// CacheEnv overrides the directory Build keeps its binaries in.
const CacheEnv = "WGMESH_E2E_BIN_CACHE"

// Build compiles kube-apiserver, the embedded-etcd launcher, kubelet,
// kube-controller-manager, kube-scheduler, kube-proxy and kubectl from the e2e
// module and returns the directory holding them (names: the *Binary
// constants). The directory is keyed by a
// hash of the module's go.mod, go.sum, the launcher's source and the Go
// version, so CI compiles once per dependency change and every later call
// (in the same run or the next one) returns at once. Concurrent callers, even
// in different processes, build only once: the build holds a file lock.
func Build(ctx context.Context) (string, error) {
	modDir, err := moduleDir()
	if err != nil {
		return "", err
	}
	key, err := buildKey(modDir)
	if err != nil {
		return "", err
	}
	root, err := buildcache.Root(CacheEnv, "wgmesh-e2e-bin")
	if err != nil {
		return "", err
	}
	binDir := filepath.Join(root, key)
	if binariesPresent(binDir) {
		return binDir, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("create e2e binary cache %s: %w (set %s to a writable directory)", root, err, CacheEnv)
	}
	unlock, err := buildcache.Lock(filepath.Join(root, key+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have finished the build while we waited.
	if binariesPresent(binDir) {
		return binDir, nil
	}

	tmp, err := os.MkdirTemp(root, key+".tmp-")
	if err != nil {
		return "", fmt.Errorf("create build directory in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)

	// -s -w: no symbol table or DWARF; linking seven large binaries with
	// them is minutes of a cold build, and nothing here debugs them.
	ldflags := "-s -w -X k8s.io/component-base/version.gitVersion=" + KubernetesVersion +
		" -X k8s.io/component-base/version.gitMajor=1" +
		" -X k8s.io/component-base/version.gitMinor=33" +
		" -X k8s.io/component-base/version.gitTreeState=clean" +
		" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
	// One go build for all packages shares the compile of common
	// dependencies (grpc, etcd client, client-go) and writes each under its
	// base name.
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", tmp+string(filepath.Separator),
		"-ldflags", ldflags,
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kubelet",
		"k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler",
		"k8s.io/kubernetes/cmd/kube-proxy",
		"k8s.io/kubernetes/cmd/kubectl",
		"./apiserver/cmd/etcd",
	)
	cmd.Dir = modDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build Kubernetes binaries and etcd in %s: %w\n%s", modDir, err, buildcache.Tail(out, 4000))
	}
	if !binariesPresent(tmp) {
		return "", fmt.Errorf("build in %s did not produce all of %v in %s", modDir, binaries, tmp)
	}
	if err := os.Rename(tmp, binDir); err != nil {
		return "", fmt.Errorf("move built binaries to %s: %w", binDir, err)
	}
	prune(root, keepBuilds)
	return binDir, nil
}

// keepBuilds is how many builds (one per go.mod/go.sum state) stay cached;
// each is about 710 MB (measured: du of a build directory, v1.33.4).
const keepBuilds = 3

// prune removes all but the newest keep builds in root. A process still
// running a removed binary is unaffected (the file lives until closed);
// failures only leave disk space used, so they are ignored.
func prune(root string, keep int) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	type build struct {
		name string
		mod  time.Time
	}
	var builds []build
	for _, e := range entries {
		fi, err := e.Info()
		if !e.IsDir() || err != nil {
			continue
		}
		if strings.Contains(e.Name(), ".tmp-") {
			// Left by a build that was killed; a live one is far younger.
			if time.Since(fi.ModTime()) > 2*time.Hour {
				os.RemoveAll(filepath.Join(root, e.Name()))
			}
			continue
		}
		builds = append(builds, build{e.Name(), fi.ModTime()})
	}
	sort.Slice(builds, func(i, j int) bool { return builds[i].mod.After(builds[j].mod) })
	for i := keep; i < len(builds); i++ {
		os.RemoveAll(filepath.Join(root, builds[i].name))
		os.Remove(filepath.Join(root, builds[i].name+".lock"))
	}
}

// moduleDir finds the e2e module's root from this file's compile-time path:
// the binaries can only be built from a source checkout anyway.
func moduleDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locate e2e module: no caller information")
	}
	dir := filepath.Dir(filepath.Dir(file))
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("locate e2e module: %s has no go.mod (run from a wgmesh source checkout, built without -trimpath): %w", dir, err)
	}
	return dir, nil
}

func buildKey(modDir string) (string, error) {
	h := sha256.New()
	io.WriteString(h, runtime.Version()+"\x00"+KubernetesVersion+"\x00")
	for _, rel := range []string{"go.mod", "go.sum", "apiserver/cmd/etcd/main.go"} {
		data, err := os.ReadFile(filepath.Join(modDir, rel))
		if err != nil {
			return "", fmt.Errorf("hash build inputs: %w", err)
		}
		io.WriteString(h, rel+"\x00")
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func binariesPresent(dir string) bool {
	for _, name := range binaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
