package routing

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

// Foreign entries every test host starts with. None may ever change.
var (
	foreignRule  = rule{Family: v4, Priority: 100, From: pfx("10.0.0.0/8"), Table: 200, Protocol: unix.RTPROT_BOOT}
	foreignRoute = []route{
		{Table: 200, Dst: pfx("10.0.0.0/8"), Type: typeUnicast, Gw: addr("198.18.0.254"), Dev: "eth0", Protocol: unix.RTPROT_BOOT},
		// Someone else's route inside wgmesh's own table.
		{Table: DefaultTable, Dst: pfx("10.99.0.0/16"), Type: typeUnicast, Gw: addr("198.18.0.254"), Dev: "eth0", Protocol: unix.RTPROT_STATIC},
		// A CNI's route in main.
		{Table: unix.RT_TABLE_MAIN, Dst: pfx("10.244.2.0/24"), Type: typeUnicast, Gw: addr("198.18.0.2"), Dev: "eth0", Protocol: 0x50},
	}
	foreignNFT = []string{
		"nft add table inet filter",
		"nft add chain inet filter input { type filter hook input priority filter; }",
	}
	// Another wgmesh instance on the same host (interface wgmesh1, tables
	// 51830 and 51831): same route protocol, its own tables, rules and nft
	// table.
	otherInstance = Options{Interface: "wgmesh1", Table: 51830, HostTable: 51831, Priority: 97, FwMark: 0x40000, IPv4: true, IPv6: true}
	otherRules    = []rule{
		{Family: v4, Priority: 97, Invert: true, Mark: 0x40000, Mask: 0x40000, Table: 51830, Protocol: RouteProtocol},
		{Family: v6, Priority: 97, Invert: true, Mark: 0x40000, Mask: 0x40000, Table: 51830, Protocol: RouteProtocol},
	}
	otherRoutes = []route{
		{Table: 51830, Dst: pfx("10.245.1.0/24"), Type: typeThrow, Protocol: RouteProtocol},
		{Table: 51830, Dst: pfx("10.245.2.0/24"), Type: typeUnreachable, Protocol: RouteProtocol},
		{Table: 51830, Dst: pfx("fd00:10:245:2::/64"), Type: typeUnreachable, Protocol: RouteProtocol, Metric: 1024},
	}
)

// otherFilter is the other instance's nftables table.
func otherFilter() *filter {
	remote := []netip.Prefix{pfx("10.245.2.0/24")}
	return otherInstance.wantFilter(mesh.Desired{StrictSources: remote, EncryptOnly: remote})
}

// addForeign puts the foreign entries, including another wgmesh
// instance's, on h.
func addForeign(h *fakeHost) {
	h.rules = append(h.rules, foreignRule)
	h.rules = append(h.rules, otherRules...)
	h.addRoutes(foreignRoute...)
	h.addRoutes(otherRoutes...)
	h.foreignNFT = slices.Clone(foreignNFT)
	h.filters[otherInstance.nftTableName()] = otherFilter()
}

// testHost is a fresh fake host with foreign entries.
func testHost(iface string) *fakeHost {
	h := newFakeHost(iface)
	addForeign(h)
	return h
}

func foreignLines() []string {
	out := []string{foreignRule.String()}
	for _, r := range otherRules {
		out = append(out, r.String())
	}
	for _, r := range slices.Concat(foreignRoute, otherRoutes) {
		out = append(out, r.String())
	}
	out = append(out, otherFilter().lines()...)
	return append(out, foreignNFT...)
}

type config struct {
	name string
	o    Options
	d    mesh.Desired
}

func tunnel(dst, node string) mesh.Route {
	return mesh.Route{Dst: pfx(dst), Kind: mesh.ViaTunnel, Node: node}
}
func throw(dst, node string) mesh.Route {
	return mesh.Route{Dst: pfx(dst), Kind: mesh.Throw, Node: node}
}
func unreachable(dst, node string) mesh.Route {
	return mesh.Route{Dst: pfx(dst), Kind: mesh.Unreachable, Node: node}
}

