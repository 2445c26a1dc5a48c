package routing

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/internal/prefixes"
	"github.com/wgmesh/wgmesh/mesh"
)

// Ownership predicates, shared by the kernel and the fake so both filter the
// observed state identically. Everything is scoped to one instance (one
// interface, one table): another wgmesh instance's rules and routes carry
// the same protocol but look up another table, and are never touched.
// Entries a previous run left with other options (another --route-table)
// are not guessed at: `wgmesh cleanup` with those options removes them.

// ownsTable reports whether t is one of the instance's routing tables: the
// route table or the host-route table. Every predicate that asks "is this
// table ours" goes through it.
func (o Options) ownsTable(t int) bool { return t == o.Table || t == o.HostTable }

// ownsRule: our rules look up one of our tables and carry our protocol.
// Kernels before 4.17 report no rule protocols; the kernel system gives the
// rules on our tables our protocol then (see kernel.observe).
func (o Options) ownsRule(r rule) bool {
	return o.ownsTable(r.Table) && r.Protocol == RouteProtocol
}

// ownsRoute: our routes carry our protocol and live in one of our tables.
func (o Options) ownsRoute(r route) bool {
	return r.Protocol == RouteProtocol && o.ownsTable(r.Table)
}

// sortObserved files a route read from the host (the kernel's or the
// in-memory host's, so both see the same): main-table default routes and
// connected routes (they locate the underlay and its MTU), and ours.
func (o Options) sortObserved(r route, defaults, connected, ours *[]route) {
	switch {
	case r.Table != unix.RT_TABLE_MAIN:
	case r.Dst.Bits() == 0:
		*defaults = append(*defaults, r)
	case r.Type == typeUnicast && r.Dev != "" && !r.Gw.IsValid():
		*connected = append(*connected, r)
	}
	if o.ownsRoute(r) {
		*ours = append(*ours, r)
	}
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
	// No sysctl is wanted, src_valid_mark included. With the flag set,
	// reverse-path validation (fib_validate_source) looks a received
	// packet's source up with the packet's mark instead of 0. wg-quick
	// needs that: it restores the fwmark onto received encrypted packets
	// (CONNMARK) and routes 0.0.0.0/0 into the tunnel, so only the marked
	// lookup of a peer's endpoint skips its table. wgmesh restores no mark:
	// received encrypted packets carry mark 0 and decrypted ones too (the
	// device scrubs them), so the flag would change no lookup of wgmesh's
	// own traffic; and its table never routes a peer's endpoint into the
	// tunnel anyway (endpoints are absent or thrown back to main). It only
	// harms others: `all` is ORed into every interface's value, and the
	// reverse lookup of a packet someone else marked then follows that
	// mark, into a TPROXY table holding `local 0.0.0.0/0`, which
	// fib_validate_source rejects whatever rp_filter says: the neighbour's
	// proxied connections die.

	if haveLink {
		mtu, _, err := o.tunnelMTU(w, d.Underlay)
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
	// The host-route rules select by source, so only traffic from the own
	// pods consults the host table: the host's own packets carry a node
	// address (or none yet, while the kernel picks one: a `from` rule does
	// not match then). `fwmark 0/M` (the mark bit clear) keeps encrypted
	// packets out like the main rule's `not fwmark M/M`, but cannot be
	// written so: `not` inverts a rule's whole selector, and `not from P
	// fwmark M/M` would match all host traffic. They come one priority
	// before the main rule, a fixed order the kernel keeps whatever order
	// they were added in.
	for _, p := range d.PodSources {
		if !p.IsValid() {
			notes = append(notes, fmt.Errorf("pod source %s: invalid prefix: skipped", p))
			continue
		}
		p = p.Masked()
		f := familyOf(p.Addr())
		r := rule{
			Family: f, Priority: o.Priority - 1, From: p,
			Mark: 0, Mask: o.FwMark, Table: o.HostTable, Protocol: RouteProtocol,
		}
		if o.enabled(f) && !slices.Contains(want.Rules, r) {
			want.Rules = append(want.Rules, r)
		}
	}

	var mainRoutes, hostRoutes []route
	mainRoutes, notes = o.tableRoutes(o.Table, d.Routes, haveLink, src, notes)
	// Host routes need no preferred source: only forwarded pod packets and
	// sockets bound to a pod address use them, and both have a source.
	hostRoutes, notes = o.tableRoutes(o.HostTable, d.HostRoutes, haveLink, nil, notes)
	want.Routes = mergeTables(mainRoutes, hostRoutes)

	if !o.DisableIngressFilter {
		want.Filter = o.wantFilter(d)
	}
	return want, notes
}

// tableRoutes turns routes of mesh.Desired into routes of table, appending
// any problem to notes. Tunnel routes prefer src's address of their family
// (none if src has none) and are unreachable while the interface is absent.
func (o Options) tableRoutes(table int, rs []mesh.Route, haveLink bool, src map[family]netip.Addr, notes []error) ([]route, []error) {
	// seen catches duplicate destinations. Derive's routes are sorted by
	// destination, so none can repeat and the map is not needed.
	var seen map[netip.Prefix]bool
	if !strictlySortedDsts(rs) {
		seen = make(map[netip.Prefix]bool, len(rs))
	}
	var out []route
	if len(rs) > 0 {
		out = make([]route, 0, len(rs))
	}
	for _, r := range rs {
		if !r.Dst.IsValid() {
			notes = append(notes, fmt.Errorf("route for node %q in table %d: invalid destination: skipped", r.Node, table))
			continue
		}
		dst := r.Dst.Masked()
		f := familyOf(dst.Addr())
		if !o.enabled(f) || seen[dst] {
			// Each list holds one route per destination; a duplicate
			// would be a Derive bug, and the first one wins.
			continue
		}
		if seen != nil {
			seen[dst] = true
		}
		rt := route{Table: table, Dst: dst, Protocol: RouteProtocol, Metric: defaultMetric(f)}
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
			notes = append(notes, fmt.Errorf("route %s for node %q in table %d: unknown kind %d: installed as unreachable", dst, r.Node, table, r.Kind))
		}
		out = append(out, rt)
	}
	return out, notes
}

