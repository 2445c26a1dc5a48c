package routing

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

func TestNFTTableName(t *testing.T) {
	for iface, want := range map[string]string{
		"wgmesh0":   "wgmesh_wgmesh0",
		"wg-test.1": "wgmesh_wg-test.1",
		"wg_0":      "wgmesh_wg_5f0",
		"wg@x+y":    "wgmesh_wg_40x_2by",
		"WG":        "wgmesh_WG",
	} {
		if got := NFTTableName(iface); got != want {
			t.Errorf("NFTTableName(%q) = %q, want %q", iface, got, want)
		}
	}
}

// FuzzNFTTableName: distinct interfaces get distinct tables, never the
// legacy one, made only of characters nft accepts in a bare identifier.
func FuzzNFTTableName(f *testing.F) {
	f.Add("wgmesh0", "wg_5f0")
	f.Add("wg_0", "wg_5f0")
	f.Fuzz(func(t *testing.T, a, b string) {
		na, nb := NFTTableName(a), NFTTableName(b)
		if (a == b) != (na == nb) {
			t.Fatalf("NFTTableName(%q) = %q, NFTTableName(%q) = %q", a, na, b, nb)
		}
		if na == LegacyNFTTable || !strings.HasPrefix(na, "wgmesh_") {
			t.Fatalf("NFTTableName(%q) = %q", a, na)
		}
		for _, c := range []byte(na) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				t.Fatalf("NFTTableName(%q) = %q: byte %q", a, na, c)
			}
		}
	})
}

// twoInstanceHost is a fresh host with both instances' interfaces and the
// usual foreign entries (but not the other instance's, which it runs).
func twoInstanceHost() *fakeHost {
	h := newFakeHost(DefaultInterface)
	// MTU as B will set it: Cleanup leaves the MTU.
	h.links = append(h.links, link{Name: otherInstance.Interface, MTU: 1440})
	h.rules = append(h.rules, foreignRule)
	h.addRoutes(foreignRoute...)
	h.foreignNFT = slices.Clone(foreignNFT)
	return h
}

// otherDesired is the other instance's view: its own CIDRs.
func otherDesired() mesh.Desired {
	return mesh.Desired{
		Routes: []mesh.Route{
			throw("10.245.1.0/24", "b-1"), tunnel("10.245.2.0/24", "b-2"), tunnel("fd00:10:245:2::/64", "b-2"),
		},
		Addresses:     []netip.Prefix{pfx("10.245.1.1/32"), pfx("fd00:10:245:1::1/128")},
		StrictSources: []netip.Prefix{pfx("10.245.2.0/24"), pfx("fd00:10:245:2::/64")},
	}
}

// TestTwoInstances: two routers with different interfaces, tables,
// priorities and marks share a host. Each Apply leaves the other's rules,
// routes, addresses and nftables table alone, so resyncs change nothing,
// and each Cleanup removes only its own.
func TestTwoInstances(t *testing.T) {
	ctx := context.Background()
	h := twoInstanceHost()
	a := newRouter(DefaultOptions(), fakeView{h, DefaultOptions()})
	b := newRouter(otherInstance, fakeView{h, otherInstance})
	if err := a.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	onlyA := h.render()
	if err := b.Apply(ctx, otherDesired()); err != nil {
		t.Fatal(err)
	}
	both := h.render()
	for _, want := range []string{
		"ip rule add pref 99 not fwmark 0x2000/0x2000 lookup 51820 proto 0x57\n",
		"ip rule add pref 97 not fwmark 0x40000/0x40000 lookup 51830 proto 0x57\n",
		"ip route add 10.244.2.0/24 dev wgmesh0 table 51820 proto 0x57 src 10.244.1.0\n",
		"ip route add 10.245.2.0/24 dev wgmesh1 table 51830 proto 0x57 src 10.245.1.1\n",
		"ip address add 10.244.1.0/32 dev wgmesh0\n",
		"ip address add 10.245.1.1/32 dev wgmesh1\n",
		"nft add table inet wgmesh_wgmesh0\n",
		"nft add table inet wgmesh_wgmesh1\n",
	} {
		if !strings.Contains(both, want) {
			t.Errorf("with both instances applied, the host lacks %q:\n%s", want, both)
		}
	}
	// Resyncs of either: nothing to do.
	for _, c := range []struct {
		o Options
		d mesh.Desired
	}{{DefaultOptions(), dual()}, {otherInstance, otherDesired()}} {
		w := h.observe(c.o)
		want, _ := c.o.target(c.d, w)
		if ops := plan(c.o.Interface, w.Ours, want); len(ops) != 0 {
			t.Errorf("%s: resync plans %v", c.o.Interface, ops)
		}
	}
	// Cleanup of B restores the host as A alone left it.
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(onlyA, h.render()); diff != "" {
		t.Errorf("Cleanup of instance B touched more than its own (-before B +after):\n%s", diff)
	}
	// Cleanup of A leaves nothing of A's.
	if err := a.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h.render(); strings.Contains(got, "51820 proto 0x57") || strings.Contains(got, "wgmesh_wgmesh0") {
		t.Errorf("after both cleanups:\n%s", got)
	}
}