// dual is node-1's view of a mesh: node-2 and node-4 encrypted.
func dual() mesh.Desired {
	return mesh.Desired{
		Routes: []mesh.Route{
			throw("10.244.1.0/24", "node-1"), tunnel("10.244.2.0/24", "node-2"), tunnel("10.244.4.0/24", "node-4"),
			throw("fd00:10:244:1::/64", "node-1"), tunnel("fd00:10:244:2::/64", "node-2"),
		},
		Addresses:     []netip.Prefix{pfx("10.244.1.0/32"), pfx("fd00:10:244:1::/128")},
		StrictSources: []netip.Prefix{pfx("10.244.2.0/24"), pfx("10.244.4.0/24"), pfx("fd00:10:244:2::/64")},
		EncryptOnly:   []netip.Prefix{pfx("10.244.2.0/24"), pfx("10.244.4.0/24"), pfx("fd00:10:244:2::/64")},
	}
}

// hostRoutes is dual() with node-1's pod sources and the peers' host IPs
// in the host table, as Derive makes them without host encryption: the
// endpoints 198.18.0.2 and 198.18.0.4 are host routes too.
func hostRoutes() mesh.Desired {
	d := dual()
	d.PodSources = []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}
	d.HostRoutes = []mesh.Route{
		tunnel("198.18.0.2/32", "node-2"), tunnel("198.18.0.4/32", "node-4"), tunnel("198.18.0.12/32", "node-2"),
		tunnel("2001:db8::2/128", "node-2"),
	}
	return d
}

