// Package uml runs User-Mode Linux guests as kernel-WireGuard nodes of an e2e
// lab: a 6.1 kernel built from Debian's linux-source-6.1 with WireGuard, nf_tables
// and hostfs built in, booted as an ordinary host process whose network card
// is a TAP device on the lab's switch bridge. The guest sees the host's root
// file system read-only (hostfs), so it runs the same wgmesh, ip, nft and wg
// binaries as the host; the lab directory is mounted writable at the same
// path (tmpfs covers the rest of /tmp), which is how keys, peers files, logs,
// helper binaries and commands pass in and out.
//
// Facts behind the choices are in KERNEL-LAB notes: a KVM guest cannot boot a
// stock kernel on this machine kind, UML can.
package uml

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/e2e/internal/buildcache"
)

// baseConfig is the kernel configuration every variant starts from: ARCH=um
// defconfig plus WireGuard, namespaces, policy routing, nf_tables (with
// objref), XFRM_USER, vector TAP networking and hostfs, all built in.
//
//go:embed uml.config
var baseConfig []byte

// SourcePackage is the Debian package whose tarball the kernel is built from;
// its version is part of the cache key.
const SourcePackage = "linux-source-6.1"

// sourceTarball is where SourcePackage installs the kernel source.
const sourceTarball = "/usr/src/linux-source-6.1.tar.xz"

// CacheEnv overrides the directory kernels are built and cached in. By default
// it is wgmesh-e2e-uml next to the kube-apiserver cache (the user cache dir).
const CacheEnv = "WGMESH_E2E_UML_CACHE"

// Variant is one kernel configuration: the base config with some options
// turned off.
type Variant struct {
	// Name labels the variant in logs and test names ("full").
	Name string
	// Disable lists config symbols (without CONFIG_) set to n; every one,
	// and whatever depends on it, must end up off or Build fails.
	Disable []string
	// Enable lists symbols set to y that keep options the Disable list
	// would drop on as a side effect. A variant is built from a copy of
	// the full kernel's tree, and Kbuild recompiles every object that
	// reads a changed symbol: a widely read one (SKB_EXTENSIONS in
	// skbuff.h) costs half the kernel.
	Enable []string
}

// The variants the scenarios boot.
var (
	// Full has everything a kernel node needs.
	Full = Variant{Name: "full"}
	// NoXfrmNoObjref lacks XFRM_USER (the router's old netlink handle
	// failed without it) and NFT_OBJREF (named counters in rules).
	// NET_KEY (PF_KEY sockets, not NETLINK_XFRM) keeps XFRM and
	// SKB_EXTENSIONS on, which XFRM_USER alone selected: without it the
	// variant recompiled about 390 of the full tree's 1,089 objects.
	NoXfrmNoObjref = Variant{Name: "noxfrm-noobjref", Disable: []string{"XFRM_USER", "NFT_OBJREF"}, Enable: []string{"NET_KEY"}}
	// NoNftables has no nf_tables at all: strict mode cannot be enforced.
	NoNftables = Variant{Name: "nonftables", Disable: []string{"NF_TABLES"}}
)

// Kernel is a built UML kernel.
type Kernel struct {
	Variant Variant
	// Path is the stripped `linux` binary.
	Path string
	// Config is the full .config it was built from.
	Config string
	// BuildTime is how long Build took when it built the kernel in this
	// call; zero when it came from the cache.
	BuildTime time.Duration
}