// legacyFilter is the table "inet wgmesh" an older version wrote for
// interface iface.
func legacyFilter(iface string) *filter {
	f := dualFilter(iface)
	f.Table = LegacyNFTTable
	return f
}

func dualFilter(iface string) *filter {
	o := DefaultOptions()
	o.Interface = iface
	w := observed{Links: []link{{Name: iface, MTU: 1420}}}
	want, _ := o.target(dual(), w)
	return want.Filter
}

// TestLegacyFilter: the shared table of older versions is this instance's
// when its rules name our interface: it is deleted after the instance's own
// table exists (also by Cleanup). Another instance's legacy table stays.
func TestLegacyFilter(t *testing.T) {
	ctx := context.Background()
	o := DefaultOptions()

	h := testHost(DefaultInterface)
	h.filters[LegacyNFTTable] = legacyFilter(DefaultInterface)
	w := h.observe(o)
	if w.Ours.LegacyFilter != LegacyNFTTable {
		t.Fatalf("observed legacy table %q, want %q", w.Ours.LegacyFilter, LegacyNFTTable)
	}
	want, _ := o.target(dual(), w)
	ops := plan(o.Interface, w.Ours, want)
	put := slices.IndexFunc(ops, func(x op) bool { return x.kind == opPutFilter })
	del := slices.IndexFunc(ops, func(x op) bool { return x.kind == opDelLegacyFilter })
	if put < 0 || del < put {
		t.Fatalf("plan puts the table at %d and deletes the legacy one at %d, want put first: %v", put, del, ops)
	}
	if s := ops[del].String(); s != "nft delete table inet wgmesh (left by an older version for wgmesh0)" {
		t.Errorf("legacy delete op = %q", s)
	}
	applyOn(t, h, config{"dual", o, dual()})
	if _, ok := h.filters[LegacyNFTTable]; ok {
		t.Errorf("legacy table of wgmesh0 not deleted:\n%s", h.render())
	}

	// Another instance's legacy table stays, through Apply and Cleanup.
	h = testHost(DefaultInterface)
	h.filters[LegacyNFTTable] = legacyFilter("wgmesh7")
	applyOn(t, h, config{"dual", o, dual()})
	r := newRouter(o, fakeView{h, o})
	if err := r.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.filters[LegacyNFTTable]; !ok {
		t.Errorf("legacy table of wgmesh7 deleted by wgmesh0:\n%s", h.render())
	}

	// Cleanup removes our legacy table too.
	h = testHost(DefaultInterface)
	h.filters[LegacyNFTTable] = legacyFilter(DefaultInterface)
	if err := newRouter(o, fakeView{h, o}).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.filters[LegacyNFTTable]; ok {
		t.Errorf("Cleanup left the legacy table of wgmesh0")
	}

	// When the new table cannot be created the legacy one keeps filtering.
	h = testHost(DefaultInterface)
	h.filters[LegacyNFTTable] = legacyFilter(DefaultInterface)
	h.fail["nft create table inet wgmesh_wgmesh0"] = errors.New("no nftables")
	err := newRouter(o, fakeView{h, o}).Apply(ctx, dual())
	if err == nil || !strings.Contains(err.Error(), "kept") {
		t.Errorf("Apply with a failing table = %v, want an error saying the legacy table is kept", err)
	}
	if _, ok := h.filters[LegacyNFTTable]; !ok {
		t.Errorf("legacy table deleted although the new one could not be created")
	}
}

// TestPrivilegedLegacyFilter: on a real nftables, the legacy shared table
// is recognised by the interface its rules name: ours is replaced by the
// instance's own table, another instance's stays.
func TestPrivilegedLegacyFilter(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	r, k := l.router(DefaultOptions())
	tables := func() string { return l.run("ip", "netns", "exec", l.ns, "nft", "list", "tables") }

	// putFilter writes the signatures of its kernel's interface.
	o7 := DefaultOptions()
	o7.Interface = "wgmesh7"
	_, k7 := l.router(o7)
	if err := k7.putFilter(legacyFilter("wgmesh7")); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := tables(); !strings.Contains(got, "table inet wgmesh\n") || !strings.Contains(got, "table inet wgmesh_wgmesh0\n") {
		t.Errorf("with another instance's legacy table, nft list tables:\n%s", got)
	}
	if err := r.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := tables(); !strings.Contains(got, "table inet wgmesh\n") {
		t.Errorf("Cleanup deleted another instance's legacy table:\n%s", got)
	}

	if err := k.putFilter(legacyFilter(DefaultInterface)); err != nil {
		t.Fatal(err)
	}
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := tables(); strings.Contains(got, "table inet wgmesh\n") || !strings.Contains(got, "table inet wgmesh_wgmesh0\n") {
		t.Errorf("with our legacy table, after Apply nft list tables:\n%s", got)
	}
}