// clusterRange is node-1's view as Derive makes it with the cluster's pod
// ranges stated and only node-2 known: the ranges are unreachable around the
// own and node-2's CIDRs, and the egress guard holds the whole range but the
// own CIDRs and the endpoints.
func clusterRange() mesh.Desired {
	key := func(b byte) (k mesh.Key) {
		for i := range k {
			k[i] = b
		}
		return k
	}
	self := mesh.Node{Name: "node-1", PublicKey: key(1), Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
		PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}}
	peer := mesh.Node{Name: "node-2", PublicKey: key(2), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"),
		PodCIDRs: []netip.Prefix{pfx("10.244.2.0/24"), pfx("fd00:10:244:2::/64")}}
	return mesh.Derive(self, []mesh.Node{self, peer}, mesh.DeriveOptions{IPv4: true, IPv6: true,
		ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")}})
}

func with(d mesh.Desired, routes ...mesh.Route) mesh.Desired {
	d.Routes = append(slices.Clone(d.Routes), routes...)
	return d
}

func opts(f func(*Options)) Options {
	o := DefaultOptions()
	if f != nil {
		f(&o)
	}
	return o
}

// configs are the golden configurations. All share the interface name, so
// any may follow any other on the same host (replay test).
func configs() []config {
	many := mesh.Desired{Addresses: []netip.Prefix{pfx("10.244.1.0/32")}}
	for n := 2; n < 42; n++ {
		many.Routes = append(many.Routes, tunnel(fmt.Sprintf("10.244.%d.0/24", n), fmt.Sprintf("node-%d", n)))
		many.StrictSources = append(many.StrictSources, pfx(fmt.Sprintf("10.244.%d.0/24", n)))
		many.EncryptOnly = append(many.EncryptOnly, pfx(fmt.Sprintf("10.244.%d.0/24", n)))
	}
	noAddr := dual()
	noAddr.Addresses = nil
	fixed := dual()
	fixed.Addresses = []netip.Prefix{pfx("10.250.0.1/32"), pfx("fd00:10:250::1/128")}
	merge := dual()
	merge.StrictSources = []netip.Prefix{
		pfx("10.244.2.0/24"), pfx("10.244.3.0/24"), pfx("10.244.8.0/21"), pfx("10.244.9.0/24"),
		pfx("10.244.20.0/24"), pfx("fd00:10:244:2::/64"), pfx("fd00:10:244:3::/64"),
	}
	merge.EncryptOnly = merge.StrictSources
	return []config{
		{"dual", opts(nil), dual()},
		{"ipv4-only", opts(func(o *Options) { o.IPv6 = false }), dual()},
		{"ipv6-only", opts(func(o *Options) { o.IPv4 = false }), dual()},
		{"strict-keyless", opts(nil), with(dual(), unreachable("10.244.3.0/24", "node-3"), unreachable("fd00:10:244:3::/64", "node-3"))},
		{"unencrypted-keyless", opts(nil), with(dual(), throw("10.244.3.0/24", "node-3"), throw("fd00:10:244:3::/64", "node-3"))},
		{"unmanaged-nodes", opts(nil), with(dual(), throw("10.244.5.0/24", "win-1"), throw("10.244.6.0/24", "win-2"))},
		{"host-encryption", opts(nil), with(dual(),
			tunnel("198.18.0.12/32", "node-2"), tunnel("198.18.0.14/32", "node-4"), tunnel("2001:db8::12/128", "node-2"),
			throw("198.18.0.2/32", "node-2"), throw("198.18.0.4/32", "node-4"), throw("198.18.0.100/32", ""))},
		{"tunnel-address-none", opts(nil), noAddr},
		{"tunnel-address-fixed", opts(nil), fixed},
		{"mtu-fixed", opts(func(o *Options) { o.MTU = 1380 }), dual()},
		{"mtu-auto-ipv6-underlay", opts(func(o *Options) { o.UnderlayAddr = addr("2001:db8::1") }), dual()},
		{"mtu-auto-underlay-addr", opts(func(o *Options) { o.UnderlayAddr = addr("198.18.0.1") }), dual()},
		{"ingress-filter-off", opts(func(o *Options) { o.DisableIngressFilter = true }), dual()},
		{"custom-table-priority-mark", opts(func(o *Options) { o.Table, o.Priority, o.FwMark = 4242, 50, 0x800000 }), dual()},
		{"empty", opts(nil), mesh.Desired{}},
		{"strict-sources-merge", opts(nil), merge},
		{"many-nodes", opts(func(o *Options) { o.IPv6 = false }), many},
		{"host-routes", opts(nil), hostRoutes()},
		{"host-routes-ipv4-only", opts(func(o *Options) { o.IPv6 = false }), hostRoutes()},
		{"host-routes-custom-tables", opts(func(o *Options) { o.Table, o.HostTable, o.Priority = 4243, 4242, 50 }), hostRoutes()},
		{"cluster-range", opts(nil), clusterRange()},
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s differs from %s (-want +got):\n%s", name, path, diff)
	}
}

func assertForeign(t *testing.T, rendered string) {
	t.Helper()
	for _, l := range foreignLines() {
		if !strings.Contains(rendered, l+"\n") {
			t.Errorf("foreign entry %q is gone:\n%s", l, rendered)
		}
	}
}

// applyOn applies c on host h through a router with c's options.
func applyOn(t *testing.T, h *fakeHost, c config) {
	t.Helper()
	r := newRouter(c.o, fakeView{h, c.o})
	if err := r.Apply(context.Background(), c.d); err != nil {
		t.Fatalf("%s: Apply: %v", c.name, err)
	}
	// Idempotence: nothing left to do.
	w := h.observe(c.o)
	want, _ := c.o.target(c.d, w)
	if ops := plan(c.o.Interface, w.Ours, want); len(ops) != 0 {
		t.Errorf("%s: after Apply, plan still has ops: %v", c.name, ops)
	}
}

func TestGolden(t *testing.T) {
	for _, c := range configs() {
		t.Run(c.name, func(t *testing.T) {
			h := testHost(c.o.Interface)
			applyOn(t, h, c)
			got := h.render()
			golden(t, c.name, got)
			assertForeign(t, got)
		})
	}
}

// TestReplay applies the configurations in random orders on one host: after
// each Apply the host must look exactly like the golden of that
// configuration, so the end state depends only on the last one.
func TestReplay(t *testing.T) {
	if *update {
		t.Skip("goldens are being rewritten")
	}
	cs := configs()
	for seed := uint64(1); seed <= 5; seed++ {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		h := testHost(DefaultInterface)
		var order []config
		for range 3 {
			order = append(order, cs...)
		}
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for i, c := range order {
			if i > 0 && order[i-1].o.Table != c.o.Table {
				// Another table is another instance's: the operator
				// removes the previous run's entries with its options.
				if err := newRouter(order[i-1].o, fakeView{h, order[i-1].o}).Cleanup(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			applyOn(t, h, c)
			want, err := os.ReadFile(filepath.Join("testdata", c.name+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), h.render()); diff != "" {
				prev := "fresh host"
				if i > 0 {
					prev = order[i-1].name
				}
				t.Fatalf("seed %d step %d: %s after %s differs from its golden (-want +got):\n%s", seed, i, c.name, prev, diff)
			}
		}
	}
}

func TestCustomInterface(t *testing.T) {
	c := config{"custom-interface", opts(func(o *Options) { o.Interface = "wg-test" }), dual()}
	h := testHost(c.o.Interface)
	applyOn(t, h, c)
	golden(t, c.name, h.render())
}

// TestCleanup: Cleanup after any configuration restores the fresh host
// apart from the link MTU, which it leaves to the device.
func TestCleanup(t *testing.T) {
	fresh := testHost(DefaultInterface).render()
	for _, c := range configs() {
		h := testHost(DefaultInterface)
		applyOn(t, h, c)
		r := newRouter(c.o, fakeView{h, c.o})
		for range 2 {
			if err := r.Cleanup(context.Background()); err != nil {
				t.Fatalf("%s: Cleanup: %v", c.name, err)
			}
		}
		got := h.render()
		if l := h.link(DefaultInterface); l != nil {
			got = strings.Replace(got, fmt.Sprintf("dev %s mtu %d", DefaultInterface, l.MTU), "dev "+DefaultInterface+" mtu 1420", 1)
		}
		if diff := cmp.Diff(fresh, got); diff != "" {
			t.Errorf("%s: Cleanup left (-fresh +after):\n%s", c.name, diff)
		}
	}
}

// TestRepair deletes entries by hand; the next Apply restores the golden.
func TestRepair(t *testing.T) {
	f := newTestFake(opts(nil))
	ctx := context.Background()
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	want := f.Render()
	for _, line := range []string{
		"ip route add 10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57 src 10.244.1.0",
		"ip -6 rule add pref 99 not fwmark 0x2000/0x2000 lookup 51820 proto 0x57",
		"ip address add 10.244.1.0/32 dev wgmesh0",
		"nft add element inet wgmesh_wgmesh0 strict4 { 10.244.2.0/24, 10.244.4.0/24 }",
		`nft add rule inet wgmesh_wgmesh0 prerouting meta nfproto ipv6 iifname != "wgmesh0" ip6 saddr @strict6 counter name "strict_drops" drop`,
	} {
		if !f.Delete(line) {
			t.Fatalf("Delete(%q) matched nothing in:\n%s", line, want)
		}
	}
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, f.Render()); diff != "" {
		t.Errorf("Apply did not repair (-want +got):\n%s", diff)
	}
	if !f.Delete("nft add table inet wgmesh_wgmesh0") {
		t.Fatal("cannot delete the nft table")
	}
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, f.Render()); diff != "" {
		t.Errorf("Apply did not recreate the nft table (-want +got):\n%s", diff)
	}
}

func newTestFake(o Options) *Fake {
	f := NewFake(o)
	addForeign(f.sys)
	return f
}

// TestInterfaceAbsent: without the interface the tunnel routes are
// unreachable (fail closed) and Apply says why; once it appears they are
// tunnel routes again.
func TestInterfaceAbsent(t *testing.T) {
	f := newTestFake(opts(nil))
	f.RemoveLink(DefaultInterface)
	ctx := context.Background()
	err := f.Apply(ctx, dual())
	if err == nil || !strings.Contains(err.Error(), "interface wgmesh0 does not exist") {
		t.Errorf("Apply without interface: err = %v, want one naming the interface", err)
	}
	golden(t, "interface-absent", f.Render())
	if got := f.Lookup(addr("10.244.2.5"), 0); !strings.HasPrefix(got, "unreachable 10.244.2.0/24") {
		t.Errorf("Lookup(10.244.2.5) without interface = %q, want the unreachable route", got)
	}
	f.SetLink(DefaultInterface, 1420)
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if got := f.Lookup(addr("10.244.2.5"), 0); !strings.Contains(got, "dev wgmesh0") || !strings.Contains(got, "src 10.244.1.0") {
		t.Errorf("Lookup(10.244.2.5) = %q, want via wgmesh0 from the tunnel address", got)
	}
	if st := f.Status(); st.LinkMTU != 1440 || st.PodMTU != 1440 {
		t.Errorf("Status = %+v, want MTU 1440", st)
	}
}

func TestUnderlayUnknown(t *testing.T) {
	f := newTestFake(opts(nil))
	maps.DeleteFunc(f.sys.routes, func(_ routeKey, r route) bool { return r.Dst.Bits() == 0 })
	err := f.Apply(context.Background(), dual())
	if err == nil || !strings.Contains(err.Error(), "cannot find the underlay") {
		t.Errorf("err = %v, want one about the underlay", err)
	}
	if st := f.Status(); st.LinkMTU != 1420 {
		t.Errorf("LinkMTU = %d, want the untouched 1420", st.LinkMTU)
	}
	if !strings.Contains(f.Render(), "ip route add 10.244.2.0/24 dev wgmesh0 table 51820") {
		t.Errorf("routes missing although only the MTU was undeterminable:\n%s", f.Render())
	}
}

// TestFailures: one failing op does not stop the others; the error names
// it and wraps the cause; a tunnel route that cannot be installed falls
// back first to no preferred source, then to unreachable.
func TestFailures(t *testing.T) {
	ctx := context.Background()
	errBoom := errors.New("boom")

	f := newTestFake(opts(nil))
	f.Fail("route replace 10.244.2.0/24", errBoom)
	err := f.Apply(ctx, dual())
	if !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "ip route replace 10.244.2.0/24 dev wgmesh0 table 51820") {
		t.Errorf("err = %v, want the failed route named and boom wrapped", err)
	}
	if got := f.Lookup(addr("10.244.2.5"), 0); got != "unreachable 10.244.2.0/24 table 51820 proto 0x57" {
		t.Errorf("Lookup(10.244.2.5) = %q, want the unreachable fallback", got)
	}
	if got := f.Lookup(addr("10.244.4.5"), 0); !strings.Contains(got, "dev wgmesh0") {
		t.Errorf("the other tunnel route is missing: %q", got)
	}

	f = newTestFake(opts(nil))
	f.Fail("dev wgmesh0 table 51820 proto 0x57 src 10.244.1.0", errBoom)
	err = f.Apply(ctx, dual())
	if !errors.Is(err, errBoom) {
		t.Errorf("err = %v, want boom", err)
	}
	if got := f.Lookup(addr("10.244.2.5"), 0); got != "10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57" {
		t.Errorf("Lookup(10.244.2.5) = %q, want the tunnel route without source", got)
	}

	// When even the fallback fails, the error says so.
	f = newTestFake(opts(nil))
	f.Fail("10.244.2.0/24", errBoom)
	err = f.Apply(ctx, dual())
	if !strings.Contains(err.Error(), "ip route replace unreachable 10.244.2.0/24 table 51820 proto 0x57 (fail-closed fallback): boom") {
		t.Errorf("err = %v, want the failed fallback named", err)
	}
	if got := f.Lookup(addr("10.244.2.5"), DefaultFwMark); !strings.HasPrefix(got, "10.244.2.0/24 via 198.18.0.2 dev eth0 table main") {
		t.Errorf("marked Lookup(10.244.2.5) = %q, want the main table", got)
	}
	f.Fail("10.244.2.0/24", nil)
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if got := f.Lookup(addr("10.244.2.5"), 0); !strings.Contains(got, "dev wgmesh0") {
		t.Errorf("after the failure cleared, Lookup = %q", got)
	}
}

