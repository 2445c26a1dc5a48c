package routing

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/wgmesh/wgmesh/mesh"
)

// Ownership predicates, shared by the kernel and the fake so both filter the
// observed state identically. Everything is scoped to one instance (one
// interface, one table): another wgmesh instance's rules and routes carry
// the same protocol but look up another table, and are never touched.
// Entries a previous run left with other options (another --route-table)
// are not guessed at: `wgmesh cleanup` with those options removes them.

// ownsRule: our rules look up our table and carry our protocol. Kernels
// before 4.17 report no rule protocols; the kernel system gives the rules on
// our table our protocol then (see kernel.observe).
func (o Options) ownsRule(r rule) bool {
	return r.Table == o.Table && r.Protocol == RouteProtocol
}

// ownsRoute: our routes carry our protocol and live in our table.
func (o Options) ownsRoute(r route) bool {
	return r.Protocol == RouteProtocol && r.Table == o.Table
}

// ownsAddr: every address on our interface is ours except the link-local
// ones the kernel generates.
func ownsAddr(p netip.Prefix) bool { return !p.Addr().IsLinkLocalUnicast() }

// enabled reports whether family f is switched on.
func (o Options) enabled(f family) bool {
	return (f == v4 && o.IPv4) || (f == v6 && o.IPv6)
}

// target computes the state d asks for, given what the host looks like. The
// notes are problems worth reporting that do not stop the apply (the
// interface is absent; the underlay cannot be found).
func (o Options) target(d mesh.Desired, w observed) (want ours, notes []error) {
	_, haveLink := w.link(o.Interface)
	if !haveLink {
		notes = append(notes, fmt.Errorf("interface %s does not exist: tunnel routes are unreachable until the device creates it", o.Interface))
	}
	// src_valid_mark. wg-quick sets net.ipv4.conf.all.src_valid_mark=1
	// when it installs its fwmark rule: reverse-path validation of a
	// received packet (rp_filter) then looks its source up with the
	// packet's mark, so a "not fwmark" rule cannot divert the lookup of a
	// peer's endpoint into the tunnel table and get the peer's reply to
	// the marked WireGuard socket dropped as a martian. The kernel ORs the
	// `all` value with that of the receiving interface (IN_DEV_ORCONF), so
	// setting it on the interfaces such packets arrive on is equivalent:
	// the underlay (encrypted packets) and the tunnel (decrypted ones).
	//
	// The `all` value comes first, as with wg-quick. Where it cannot be
	// written (Kubernetes mounts /proc/sys read-only in unprivileged
	// containers, even with CAP_NET_ADMIN and the host network) the router
	// sets the per-interface values over rtnetlink instead, for which
	// CAP_NET_ADMIN suffices (router.srcValidMark). Per-interface values
	// already in place satisfy the want, so a read-only host is not
	// rewritten on every Apply. If neither can be set, Apply still succeeds
	// and Status carries a warning: for wgmesh the flag is belt and braces,
	// because its table holds only pod (and host-encryption) destinations
	// and the peers' endpoints are thrown back to the main table, so the
	// unmarked reverse-path lookup of an endpoint never ends in the tunnel.
	// The knob exists for IPv4 only and is harmless otherwise; setting it
	// whatever the families keeps the end state independent of history.
	want.SrcValidMark = true
	want.SrcValidMarkDevs = o.markDevs(w)

	if haveLink {
		mtu, err := o.linkMTU(w)
		if err != nil {
			notes = append(notes, err)
		}
		want.LinkMTU = mtu
	}

	src := map[family]netip.Addr{}
	if haveLink {
		for _, a := range d.Addresses {
			f := familyOf(a.Addr())
			if !a.IsValid() || !o.enabled(f) || slices.Contains(want.Addrs, a) {
				continue
			}
			want.Addrs = append(want.Addrs, a)
			if _, ok := src[f]; !ok {
				src[f] = a.Addr()
			}
		}
	}

	for _, f := range []family{v4, v6} {
		if o.enabled(f) {
			want.Rules = append(want.Rules, rule{
				Family: f, Priority: o.Priority, Invert: true,
				Mark: o.FwMark, Mask: o.FwMark, Table: o.Table, Protocol: RouteProtocol,
			})
		}
	}

	// seen catches duplicate destinations. Derive's routes are sorted by
	// destination, so none can repeat and the map is not needed.
	var seen map[netip.Prefix]bool
	if !strictlySortedDsts(d.Routes) {
		seen = make(map[netip.Prefix]bool, len(d.Routes))
	}
	if len(d.Routes) > 0 {
		want.Routes = make([]route, 0, len(d.Routes))
	}
	for _, r := range d.Routes {
		if !r.Dst.IsValid() {
			notes = append(notes, fmt.Errorf("route for node %q: invalid destination: skipped", r.Node))
			continue
		}
		dst := r.Dst.Masked()
		f := familyOf(dst.Addr())
		if !o.enabled(f) || seen[dst] {
			// Desired.Routes holds one route per destination; a duplicate
			// would be a Derive bug, and the first one wins.
			continue
		}
		if seen != nil {
			seen[dst] = true
		}
		rt := route{Table: o.Table, Dst: dst, Protocol: RouteProtocol, Metric: defaultMetric(f)}
		switch r.Kind {
		case mesh.ViaTunnel:
			if haveLink {
				rt.Type, rt.Dev, rt.Src = typeUnicast, o.Interface, src[f]
			} else {
				rt.Type = typeUnreachable
			}
		case mesh.Throw:
			rt.Type = typeThrow
		case mesh.Unreachable:
			rt.Type = typeUnreachable
		default:
			// Fail closed: an unknown kind must not let traffic through.
			rt.Type = typeUnreachable
			notes = append(notes, fmt.Errorf("route %s for node %q: unknown kind %d: installed as unreachable", dst, r.Node, r.Kind))
		}
		want.Routes = append(want.Routes, rt)
	}

	if !o.DisableIngressFilter {
		f := &filter{Table: o.nftTableName(), Chain: true, Counter: true}
		for _, fam := range []family{v4, v6} {
			if o.enabled(fam) {
				f.Sets = append(f.Sets, nftSet{Name: nftSetName(fam), Family: fam, Ranges: rangesOf(d.StrictSources, fam)})
				f.Rules = append(f.Rules, nftRuleSig(fam, o.Interface))
			}
		}
		want.Filter = f
	}
	return want, notes
}