// Build returns the kernel of variant v, building it when the cache has none.
// The cache is keyed by a hash of the base config, v.Disable, v.Enable and the
// installed version of SourcePackage; a build holds a file lock, so concurrent
// test processes build once and the others wait and reuse it. The full
// variant's build tree is kept so the other variants build incrementally from
// a copy of it: only the objects that read a changed option recompile (see
// Variant.Enable; NoNftables rebuilds much of net/, since net_namespace.h and
// skbuff.h test NF_TABLES). The
// first build needs about 2.5 GB of disk and, on 2 loaded cores, tens of
// minutes; logf receives progress.
//
// Errors: SourcePackage not installed (names the apt-get command), a failed
// make (with the log's tail), a disabled option still on after olddefconfig.
func Build(ctx context.Context, v Variant, logf func(string, ...any)) (*Kernel, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	version, err := sourceVersion()
	if err != nil {
		return nil, err
	}
	root, err := buildcache.Root(CacheEnv, "wgmesh-e2e-uml")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("uml: create kernel cache %s: %w (set %s to a writable directory)", root, err, CacheEnv)
	}
	key := buildKey(version, v)
	k := &Kernel{Variant: v, Path: filepath.Join(root, key, "linux"), Config: filepath.Join(root, key, "config")}
	if present(k.Path) {
		return k, nil
	}
	unlock, err := buildcache.Lock(filepath.Join(root, key+".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if present(k.Path) {
		return k, nil // another process built it while we waited
	}
	start := time.Now()
	src, err := extractSource(ctx, root, version, logf)
	if err != nil {
		return nil, err
	}
	var buildDir string
	if len(v.Disable)+len(v.Enable) == 0 {
		buildDir = filepath.Join(root, "build-"+version+"-"+key)
	} else {
		// Incremental from the full kernel's tree: build that first.
		if _, err := Build(ctx, Full, logf); err != nil {
			return nil, fmt.Errorf("uml: variant %s starts from the full kernel: %w", v.Name, err)
		}
		buildDir, err = os.MkdirTemp(root, key+".tmp-build-")
		if err != nil {
			return nil, fmt.Errorf("uml: create build directory in %s: %w", root, err)
		}
		defer os.RemoveAll(buildDir)
		fullTree := filepath.Join(root, "build-"+version+"-"+buildKey(version, Full))
		if out, err := exec.CommandContext(ctx, "cp", "-a", fullTree+"/.", buildDir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("uml: copy the full kernel's build tree %s: %w\n%s", fullTree, err, out)
		}
	}
	if err := os.MkdirAll(buildDir, 0o755); err != nil {
		return nil, fmt.Errorf("uml: create build directory: %w", err)
	}
	if err := configure(ctx, src, buildDir, v); err != nil {
		return nil, err
	}
	logf("uml: building kernel %s (key %s) in %s", v.Name, key, buildDir)
	jobs := fmt.Sprint(runtime.NumCPU())
	if err := makeIn(ctx, src, buildDir, "-j"+jobs, "linux"); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(root, key+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("uml: create output directory in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	// Stripped, the binary is about 7 MB instead of 60.
	if out, err := exec.CommandContext(ctx, "strip", "-o", filepath.Join(tmp, "linux"), filepath.Join(buildDir, "linux")).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("uml: strip %s: %w\n%s", filepath.Join(buildDir, "linux"), err, out)
	}
	if err := copyFile(filepath.Join(buildDir, ".config"), filepath.Join(tmp, "config")); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, filepath.Join(root, key)); err != nil {
		return nil, fmt.Errorf("uml: move the built kernel into %s: %w", root, err)
	}
	k.BuildTime = time.Since(start)
	logf("uml: kernel %s built in %s", v.Name, k.BuildTime.Round(time.Second))
	return k, nil
}

// sourceVersion is the installed version of SourcePackage.
func sourceVersion() (string, error) {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", SourcePackage).Output()
	v := strings.TrimSpace(string(out))
	if err != nil || v == "" {
		return "", fmt.Errorf("uml: %s is not installed (apt-get install --no-install-recommends %s build-essential bc flex bison libelf-dev libssl-dev): %v",
			SourcePackage, SourcePackage, err)
	}
	if _, err := os.Stat(sourceTarball); err != nil {
		return "", fmt.Errorf("uml: %s %s is installed but %s is missing: %w", SourcePackage, v, sourceTarball, err)
	}
	return v, nil
}