func TestLookupAndInject(t *testing.T) {
	f := newTestFake(opts(nil))
	if err := f.Apply(context.Background(), with(dual(), unreachable("10.244.3.0/24", "node-3"))); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst  string
		mark uint32
		want string
	}{
		{"10.244.2.5", 0, "10.244.2.0/24 dev wgmesh0"},
		{"10.244.2.5", DefaultFwMark | 0x4000, "10.244.2.0/24 via 198.18.0.2 dev eth0 table main"},
		{"10.244.2.5", 0x4000, "10.244.2.0/24 dev wgmesh0"},
		{"10.244.1.5", 0, "0.0.0.0/0 via 198.18.0.254 dev eth0 table main"},
		{"10.244.3.5", 0, "unreachable 10.244.3.0/24"},
		{"fd00:10:244:2::5", 0, "fd00:10:244:2::/64 dev wgmesh0"},
		{"10.99.1.1", 0, "10.99.0.0/16 via 198.18.0.254 dev eth0 table 51820"},
	} {
		if got := f.Lookup(addr(c.dst), c.mark); !strings.HasPrefix(got, c.want) {
			t.Errorf("Lookup(%s, %#x) = %q, want prefix %q", c.dst, c.mark, got, c.want)
		}
	}
	for _, c := range []struct {
		src, iif string
		drop     bool
	}{
		{"10.244.2.5", "eth0", true},
		{"fd00:10:244:2::5", "eth0", true},
		{"10.244.4.200", "eth1", true},
		{"10.244.2.5", "wgmesh0", false},
		{"10.244.1.5", "eth0", false},
		{"10.244.3.5", "eth0", false},
		{"198.18.0.2", "eth0", false},
	} {
		if got := f.Inject(addr(c.src), c.iif); got != c.drop {
			t.Errorf("Inject(%s, %s) = %v, want %v", c.src, c.iif, got, c.drop)
		}
	}
	if got := f.Status().IngressDropped; got != 3 {
		t.Errorf("IngressDropped = %d, want 3", got)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, f := range []func(*Options){
		func(o *Options) { o.Table = 254 },
		func(o *Options) { o.Table = 0 },
		func(o *Options) { o.Priority = 0 },
		func(o *Options) { o.Priority = 32766 },
		func(o *Options) { o.FwMark = 0 },
		func(o *Options) { o.IPv4, o.IPv6 = false, false },
		func(o *Options) { o.Interface = "" },
		func(o *Options) { o.Interface = "sixteen-chars-xx" },
		func(o *Options) { o.MTU = 100 },
	} {
		o := opts(f)
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted invalid options", o)
		}
		if err := NewFake(o).Apply(context.Background(), dual()); err == nil {
			t.Errorf("Fake with %+v applied invalid options", o)
		}
	}
	if err := DefaultOptions().Validate(); err != nil {
		t.Errorf("DefaultOptions invalid: %v", err)
	}
}