// strictlySortedDsts reports whether the valid destinations of rs, masked,
// are in strictly increasing order, which rules out duplicates.
func strictlySortedDsts(rs []mesh.Route) bool {
	var prev netip.Prefix
	for _, r := range rs {
		if !r.Dst.IsValid() {
			continue
		}
		dst := r.Dst.Masked()
		if prev.IsValid() && comparePrefix(prev, dst) >= 0 {
			return false
		}
		prev = dst
	}
	return true
}

// linkMTU is the MTU the tunnel interface should have: Options.MTU, else
// AutoMTU of the underlay. 0 (with an error) means the underlay could not be
// found and the MTU is left as it is.
func (o Options) linkMTU(w observed) (int, error) {
	if o.MTU > 0 {
		return o.MTU, nil
	}
	if l, v6, ok := o.underlay(w); ok {
		return AutoMTU(l.MTU, v6), nil
	}
	return 0, fmt.Errorf("interface %s: cannot find the underlay (no interface holds %v and there is no default route): MTU left unchanged; set --mtu", o.Interface, o.UnderlayAddr)
}

// underlay is the interface peers' packets arrive on: the one holding
// Options.UnderlayAddr, else the interface of the default route of that
// address's family, then IPv4's, then IPv6's. ipv6 reports whether the
// underlay is IPv6 (for AutoMTU).
func (o Options) underlay(w observed) (l link, ipv6 bool, ok bool) {
	if a := o.UnderlayAddr.Unmap(); a.IsValid() {
		for _, l := range w.Links {
			if l.Name == o.Interface {
				continue
			}
			for _, p := range l.Addrs {
				if p.Addr().Unmap() == a && l.MTU > 0 {
					return l, a.Is6(), true
				}
			}
		}
	}
	order := []family{v4, v6}
	if o.UnderlayAddr.IsValid() && familyOf(o.UnderlayAddr) == v6 {
		order = []family{v6, v4}
	}
	for _, f := range order {
		for _, r := range w.Defaults {
			if r.family() != f || r.Dev == "" || r.Dev == o.Interface {
				continue
			}
			if l, ok := w.link(r.Dev); ok && l.MTU > 0 {
				return l, f == v6, true
			}
		}
	}
	return link{}, false, false
}

