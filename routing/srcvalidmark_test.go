package routing

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	allMarkOff  = "sysctl -w net.ipv4.conf.all.src_valid_mark=0\n"
	allMarkOn   = "sysctl -w net.ipv4.conf.all.src_valid_mark=1\n"
	eth0Mark    = "sysctl -w net.ipv4.conf.eth0.src_valid_mark=1\n"
	tunnelMark  = "sysctl -w net.ipv4.conf.wgmesh0.src_valid_mark=1\n"
	failAllMark = "net.ipv4.conf.all.src_valid_mark"
)

// logTo returns options logging into buf.
func logTo(buf *bytes.Buffer) Options {
	o := DefaultOptions()
	o.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return o
}

// assertSettled fails when another Apply of d on f would still change
// something.
func assertSettled(t *testing.T, f *Fake, o Options) {
	t.Helper()
	w := f.sys.observe(o)
	want, _ := o.target(dual(), w)
	if ops := plan(o.Interface, w.Ours, want); len(ops) != 0 {
		t.Errorf("after Apply, plan still has ops: %v", ops)
	}
}

// TestSrcValidMarkReadOnly: with /proc/sys read-only (a Kubernetes
// container with CAP_NET_ADMIN only) Apply succeeds, sets src_valid_mark on
// the underlay and the tunnel interface instead, does not retry once they
// are set, sets it again on a recreated tunnel interface, and Cleanup
// leaves the values.
func TestSrcValidMarkReadOnly(t *testing.T) {
	var logs bytes.Buffer
	o := logTo(&logs)
	f := newTestFake(o)
	f.Fail(failAllMark, unix.EROFS)
	ctx := context.Background()
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatalf("Apply with read-only /proc/sys: %v", err)
	}
	got := f.Render()
	golden(t, "src-valid-mark-read-only", got)
	for _, line := range []string{allMarkOff, eth0Mark, tunnelMark,
		"ip route add 10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57 src 10.244.1.0\n",
		"ip rule add pref 99 not fwmark 0x20000/0x20000 lookup 51820 proto 0x57\n",
		"nft add element inet wgmesh_wgmesh0 strict4 { 10.244.2.0/24, 10.244.4.0/24 }\n",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("rendered state lacks %q:\n%s", line, got)
		}
	}
	if w := f.Status().Warnings; len(w) != 0 {
		t.Errorf("Status().Warnings = %q, want none: the per-interface values are in place", w)
	}
	if !strings.Contains(logs.String(), "set per interface instead") {
		t.Errorf("the fallback was not logged:\n%s", logs.String())
	}
	assertSettled(t, f, o)

	// The device restarts: the new interface starts with 0.
	f.RemoveLink(DefaultInterface)
	f.SetLink(DefaultInterface, 1420)
	f.sys.link(DefaultInterface).Addrs = []netip.Prefix{pfx("fe80::1/64")}
	if strings.Contains(f.Render(), tunnelMark) {
		t.Fatal("a recreated interface kept its old src_valid_mark")
	}
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatalf("Apply after the interface was recreated: %v", err)
	}
	if diff := cmp.Diff(got, f.Render()); diff != "" {
		t.Errorf("after the interface was recreated (-before +after):\n%s", diff)
	}

	if err := f.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	after := f.Render()
	if !strings.Contains(after, eth0Mark) || !strings.Contains(after, tunnelMark) {
		t.Errorf("Cleanup reset the per-interface src_valid_mark:\n%s", after)
	}
}

// TestSrcValidMarkUnsettable: when src_valid_mark can be set neither
// globally nor per interface, Apply still succeeds with routes, rules and
// the filter in place, Status carries one warning naming what failed, it is
// logged once however often Apply runs, and it clears once the value can be
// written.
func TestSrcValidMarkUnsettable(t *testing.T) {
	var logs bytes.Buffer
	o := logTo(&logs)
	f := newTestFake(o)
	f.Fail("src_valid_mark", unix.EPERM)
	ctx := context.Background()
	for i := range 3 {
		if err := f.Apply(ctx, dual()); err != nil {
			t.Fatalf("Apply %d: %v", i, err)
		}
	}
	got := f.Render()
	if !strings.Contains(got, allMarkOff) || strings.Contains(got, eth0Mark) || strings.Contains(got, tunnelMark) {
		t.Errorf("src_valid_mark set although every write fails:\n%s", got)
	}
	if l := f.Lookup(addr("10.244.2.5"), 0); !strings.Contains(l, "dev wgmesh0") {
		t.Errorf("Lookup(10.244.2.5) = %q, want the tunnel route", l)
	}
	if !f.Inject(addr("10.244.2.5"), "eth0") {
		t.Error("the strict ingress filter is missing")
	}
	w := f.Status().Warnings
	if len(w) != 1 {
		t.Fatalf("Status().Warnings = %q, want one", w)
	}
	for _, s := range []string{"src_valid_mark not set", "net.ipv4.conf.all.src_valid_mark=1", "net.ipv4.conf.eth0.src_valid_mark=1 (rtnetlink)",
		"net.ipv4.conf.wgmesh0.src_valid_mark=1 (rtnetlink)", unix.EPERM.Error()} {
		if !strings.Contains(w[0], s) {
			t.Errorf("warning %q lacks %q", w[0], s)
		}
	}
	if n := strings.Count(logs.String(), "level=WARN msg=\"routing is applied, with a warning\""); n != 1 {
		t.Errorf("the warning was logged %d times over 3 Applies, want 1:\n%s", n, logs.String())
	}

	f.Fail("src_valid_mark", nil)
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.Render(), allMarkOn) {
		t.Errorf("all.src_valid_mark not set once writable:\n%s", f.Render())
	}
	if w := f.Status().Warnings; len(w) != 0 {
		t.Errorf("Status().Warnings = %q after the fix, want none", w)
	}
	assertSettled(t, f, o)
}