// buildKey hashes what decides the binary: the base config, the options
// turned off and the source version.
func buildKey(version string, v Variant) string {
	h := sha256.New()
	io.WriteString(h, version+"\x00")
	h.Write(baseConfig)
	d := slices.Clone(v.Disable)
	slices.Sort(d)
	io.WriteString(h, "\x00"+strings.Join(d, ","))
	if len(v.Enable) > 0 {
		e := slices.Clone(v.Enable)
		slices.Sort(e)
		io.WriteString(h, "\x00+"+strings.Join(e, ","))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// extractSource unpacks the source tarball once per version into
// root/src-<version>; build trees are separate (make O=), so it stays clean.
func extractSource(ctx context.Context, root, version string, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(root, "src-"+version)
	src := filepath.Join(dir, "linux-source-6.1")
	if _, err := os.Stat(filepath.Join(src, "Makefile")); err == nil {
		return src, nil
	}
	unlock, err := buildcache.Lock(filepath.Join(root, "src-"+version+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(src, "Makefile")); err == nil {
		return src, nil
	}
	logf("uml: unpacking %s into %s", sourceTarball, dir)
	tmp, err := os.MkdirTemp(root, "src-"+version+".tmp-")
	if err != nil {
		return "", fmt.Errorf("uml: create source directory in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.CommandContext(ctx, "tar", "-C", tmp, "-xf", sourceTarball).CombinedOutput(); err != nil {
		return "", fmt.Errorf("uml: unpack %s: %w\n%s", sourceTarball, err, out)
	}
	os.RemoveAll(dir) // a partial one from a killed run
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("uml: move unpacked source to %s: %w", dir, err)
	}
	return src, nil
}

// configure writes the variant's .config into buildDir and checks that every
// disabled option really is off (olddefconfig may not turn an option off when
// another selects it).
func configure(ctx context.Context, src, buildDir string, v Variant) error {
	cfg := filepath.Join(buildDir, ".config")
	if err := os.WriteFile(cfg, baseConfig, 0o644); err != nil {
		return fmt.Errorf("uml: write %s: %w", cfg, err)
	}
	for _, set := range []struct {
		flag string
		opts []string
	}{{"-d", v.Disable}, {"-e", v.Enable}} {
		for _, opt := range set.opts {
			if out, err := exec.CommandContext(ctx, filepath.Join(src, "scripts", "config"), "--file", cfg, set.flag, opt).CombinedOutput(); err != nil {
				return fmt.Errorf("uml: scripts/config %s %s: %w\n%s", set.flag, opt, err, out)
			}
		}
	}
	if err := makeIn(ctx, src, buildDir, "olddefconfig"); err != nil {
		return err
	}
	got, err := os.ReadFile(cfg)
	if err != nil {
		return fmt.Errorf("uml: read %s: %w", cfg, err)
	}
	for _, opt := range v.Disable {
		if strings.Contains(string(got), "\nCONFIG_"+opt+"=") {
			return fmt.Errorf("uml: variant %s: CONFIG_%s is still set after olddefconfig (something selects it)", v.Name, opt)
		}
	}
	for _, opt := range v.Enable {
		if !strings.Contains(string(got), "\nCONFIG_"+opt+"=y") {
			return fmt.Errorf("uml: variant %s: CONFIG_%s is not on after olddefconfig (a dependency is off)", v.Name, opt)
		}
	}
	if !strings.Contains(string(got), "\nCONFIG_WIREGUARD=y") {
		return fmt.Errorf("uml: variant %s: CONFIG_WIREGUARD is not built in", v.Name)
	}
	return nil
}

func makeIn(ctx context.Context, src, buildDir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", src, "ARCH=um", "O=" + buildDir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("uml: make %s in %s: %w\n%s", strings.Join(args, " "), buildDir, err, buildcache.Tail(out, 4000))
	}
	return nil
}

func present(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("uml: read %s: %w", from, err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("uml: write %s: %w", to, err)
	}
	return nil
}

var errNotRoot = errors.New("uml: booting a guest with a TAP device needs root")