// markDevs are the interfaces src_valid_mark matters on, sorted: the
// underlay, where the peers' encrypted packets arrive, and the tunnel
// interface, where the decrypted ones do, as far as they exist. A host
// receiving peers' packets on several interfaces is covered only by the
// `all` value.
func (o Options) markDevs(w observed) []string {
	var devs []string
	if l, _, ok := o.underlay(w); ok {
		devs = append(devs, l.Name)
	}
	if _, ok := w.link(o.Interface); ok {
		devs = append(devs, o.Interface)
	}
	slices.Sort(devs)
	return devs
}

// ownMarks fills w.Ours.SrcValidMarkDevs from the links' own values. Both
// systems call it at the end of observe, so they agree on which
// per-interface values are the router's concern.
func (o Options) ownMarks(w *observed) {
	w.Ours.SrcValidMarkDevs = nil
	for _, dev := range o.markDevs(*w) {
		if l, ok := w.link(dev); ok && l.SrcValidMark {
			w.Ours.SrcValidMarkDevs = append(w.Ours.SrcValidMarkDevs, dev)
		}
	}
}

// opKind says what an op does. The order of the constants is the order in
// which plan emits them: everything that adds or replaces first, then
// everything that deletes.
type opKind int

const (
	// opSysctl writes net.ipv4.conf.all.src_valid_mark; if that fails, the
	// router falls back to an opDevConf for each of op.devs.
	opSysctl opKind = iota
	// opDevConf sets src_valid_mark of interface op.iface over rtnetlink.
	// plan never emits it; it is the fallback of a failed opSysctl.
	opDevConf
	opSetMTU
	opAddAddr
	opReplaceRoute
	opAddRule
	opPutFilter
	opUpdateSet
	opDelRule
	opDelRoute
	opDelAddr
	opDelFilter
	// opDelLegacyFilter deletes the table "inet wgmesh" an older version
	// shared by all instances, once it is known to be this instance's (its
	// rules name our interface) and the instance's own table exists.
	opDelLegacyFilter
)

// op is one change to the OS state.
type op struct {
	kind  opKind
	iface string
	mtu   int
	addr  netip.Prefix
	rule  rule
	route route
	// filter is the whole table for opPutFilter.
	filter *filter
	// set, add and del are the element changes for opUpdateSet.
	set      nftSet
	add, del []ipRange
	// devs are the interfaces a failed opSysctl falls back to.
	devs []string
	// table is the nftables table (family inet) of the filter ops.
	table string
}