// TestSrcValidMarkInterfaces: the per-interface fallback follows the
// underlay (UnderlayAddr's interface, else the default route's) and skips
// an absent tunnel interface.
func TestSrcValidMarkInterfaces(t *testing.T) {
	ctx := context.Background()
	o := DefaultOptions()
	o.UnderlayAddr = addr("198.18.5.1")
	f := newTestFake(o)
	f.SetLink("eth1", 9000)
	f.sys.link("eth1").Addrs = append(f.sys.link("eth1").Addrs, pfx("198.18.5.1/24"))
	f.RemoveLink(DefaultInterface)
	f.Fail(failAllMark, unix.EACCES)
	if err := f.Apply(ctx, dual()); err == nil || !strings.Contains(err.Error(), "interface wgmesh0 does not exist") {
		t.Fatalf("Apply without interface: err = %v, want only the missing interface", err)
	} else if strings.Contains(err.Error(), "src_valid_mark") {
		t.Errorf("Apply failed over src_valid_mark: %v", err)
	}
	var marked []string
	for _, l := range strings.Split(f.Render(), "\n") {
		if strings.HasSuffix(l, "src_valid_mark=1") {
			marked = append(marked, l)
		}
	}
	if want := []string{"sysctl -w net.ipv4.conf.eth1.src_valid_mark=1"}; !slices.Equal(marked, want) {
		t.Errorf("src_valid_mark set on %q, want %q", marked, want)
	}
}

// inetConfMsg builds an RTM_NEWLINK body whose IFLA_INET_CONF holds vals.
func inetConfMsg(vals []uint32) []byte {
	conf := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.NativeEndian.PutUint32(conf[4*i:], v)
	}
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, []byte{0, 0, 0, 0})
	spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, conf)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC).Serialize()
	msg = append(msg, nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(1500)).Serialize()...)
	return append(msg, spec.Serialize()...)
}

func TestInetConf(t *testing.T) {
	vals := make([]uint32, 33)
	vals[ipv4DevconfSrcVmark-1] = 1
	vals[ipv4DevconfSrcVmark] = 7
	if v, ok := inetConf(inetConfMsg(vals), ipv4DevconfSrcVmark); !ok || v != 1 {
		t.Errorf("inetConf = %d, %v; want 1, true", v, ok)
	}
	if v, ok := inetConf(inetConfMsg(vals), ipv4DevconfSrcVmark+1); !ok || v != 7 {
		t.Errorf("inetConf(next) = %d, %v; want 7, true", v, ok)
	}
	if _, ok := inetConf(inetConfMsg(vals[:ipv4DevconfSrcVmark-1]), ipv4DevconfSrcVmark); ok {
		t.Error("inetConf found a value past the end of a short array")
	}
	if _, ok := inetConf(nl.NewIfInfomsg(unix.AF_UNSPEC).Serialize(), ipv4DevconfSrcVmark); ok {
		t.Error("inetConf found a value in a message without IFLA_AF_SPEC")
	}
}

// FuzzInetConf: arbitrary kernel answers never panic, and a value found is
// the one at its place in the array.
func FuzzInetConf(f *testing.F) {
	vals := make([]uint32, 33)
	vals[ipv4DevconfSrcVmark-1] = 1
	f.Add(inetConfMsg(vals), ipv4DevconfSrcVmark)
	f.Add(inetConfMsg(vals[:3]), ipv4DevconfSrcVmark)
	f.Add(inetConfMsg(nil), 1)
	f.Add([]byte{}, 0)
	f.Add(nl.NewIfInfomsg(unix.AF_INET).Serialize(), -1)
	f.Fuzz(func(t *testing.T, msg []byte, id int) {
		v, ok := inetConf(msg, id)
		if !ok && v != 0 {
			t.Errorf("inetConf = %d, false; want 0 when nothing is found", v)
		}
	})
}