func TestAutoMTU(t *testing.T) {
	for _, c := range []struct {
		underlay int
		v6       bool
		want     int
	}{{1500, false, 1440}, {1500, true, 1420}, {9001, false, 8941}, {1450, true, 1370}} {
		if got := AutoMTU(c.underlay, c.v6); got != c.want {
			t.Errorf("AutoMTU(%d, %v) = %d, want %d", c.underlay, c.v6, got, c.want)
		}
	}
}

// TestPlanOrder: every add and replace precedes every delete.
func TestPlanOrder(t *testing.T) {
	h := testHost(DefaultInterface)
	applyOn(t, h, configs()[0])
	// Same table (another table would be another instance's), another
	// priority, one node less, another address.
	o := opts(func(o *Options) { o.Priority = 98 })
	d := dual()
	d.Routes = slices.DeleteFunc(slices.Clone(d.Routes), func(r mesh.Route) bool { return r.Node == "node-4" })
	d.Addresses = []netip.Prefix{pfx("10.250.0.1/32")}
	w := h.observe(o)
	want, _ := o.target(d, w)
	ops := plan(o.Interface, w.Ours, want)
	deleting := false
	var kinds []opKind
	for _, op := range ops {
		del := op.kind >= opDelRule
		if deleting && !del {
			t.Errorf("%s comes after a delete", op)
		}
		deleting = deleting || del
		kinds = append(kinds, op.kind)
	}
	for _, k := range []opKind{opAddAddr, opReplaceRoute, opAddRule, opDelRule, opDelRoute, opDelAddr} {
		if !slices.Contains(kinds, k) {
			t.Errorf("plan lacks an op of kind %d: %v", k, ops)
		}
	}
}