// String names the op as the command that would carry it out; errors and
// logs use it.
func (o op) String() string {
	switch o.kind {
	case opSysctl:
		return srcValidMarkLine("all", 1)
	case opDevConf:
		return srcValidMarkLine(o.iface, 1) + " (rtnetlink)"
	case opSetMTU:
		return fmt.Sprintf("ip link set dev %s mtu %d", o.iface, o.mtu)
	case opAddAddr, opDelAddr:
		verb := "add"
		if o.kind == opDelAddr {
			verb = "del"
		}
		return fmt.Sprintf("ip%s address %s %s dev %s", familyOf(o.addr.Addr()).ipFlag(), verb, o.addr, o.iface)
	case opReplaceRoute:
		return "ip" + o.route.family().ipFlag() + " route replace " + o.route.spec()
	case opDelRoute:
		return "ip" + o.route.family().ipFlag() + " route del " + o.route.spec()
	case opAddRule:
		return "ip" + o.rule.Family.ipFlag() + " rule add " + o.rule.spec()
	case opDelRule:
		return "ip" + o.rule.Family.ipFlag() + " rule del " + o.rule.spec()
	case opPutFilter:
		return "nft create table inet " + o.table + " (replacing it whole)"
	case opUpdateSet:
		return fmt.Sprintf("nft update set inet %s %s (+%d -%d ranges)", o.table, o.set.Name, len(o.add), len(o.del))
	case opDelFilter:
		return "nft delete table inet " + o.table
	case opDelLegacyFilter:
		return "nft delete table inet " + o.table + " (left by an older version for " + o.iface + ")"
	}
	return fmt.Sprintf("op %d", o.kind)
}

// LogValue logs the op as String does, computed only when the record is
// logged: a first Apply makes tens of thousands of ops, whose debug lines
// are usually off.
func (o op) LogValue() slog.Value { return slog.StringValue(o.String()) }

// plan returns the ops that turn have into want, adds and replaces before
// deletes (with one exception, see flush4). have holds only our own entries, so deleting everything in have
// that want lacks never touches anyone else's.
func plan(iface string, have, want ours) []op {
	var ops []op
	if want.SrcValidMark && !have.SrcValidMark {
		// Per-interface values (from an earlier fallback) on every
		// interface that matters are as good as the `all` value.
		var missing []string
		for _, dev := range want.SrcValidMarkDevs {
			if !slices.Contains(have.SrcValidMarkDevs, dev) {
				missing = append(missing, dev)
			}
		}
		if len(missing) > 0 || len(want.SrcValidMarkDevs) == 0 {
			ops = append(ops, op{kind: opSysctl, devs: missing})
		}
	}
	// have.LinkMTU is 0 when the interface is absent; nothing to set then.
	if want.LinkMTU > 0 && have.LinkMTU > 0 && want.LinkMTU != have.LinkMTU {
		ops = append(ops, op{kind: opSetMTU, iface: iface, mtu: want.LinkMTU})
	}
	for _, a := range sortedPrefixes(want.Addrs) {
		if !slices.Contains(have.Addrs, a) {
			ops = append(ops, op{kind: opAddAddr, iface: iface, addr: a})
		}
	}
	// When the interface loses its last IPv4 address the kernel flushes
	// every IPv4 route through it. If that is about to happen, the tunnel
	// routes are first made unreachable (which the flush leaves alone), and
	// put back after the address is gone: packets are dropped for a moment
	// instead of falling through to the main table in plaintext.
	flush4 := hasFamily(have.Addrs, v4) && !hasFamily(want.Addrs, v4)
	var readd []route
	// Routes are compared as whole values; a key match alone (same table,
	// destination, metric) only keeps the old one from being deleted.
	// same is the periodic resync: nothing to replace, nothing to delete.
	// Checking costs one pass when both lists come in the same order; any
	// difference ends the comparison at once.
	same := !flush4 && slices.Equal(have.Routes, want.Routes)
	// keep[i] reports whether a wanted route shares have.Routes[i]'s key.
	var keep []bool
	if !same {
		keep = make([]bool, len(have.Routes))
		haveRoutes := indexRoutes(have.Routes)
		for _, r := range sortedRoutes(want.Routes) {
			found := false
			k := r.key()
			for i := haveRoutes.first(r.Dst); i >= 0; i = haveRoutes.next[i] {
				if h := &have.Routes[i]; h.key() == k {
					keep[i] = true
					found = found || *h == r
				}
			}
			if flush4 && r.family() == v4 && r.Type == typeUnicast && r.Dev == iface {
				blocked := r
				blocked.Type, blocked.Dev, blocked.Src = typeUnreachable, "", netip.Addr{}
				ops = append(ops, op{kind: opReplaceRoute, route: blocked})
				readd = append(readd, r)
				continue
			}
			if !found {
				ops = append(ops, op{kind: opReplaceRoute, route: r})
			}
		}
	}
	for _, r := range sortedRules(want.Rules) {
		if !slices.Contains(have.Rules, r) {
			ops = append(ops, op{kind: opAddRule, rule: r})
		}
	}
	switch {
	case want.Filter == nil:
	case have.Filter == nil || !have.Filter.sameShape(want.Filter):
		ops = append(ops, op{kind: opPutFilter, filter: want.Filter, table: want.Filter.Table})
	default:
		for i, s := range want.Filter.Sets {
			add, del := diffRanges(have.Filter.Sets[i].Ranges, s.Ranges)
			if len(add)+len(del) > 0 {
				ops = append(ops, op{kind: opUpdateSet, set: s, add: add, del: del, table: want.Filter.Table})
			}
		}
	}
	for _, r := range sortedRules(have.Rules) {
		if !slices.Contains(want.Rules, r) {
			ops = append(ops, op{kind: opDelRule, rule: r})
		}
	}
	// A route whose key a wanted route shares was overwritten by the
	// replace above; deleting it would delete the new one. Only the stale
	// routes are sorted, not all of have.
	if !same {
		var stale []route
		for i, r := range have.Routes {
			if !keep[i] {
				stale = append(stale, r)
			}
		}
		for _, r := range sortedRoutes(stale) {
			ops = append(ops, op{kind: opDelRoute, route: r})
		}
	}
	for _, a := range sortedPrefixes(have.Addrs) {
		if !slices.Contains(want.Addrs, a) {
			ops = append(ops, op{kind: opDelAddr, iface: iface, addr: a})
		}
	}
	for _, r := range readd {
		ops = append(ops, op{kind: opReplaceRoute, route: r})
	}
	if want.Filter == nil && have.Filter != nil {
		ops = append(ops, op{kind: opDelFilter, table: have.Filter.Table})
	}
	// Last: by now the instance's own table exists (or is not wanted).
	if have.LegacyFilter != "" {
		ops = append(ops, op{kind: opDelLegacyFilter, table: have.LegacyFilter, iface: iface})
	}
	return ops
}