// mergeTables joins the routes of two tables, each in compareRoutes' order
// (family, then destination), into one list in that order: family first,
// then table. The kernel dumps our routes so, and plan's shortcut for an
// unchanged state needs the wanted list in the same order.
func mergeTables(a, b []route) []route {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]route, 0, len(a)+len(b))
	for _, f := range []family{v4, v6} {
		x, y := a, b
		if len(x) > 0 && len(y) > 0 && x[0].Table > y[0].Table {
			x, y = y, x
		}
		for _, l := range [][]route{x, y} {
			for _, r := range l {
				if r.family() == f {
					out = append(out, r)
				}
			}
		}
	}
	return out
}

// wantFilter is the nftables table d asks for: the strict ingress filter,
// the egress guard and the MSS clamp (see nft.go for the chains and why
// they hook where they do). DisableIngressFilter switches off the whole
// table; the agent never sets it, so strict mode always has both filters.
func (o Options) wantFilter(d mesh.Desired) *filter {
	f := &filter{
		Table: o.nftTableName(),
		Chains: []nftChain{
			{Name: nftChainIngress, Hook: "prerouting", Priority: nftPrioRaw},
			{Name: nftChainEgress, Hook: "postrouting", Priority: nftPrioRaw},
			{Name: nftChainForward, Hook: "forward", Priority: nftPrioMangle},
			{Name: nftChainOutput, Hook: "output", Priority: nftPrioMangle},
		},
		Counters: []string{nftCounter, nftCounterEgress},
	}
	for _, fam := range []family{v4, v6} {
		if !o.enabled(fam) {
			continue
		}
		f.Sets = append(f.Sets,
			nftSet{Name: nftSetName(fam), Family: fam, Ranges: rangesOf(d.StrictSources, fam)},
			nftSet{Name: nftEncryptSetName(fam), Family: fam, Ranges: rangesOf(d.EncryptOnly, fam)})
		f.Rules = append(f.Rules,
			nftRule{Chain: nftChainIngress, Sig: nftRuleSig(fam, o.Interface)},
			nftRule{Chain: nftChainEgress, Sig: nftEgressSig(fam, o.Interface)})
	}
	// SYNs into the tunnel (forwarded and local) and out of it (forwarded
	// to a local pod or, after DNAT, to a client elsewhere): both ends of
	// a connection then learn an MSS that fits the tunnel, without relying
	// on ICMP "fragmentation needed" reaching them.
	f.Rules = append(f.Rules,
		nftRule{Chain: nftChainForward, Sig: nftMSSSig("oifname", o.Interface)},
		nftRule{Chain: nftChainForward, Sig: nftMSSSig("iifname", o.Interface)},
		nftRule{Chain: nftChainOutput, Sig: nftMSSSig("oifname", o.Interface)})
	f.normalize()
	return f
}