// TestPlanLastIPv4Address: removing the interface's last IPv4 address makes
// the kernel flush the IPv4 routes through it, so plan parks the tunnel
// routes as unreachable around the removal instead of letting them vanish.
func TestPlanLastIPv4Address(t *testing.T) {
	h := testHost(DefaultInterface)
	applyOn(t, h, configs()[0])
	d := dual()
	d.Addresses = nil
	o := DefaultOptions()
	w := h.observe(o)
	want, _ := o.target(d, w)
	var got []string
	for _, op := range plan(o.Interface, w.Ours, want) {
		if strings.Contains(op.String(), "10.244.2.0/24") || strings.Contains(op.String(), "address del 10.244.1.0/32") {
			got = append(got, op.String())
		}
	}
	wantOps := []string{
		"ip route replace unreachable 10.244.2.0/24 table 51820 proto 0x57",
		"ip address del 10.244.1.0/32 dev wgmesh0",
		"ip route replace 10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57",
	}
	if diff := cmp.Diff(wantOps, got); diff != "" {
		t.Errorf("ops (-want +got):\n%s", diff)
	}
	applyOn(t, h, config{"no-address", o, d})
	if !strings.Contains(h.render(), "ip route add 10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57\n") {
		t.Errorf("tunnel route missing after the address went:\n%s", h.render())
	}
}