// routeIndex finds the routes of a list by destination; the caller
// compares the rest of the key. The kernel may report several routes with
// one destination (other tables or metrics, or differences the model does
// not hold, such as TOS), so each destination leads to a chain of indexes.
type routeIndex struct {
	head map[dstKey]int32
	// next[i] is the next index with the destination of route i, -1 at
	// the end.
	next []int32
}

// dstKey is a destination prefix as a map key without pointers (a
// netip.Addr holds one), which makes it cheap to hash and spares the
// garbage collector from scanning the map.
type dstKey struct{ hi, lo, meta uint64 }

func dstKeyOf(p netip.Prefix) dstKey {
	a := p.Addr()
	b := a.As16()
	meta := uint64(p.Bits() + 1) // -1 for an invalid prefix
	if a.Is4() {
		meta |= 1 << 8
	}
	return dstKey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), meta}
}

func indexRoutes(rs []route) routeIndex {
	x := routeIndex{head: make(map[dstKey]int32, len(rs)), next: make([]int32, len(rs))}
	// Backwards, so that each chain runs in list order.
	for i := len(rs) - 1; i >= 0; i-- {
		k := dstKeyOf(rs[i].Dst)
		if j, ok := x.head[k]; ok {
			x.next[i] = j
		} else {
			x.next[i] = -1
		}
		x.head[k] = int32(i)
	}
	return x
}

// first is the first index of a route to dst, -1 if there is none.
func (x routeIndex) first(dst netip.Prefix) int32 {
	if i, ok := x.head[dstKeyOf(dst)]; ok {
		return i
	}
	return -1
}

func setOf[T comparable](xs []T) map[T]bool {
	m := make(map[T]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func hasFamily(ps []netip.Prefix, f family) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return familyOf(p.Addr()) == f })
}