// strictlySortedDsts reports whether the valid destinations of rs, masked,
// are in strictly increasing order (Derive's: prefixes.Compare), which
// rules out duplicates.
func strictlySortedDsts(rs []mesh.Route) bool {
	var prev netip.Prefix
	for _, r := range rs {
		if !r.Dst.IsValid() {
			continue
		}
		dst := r.Dst.Masked()
		if prev.IsValid() && prefixes.Compare(prev, dst) >= 0 {
			return false
		}
		prev = dst
	}
	return true
}

// tunnelMTU is the MTU the tunnel interface should have: Options.MTU,
// else AutoMTU of the underlay (see underlay; own are the node's own
// addresses, mesh.Desired.Underlay) raised to the floor Options.Validate applies to a fixed --mtu, in
// which case warn says so (how much, why, and what to do about it). 0
// (with an error naming the addresses looked for, or saying which input
// would give one) means the underlay could not be found and the MTU is
// left as it is.
func (o Options) tunnelMTU(w observed, own []netip.Addr) (mtu int, warn string, err error) {
	if o.MTU > 0 {
		return o.MTU, "", nil
	}
	cands := o.ownAddrs(own)
	l, v6, ok := o.underlay(w, cands)
	if !ok {
		if len(cands) == 0 {
			return 0, "", fmt.Errorf("interface %s: cannot find the underlay: this node's own address is not known (no --endpoint, and neither the Node's InternalIP nor the node's entry in the peers file gives one yet) and there is no default route: MTU left unchanged; set --endpoint or --mtu", o.Interface)
		}
		return 0, "", fmt.Errorf("interface %s: cannot find the underlay: no interface holds this node's address %s (its endpoint or InternalIP) and there is no default route: MTU left unchanged; set --mtu or correct the node's address", o.Interface, joinList(cands))
	}
	auto, floor := AutoMTU(l.MTU, v6), minMTU(o.IPv6)
	if auto >= floor {
		return auto, "", nil
	}
	why, fix := "needed for IPv6", "raise the underlay MTU or run with --ipv6=false"
	if !o.IPv6 {
		why, fix = "the IPv4 minimum", "raise the underlay MTU"
	}
	return floor, fmt.Sprintf("tunnel MTU %d (underlay %s MTU %d − %d) < %d %s: using %d, outer packets fragment; %s",
		auto, l.Name, l.MTU, l.MTU-auto, floor, why, floor, fix), nil
}

// ownAddrs is Options.UnderlayAddr followed by own, valid, unmapped and
// once each.
func (o Options) ownAddrs(own []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range append([]netip.Addr{o.UnderlayAddr}, own...) {
		if a = a.Unmap(); a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// underlay is the interface peers' packets arrive on: the one holding the
// first of the node's own addresses cands that an interface holds, else
// (none known, or none held: an endpoint that is a NAT address) the
// interface of the default route of the first address's family, then
// IPv4's, then IPv6's. A node without a default route (peers on one L2
// segment or reached by specific routes) is thus found by its own address.
// ipv6 reports whether the underlay is IPv6 (for AutoMTU).
func (o Options) underlay(w observed, cands []netip.Addr) (l link, ipv6 bool, ok bool) {
	for _, a := range cands {
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
	if len(cands) > 0 && familyOf(cands[0]) == v6 {
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

// opKind says what an op does. The order of the constants is the order in
// which plan emits them: everything that adds or replaces first, then
// everything that deletes.
type opKind int

const (
	opSetMTU opKind = iota
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
	// table names the nftables table for opUpdateSet and opDelFilter.
	table string
	// set, add and del are the element changes for opUpdateSet.
	set      nftSet
	add, del []ipRange
}

// String names the op as the command that would carry it out; errors and
// logs use it.
func (o op) String() string {
	switch o.kind {
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
		return "nft create table inet " + o.filter.Table + " (replacing it whole)"
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
				ops = append(ops, op{kind: opUpdateSet, table: want.Filter.Table, set: s, add: add, del: del})
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
	head map[prefixes.Key]int32
	// next[i] is the next index with the destination of route i, -1 at
	// the end.
	next []int32
}

func indexRoutes(rs []route) routeIndex {
	// Keyed without pointers: cheap to hash, and the garbage collector
	// does not scan the map.
	x := routeIndex{head: make(map[prefixes.Key]int32, len(rs)), next: make([]int32, len(rs))}
	// Backwards, so that each chain runs in list order.
	for i := len(rs) - 1; i >= 0; i-- {
		k := prefixes.KeyOf(rs[i].Dst)
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
	if i, ok := x.head[prefixes.KeyOf(dst)]; ok {
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