// bigMesh is node-1's view of a dual-stack mesh of n nodes.
func bigMesh(n int) mesh.Desired {
	d := mesh.Desired{Addresses: []netip.Prefix{pfx("10.244.1.0/32"), pfx("fd00:10:244:1::/128")}}
	for i := 2; i <= n; i++ {
		// /25s and every other /64, so that no two CIDRs are adjacent and
		// the sets hold one range per node.
		v4p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + i>>8), byte(i), 0}), 25)
		v6p := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 2, 0x44, byte(i >> 7), byte(i << 1)}), 64)
		node := fmt.Sprintf("node-%d", i)
		d.Routes = append(d.Routes, mesh.Route{Dst: v4p, Kind: mesh.ViaTunnel, Node: node}, mesh.Route{Dst: v6p, Kind: mesh.ViaTunnel, Node: node})
		d.StrictSources = append(d.StrictSources, v4p, v6p)
		d.EncryptOnly = append(d.EncryptOnly, v4p, v6p)
	}
	return d
}

// BenchmarkResync is the periodic resync of a 5000-node mesh where nothing
// changed: observe, target and an empty plan.
func BenchmarkResync(b *testing.B) {
	f := NewFake(DefaultOptions())
	d := bigMesh(5000)
	ctx := context.Background()
	if err := f.Apply(ctx, d); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := f.Apply(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstApply programs a 5000-node mesh on a fresh host.
func BenchmarkFirstApply(b *testing.B) {
	d := bigMesh(5000)
	ctx := context.Background()
	for range b.N {
		f := NewFake(DefaultOptions())
		if err := f.Apply(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFakeSortedView checks the Fake's sorted view of its routes, which it
// updates in place for single changes, against a fresh sort after every
// kind of change: first apply, single replaces and deletes, the kernel's
// flush when a link goes, and a route deleted by hand.
func TestFakeSortedView(t *testing.T) {
	ctx := context.Background()
	f := NewFake(DefaultOptions())
	check := func(step string) {
		t.Helper()
		f.sys.mu.Lock()
		want := slices.SortedFunc(maps.Values(f.sys.routes), compareRoutes)
		f.sys.mu.Unlock()
		got := f.sys.observe(f.r.o).Ours.Routes
		var wantOurs []route
		for _, r := range want {
			if f.r.o.ownsRoute(r) {
				wantOurs = append(wantOurs, r)
			}
		}
		if !slices.Equal(got, wantOurs) {
			t.Fatalf("%s: observed routes are not the sorted routes:\ngot  %v\nwant %v", step, got, wantOurs)
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	d := bigMesh(60)
	if err := f.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	check("first apply")
	for i := range 50 {
		// Move, drop or re-add a few routes: replaces and deletes that the
		// view takes in place (or rebuilds past maxPatches).
		e := bigMesh(60)
		for range rng.IntN(maxPatches + 8) {
			j := rng.IntN(len(e.Routes))
			if rng.IntN(2) == 0 {
				e.Routes = slices.Delete(e.Routes, j, j+1)
			} else {
				e.Routes[j].Kind = mesh.Unreachable
			}
		}
		if err := f.Apply(ctx, e); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("change %d", i))
	}
	var line string
	for _, l := range strings.Split(f.Render(), "\n") {
		if strings.HasPrefix(l, "ip route") && strings.Contains(l, "table 51820") {
			line = l
			break
		}
	}
	if !f.Delete(line) {
		t.Fatalf("Delete(%q) matched nothing", line)
	}
	check("deleted by hand")
	f.RemoveLink(DefaultOptions().Interface)
	check("link removed")
}

// TestUnderlayFromOwnAddress: the underlay is the interface holding the
// node's own address (mesh.Desired.Underlay: endpoint, InternalIP), with or
// without a default route; only when no own address is known or held does
// the default route decide, and without one the error names what was
// looked for or which input would give an address.
func TestUnderlayFromOwnAddress(t *testing.T) {
	noDefault := func(f *Fake) {
		maps.DeleteFunc(f.sys.routes, func(_ routeKey, r route) bool { return r.Dst.Bits() == 0 })
	}
	eth1 := func(f *Fake) {
		f.sys.links = append(f.sys.links, link{Name: "eth1", MTU: 1400, Addrs: []netip.Prefix{pfx("198.19.0.5/15")}})
	}
	tests := []struct {
		name     string
		setup    []func(*Fake)
		own      []netip.Addr
		wantMTU  int
		wantErrs []string
	}{
		{"own address without default route", []func(*Fake){noDefault, eth1}, []netip.Addr{addr("198.19.0.5")}, AutoMTU(1400, false), nil},
		{"own address beats the default route", []func(*Fake){eth1}, []netip.Addr{addr("198.19.0.5")}, AutoMTU(1400, false), nil},
		{"first held address wins", []func(*Fake){noDefault, eth1}, []netip.Addr{addr("203.0.113.7"), addr("198.19.0.5")}, AutoMTU(1400, false), nil},
		{"NAT address falls back to the default route", []func(*Fake){eth1}, []netip.Addr{addr("203.0.113.7")}, AutoMTU(1500, false), nil},
		{"none known, default route", []func(*Fake){eth1}, nil, AutoMTU(1500, false), nil},
		{"none held, no default route", []func(*Fake){noDefault, eth1}, []netip.Addr{addr("203.0.113.7"), addr("2001:db8:9::1")}, 1420,
			[]string{"cannot find the underlay", "no interface holds this node's address 203.0.113.7, 2001:db8:9::1"}},
		{"none known, no default route", []func(*Fake){noDefault, eth1}, nil, 1420,
			[]string{"cannot find the underlay", "own address is not known", "InternalIP", "peers file", "--endpoint"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFake(opts(nil))
			for _, s := range tc.setup {
				s(f)
			}
			d := dual()
			d.Underlay = tc.own
			err := f.Apply(context.Background(), d)
			for _, want := range tc.wantErrs {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("err = %v, want one containing %q", err, want)
				}
			}
			if len(tc.wantErrs) == 0 && err != nil {
				t.Errorf("err = %v, want none", err)
			}
			if err != nil && strings.Contains(err.Error(), "invalid IP") {
				t.Errorf("err = %v prints a zero address", err)
			}
			if st := f.Status(); st.LinkMTU != tc.wantMTU {
				t.Errorf("LinkMTU = %d, want %d", st.LinkMTU, tc.wantMTU)
			}
		})
	}
}
