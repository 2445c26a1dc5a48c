package routing

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// readOnlyChildEnv names the lab namespace to the re-executed test binary.
const readOnlyChildEnv = "WGMESH_ROUTING_TEST_READONLY_NETNS"

// TestPrivilegedReadOnlyProcSys runs the kernel router as an unprivileged
// Kubernetes pod does: /proc/sys read-only (the test binary is re-executed
// in a private mount namespace that bind-mounts it read-only), netlink
// still usable. Apply must succeed, install routes, rules and the filter
// without a warning (it needs no sysctl), leave every src_valid_mark at 0,
// and a later writable run must find nothing to do.
func TestPrivilegedReadOnlyProcSys(t *testing.T) {
	if ns := os.Getenv(readOnlyChildEnv); ns != "" {
		readOnlyChild(t, ns)
		return
	}
	l := newLab(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPrivilegedReadOnlyProcSys$", "-test.count=1", "-test.v", "-test.timeout=120s")
	cmd.Env = append(os.Environ(), readOnlyChildEnv+"="+l.ns)
	// Go makes the new mount namespace's mounts private before exec, so
	// the child's read-only bind mount stays inside it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	t.Logf("child with read-only /proc/sys:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestPrivilegedReadOnlyProcSys") {
		t.Fatal("the child did not run the read-only test")
	}

	// Read back from an ordinary process in the namespace.
	mark := func(dev string) string {
		return strings.TrimSpace(l.run("ip", "netns", "exec", l.ns, "cat", "/proc/sys/net/ipv4/conf/"+dev+"/src_valid_mark"))
	}
	for dev, want := range map[string]string{"all": "0", "default": "0", "ul0": "0", DefaultInterface: "0", "lo": "0", "wgpeer": "0"} {
		if got := mark(dev); got != want {
			t.Errorf("net.ipv4.conf.%s.src_valid_mark = %s, want %s", dev, got, want)
		}
	}
	if rules := l.ip("rule"); !strings.Contains(rules, "not from all fwmark 0x2000/0x2000 lookup 51820") {
		t.Errorf("ip rule lacks the wgmesh rule:\n%s", rules)
	}
	if out, ok := l.routeGet("10.244.2.5"); !ok || !strings.Contains(out, "dev wgmesh0 table 51820 src 10.244.1.0") {
		t.Errorf("ip route get 10.244.2.5 = %q (ok %v), want the tunnel route", out, ok)
	}
	if out, ok := l.routeGet("10.244.3.5"); ok {
		t.Errorf("ip route get 10.244.3.5 (keyless node, strict) = %q, want unreachable", out)
	}
	if nft := l.run("ip", "netns", "exec", l.ns, "nft", "list", "table", "inet", "wgmesh_wgmesh0"); !strings.Contains(nft, "10.244.2.0/24") {
		t.Errorf("nft list table inet wgmesh_wgmesh0 lacks the strict source:\n%s", nft)
	}

	// A run with a writable /proc/sys finds nothing to do.
	o := DefaultOptions()
	r, k := l.router(o)
	ctx := context.Background()
	w, err := k.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ops := plan(o.Interface, w.Ours, mustTarget(t, o, labDesired(), w)); len(ops) != 0 {
		t.Errorf("after the read-only Apply, a writable run plans %v", ops)
	}
	if err := cleanupTwice(ctx, r); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
}

// readOnlyChild is the re-executed side of TestPrivilegedReadOnlyProcSys.
func readOnlyChild(t *testing.T, ns string) {
	requireRoot(t)
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	parent, err2 := os.Readlink("/proc/" + strconv.Itoa(os.Getppid()) + "/ns/mnt")
	if err := errors.Join(err1, err2); err != nil || self == parent {
		t.Fatalf("not in a mount namespace of its own (%s, parent %s, %v): refusing to make the host's /proc/sys read-only", self, parent, err)
	}
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount /proc/sys: %v", err)
	}
	if err := unix.Mount("", "/proc/sys", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount /proc/sys read-only: %v", err)
	}
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("open namespace %s: %v", ns, err)
	}
	defer h.Close()
	var logs bytes.Buffer
	o := DefaultOptions()
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	k, err := newKernel(o, h)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	// The test means something only if a write really fails.
	const probe = "/proc/sys/net/ipv4/conf/all/src_valid_mark"
	if err := unix.Access(probe, unix.W_OK); !errors.Is(err, unix.EROFS) {
		t.Fatalf("access(%s, W_OK): err = %v, want EROFS", probe, err)
	}
	r := newRouter(o, k)
	ctx := context.Background()
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply with read-only /proc/sys: %v", err)
	}
	t.Logf("router log:\n%s", logs.String())
	if w := r.Status().Warnings; len(w) != 0 {
		t.Errorf("Status().Warnings = %q, want none", w)
	}
	got, err := k.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fake := NewFake(o)
	fake.SetLink("eth0", 1400)
	if err := fake.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("fake Apply: %v", err)
	}
	want := fake.sys.observe(o).Ours.render(o.Interface)
	t.Logf("kernel state:\n%s", got.Ours.render(o.Interface))
	if diff := cmp.Diff(want, got.Ours.render(o.Interface)); diff != "" {
		t.Errorf("kernel state differs from the fake's (-fake +kernel):\n%s", diff)
	}
	if ops := plan(o.Interface, got.Ours, mustTarget(t, o, labDesired(), got)); len(ops) != 0 {
		t.Errorf("after Apply, plan still has %v", ops)
	}
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Errorf("second Apply: %v", err)
	}
}
