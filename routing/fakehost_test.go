package routing

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh"
)

// Fake is a Router over an in-memory host, for this package's tests only:
// it needs the unexported model (system, op, observed), and no package
// outside routing uses it, so it is test code rather than exported API. It runs the same observe, plan
// and ownership logic as the kernel Router and differs only in where ops
// land, so what its Render shows is what the kernel would hold.
//
// A new Fake's host has lo, an underlay eth0 (MTU 1500, 198.18.0.1/15 and
// 2001:db8::1/64 with default routes through it), the tunnel interface with
// MTU 1420 and a link-local address, and the kernel's default rules. Tests
// may change it with SetLink, RemoveLink, Delete and Fail.
type Fake struct {
	r   *router
	sys *fakeHost
}

var _ Router = (*Fake)(nil)

// NewFake returns a Fake for o. Invalid options make every Apply fail.
func NewFake(o Options) *Fake {
	h := newFakeHost(o.Interface)
	return &Fake{r: newRouter(o, fakeView{h, o}), sys: h}
}

// Apply implements Router.
func (f *Fake) Apply(ctx context.Context, d mesh.Desired) error { return f.r.Apply(ctx, d) }

// Cleanup implements Router.
func (f *Fake) Cleanup(ctx context.Context) error { return f.r.Cleanup(ctx) }

// Status implements Router.
func (f *Fake) Status() Status { return f.r.Status() }

// Render returns the whole in-memory host, ours and foreign entries alike,
// as sorted `ip` and `nft` command lines.
func (f *Fake) Render() string {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	return f.sys.render()
}

// SetLink creates the interface name or changes its MTU.
func (f *Fake) SetLink(name string, mtu int) {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	for i := range f.sys.links {
		if f.sys.links[i].Name == name {
			f.sys.links[i].MTU = mtu
			return
		}
	}
	f.sys.links = append(f.sys.links, link{Name: name, MTU: mtu})
}

// RemoveLink deletes the interface name with its addresses and the routes
// through it, as the kernel does.
func (f *Fake) RemoveLink(name string) {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	f.sys.links = slices.DeleteFunc(f.sys.links, func(l link) bool { return l.Name == name })
	maps.DeleteFunc(f.sys.routes, func(_ routeKey, r route) bool { return r.Dev == name })
	f.sys.changedRoutes()
}

// Delete removes the entry that Render shows as line, as an operator
// deleting it by hand would. "nft add element ..." empties that set. It
// reports whether something matched.
func (f *Fake) Delete(line string) bool {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	s := f.sys
	n := len(s.rules) + len(s.routes)
	s.rules = slices.DeleteFunc(s.rules, func(r rule) bool { return r.String() == line })
	maps.DeleteFunc(s.routes, func(_ routeKey, r route) bool { return r.String() == line })
	s.changedRoutes()
	if len(s.rules)+len(s.routes) != n {
		return true
	}
	for i, l := range s.links {
		for j, a := range l.Addrs {
			if addrLine(a, l.Name) == line {
				s.links[i].Addrs = slices.Delete(l.Addrs, j, j+1)
				return true
			}
		}
	}
	for name, flt := range s.filters {
		if deleteFilterLine(flt, line) {
			if flt.Table == "" {
				delete(s.filters, name)
			}
			return true
		}
	}
	return false
}

// deleteFilterLine removes what line shows from flt and reports whether it
// matched; deleting the table line clears flt.Table, and the caller drops
// the table.
func deleteFilterLine(flt *filter, line string) bool {
	lines := flt.lines()
	t := "inet " + flt.Table
	switch i := slices.Index(lines, line); {
	case i < 0:
		return false
	case i == 0:
		flt.Table = ""
	case strings.HasPrefix(line, "nft add chain"):
		// Deleting a chain takes its rules with it.
		for _, c := range flt.Chains {
			if strings.HasPrefix(line, fmt.Sprintf("nft add chain %s %s ", t, c.Name)) {
				flt.Chains = slices.DeleteFunc(flt.Chains, func(x nftChain) bool { return x == c })
				flt.Rules = slices.DeleteFunc(flt.Rules, func(r nftRule) bool { return r.Chain == c.Name })
				break
			}
		}
	case strings.HasPrefix(line, "nft add counter"):
		flt.Counters = slices.DeleteFunc(flt.Counters, func(c string) bool { return line == fmt.Sprintf("nft add counter %s %s", t, c) })
	case strings.HasPrefix(line, "nft add rule"):
		flt.Rules = slices.DeleteFunc(flt.Rules, func(r nftRule) bool {
			return line == fmt.Sprintf("nft add rule %s %s %s", t, r.Chain, r.Sig)
		})
	case strings.HasPrefix(line, "nft add element"):
		for j := range flt.Sets {
			if strings.HasPrefix(line, fmt.Sprintf("nft add element %s %s ", t, flt.Sets[j].Name)) {
				flt.Sets[j].Ranges = nil
			}
		}
	default:
		return false
	}
	return true
}

// Fail makes every op whose command line (as in error messages, e.g.
// "ip route replace 10.244.2.0/24 dev wgmesh0 ...") contains match fail
// with err; a nil err removes the failure.
func (f *Fake) Fail(match string, err error) {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	if err == nil {
		delete(f.sys.fail, match)
		return
	}
	f.sys.fail[match] = err
}

// Lookup resolves dst for a packet carrying mark the way the kernel's
// policy routing would: rules by priority, longest prefix in each table,
// throw continues with the next rule. It returns the matching route as `ip
// route` shows it, or "" when nothing matches. The packet has no source yet
// (a host socket before the kernel picks one), so rules with a source
// selector do not match; the local table is not modelled.
func (f *Fake) Lookup(dst netip.Addr, mark uint32) string {
	return f.LookupFrom(netip.Addr{}, dst, mark)
}

// LookupFrom is Lookup for a packet from src (a forwarded pod packet, or a
// socket bound to src): rules with a source selector match when it
// contains src. The zero src is Lookup.
func (f *Fake) LookupFrom(src, dst netip.Addr, mark uint32) string {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	fam := familyOf(dst)
	src = src.Unmap()
	for _, ru := range sortedRules(f.sys.rules) {
		if ru.Family != fam || ru.Table == unix.RT_TABLE_LOCAL {
			continue
		}
		if ru.From.IsValid() && !(src.IsValid() && ru.From.Contains(src)) {
			continue
		}
		if (mark&ru.Mask == ru.Mark) == ru.Invert {
			continue
		}
		var best *route
		for _, rt := range f.sys.routes {
			if rt.Table != ru.Table || !rt.Dst.Contains(dst) {
				continue
			}
			if best == nil || rt.Dst.Bits() > best.Dst.Bits() || (rt.Dst.Bits() == best.Dst.Bits() && rt.Metric < best.Metric) {
				best = &rt
			}
		}
		if best == nil || best.Type == typeThrow {
			continue
		}
		return best.spec()
	}
	return ""
}

// Inject offers the strict ingress filter a packet from src arriving on
// interface iif and reports whether it was dropped (and counted).
func (f *Fake) Inject(src netip.Addr, iif string) bool {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	return f.sys.guardAll(func(name string, n *dropCounts) bool {
		return f.sys.guard(name, nftChainIngress, src, iif, nftRuleSig, nftSetName, nftCounter, &n.Ingress)
	})
}

// InjectEgress offers the egress guard a packet to dst leaving on interface
// oif (after whatever routing decided) and reports whether it was dropped
// (and counted).
func (f *Fake) InjectEgress(dst netip.Addr, oif string) bool {
	f.sys.mu.Lock()
	defer f.sys.mu.Unlock()
	return f.sys.guardAll(func(name string, n *dropCounts) bool {
		return f.sys.guard(name, nftChainEgress, dst, oif, nftEgressSig, nftEncryptSetName, nftCounterEgress, &n.Egress)
	})
}

// guardAll offers a packet to every instance's table in name order, as the
// kernel runs every base chain of a hook; the first drop ends it. check
// evaluates one table and counts into its drop counts. The caller holds
// s.mu.
func (s *fakeHost) guardAll(check func(table string, n *dropCounts) bool) bool {
	for _, name := range slices.Sorted(maps.Keys(s.filters)) {
		n := s.drops[name]
		dropped := check(name, &n)
		s.drops[name] = n
		if dropped {
			return true
		}
	}
	return false
}

// guard evaluates the drop rules of chain in table for a packet whose matched
// address is a and whose interface is dev, as the kernel would: a rule
// whose signature is sig(family, iface) drops it when dev is not iface and
// a is in the family's set; the named counter, if it exists, counts it.
// The caller holds s.mu.
func (s *fakeHost) guard(table, chain string, a netip.Addr, dev string, sig func(family, string) string,
	setName func(family) string, counter string, n *uint64) bool {
	flt := s.filters[table]
	if flt == nil || !slices.ContainsFunc(flt.Chains, func(c nftChain) bool { return c.Name == chain }) {
		return false
	}
	a = a.Unmap()
	fam := familyOf(a)
	for _, r := range flt.Rules {
		if r.Chain != chain {
			continue
		}
		iface, ok := ruleIface(r.Sig, fam, sig)
		if !ok || iface == dev {
			continue
		}
		for _, set := range flt.Sets {
			if set.Name != setName(fam) {
				continue
			}
			for _, rg := range set.Ranges {
				if rg.From.Compare(a) <= 0 && a.Compare(rg.To) <= 0 {
					if slices.Contains(flt.Counters, counter) {
						*n++
					}
					return true
				}
			}
		}
	}
	return false
}

// fakeHost is the in-memory host behind a Fake. Several routers (with
// different options) may share one host, as successive agent runs do.
type fakeHost struct {
	mu sync.Mutex

	links []link
	rules []rule
	// routes by the key the kernel replaces them by: at most one per key.
	routes map[routeKey]route
	// sorted is routes in the kernel's dump order (see sortedRoutes); nil
	// when it must be rebuilt. A few single-route changes between two
	// observes update it in place; more, or any bulk change, drop it.
	sorted  []route
	patched int
	// filters are the nftables tables of wgmesh instances by name
	// (including a legacy shared one), drops their drop counts.
	filters map[string]*filter
	drops   map[string]dropCounts
	// foreignNFT are other software's nftables lines, rendered untouched;
	// foreignNFTRules are other software's rules as the mark scan reads
	// them (not rendered).
	foreignNFT      []string
	foreignNFTRules []foreignNFTRule
	fail            map[string]error
}

// newFakeHost returns the host a new Fake starts with; iface is the tunnel
// interface, "" for none.
func newFakeHost(iface string) *fakeHost {
	mp := netip.MustParsePrefix
	ma := netip.MustParseAddr
	s := &fakeHost{fail: map[string]error{}, routes: map[routeKey]route{}, filters: map[string]*filter{}, drops: map[string]dropCounts{}}
	s.links = []link{
		{Name: "lo", MTU: 65536, Addrs: []netip.Prefix{mp("127.0.0.1/8"), mp("::1/128")}},
		{Name: "eth0", MTU: 1500, Addrs: []netip.Prefix{mp("198.18.0.1/15"), mp("2001:db8::1/64")}},
	}
	if iface != "" {
		s.links = append(s.links, link{Name: iface, MTU: 1420, Addrs: []netip.Prefix{mp("fe80::1/64")}})
	}
	for _, f := range []family{v4, v6} {
		s.rules = append(s.rules,
			rule{Family: f, Priority: 0, Table: unix.RT_TABLE_LOCAL, Protocol: unix.RTPROT_KERNEL},
			rule{Family: f, Priority: 32766, Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_KERNEL})
	}
	s.rules = append(s.rules, rule{Family: v4, Priority: 32767, Table: unix.RT_TABLE_DEFAULT, Protocol: unix.RTPROT_KERNEL})
	s.addRoutes(
		route{Table: unix.RT_TABLE_MAIN, Dst: mp("0.0.0.0/0"), Type: typeUnicast, Gw: ma("198.18.0.254"), Dev: "eth0", Protocol: unix.RTPROT_STATIC},
		route{Table: unix.RT_TABLE_MAIN, Dst: mp("198.18.0.0/15"), Type: typeUnicast, Dev: "eth0", Src: ma("198.18.0.1"), Protocol: unix.RTPROT_KERNEL},
		route{Table: unix.RT_TABLE_MAIN, Dst: mp("::/0"), Type: typeUnicast, Gw: ma("2001:db8::fffe"), Dev: "eth0", Protocol: unix.RTPROT_STATIC, Metric: 1024},
		route{Table: unix.RT_TABLE_MAIN, Dst: mp("2001:db8::/64"), Type: typeUnicast, Dev: "eth0", Protocol: unix.RTPROT_KERNEL, Metric: 256},
	)
	return s
}

// fakeView is a fakeHost seen by a router with options o: the system the
// router drives.
type fakeView struct {
	h *fakeHost
	o Options
}

var _ system = fakeView{}

func (v fakeView) observe(ctx context.Context) (observed, error) { return v.h.observe(v.o), nil }
func (v fakeView) do(ctx context.Context, o op) error            { return v.h.do(o) }
func (v fakeView) counters() (dropCounts, error)                 { return v.h.counters(v.o.nftTableName()), nil }

// observe applies the same ownership predicates as the kernel system.
func (s *fakeHost) observe(o Options) observed {
	s.mu.Lock()
	defer s.mu.Unlock()
	var w observed
	for _, l := range s.links {
		w.Links = append(w.Links, link{Name: l.Name, MTU: l.MTU, Addrs: slices.Clone(l.Addrs), Master: l.Master})
		if l.Name == o.Interface {
			w.Ours.LinkMTU = l.MTU
			for _, a := range l.Addrs {
				if ownsAddr(a) {
					w.Ours.Addrs = append(w.Ours.Addrs, a)
				}
			}
		}
	}
	if len(s.routes) > 0 {
		w.Ours.Routes = make([]route, 0, len(s.routes))
	}
	for _, r := range s.sortedRoutes() {
		o.sortObserved(r, &w.Defaults, &w.Connected, &w.Ours.Routes)
	}
	if len(w.Ours.Routes) == 0 {
		w.Ours.Routes = nil
	}
	for _, r := range s.rules {
		if o.ownsRule(r) {
			w.Ours.Rules = append(w.Ours.Rules, r)
		}
		if o.foreignMarkRule(r) {
			w.MarkRules = append(w.MarkRules, r)
		}
	}
	w.MarkNFT = decodeMarking(s.foreignNFTRules, o.FwMark)
	w.Ours.Filter = s.filters[o.nftTableName()].clone()
	if l := s.filters[LegacyNFTTable]; l != nil && legacyOwner(l.sigs(), o.Interface) {
		w.Ours.LegacyFilter = LegacyNFTTable
	}
	return w
}

func (f *filter) clone() *filter {
	if f == nil {
		return nil
	}
	g := *f
	g.Chains = slices.Clone(f.Chains)
	g.Counters = slices.Clone(f.Counters)
	g.Rules = slices.Clone(f.Rules)
	g.Sets = slices.Clone(f.Sets)
	for i := range g.Sets {
		g.Sets[i].Ranges = slices.Clone(g.Sets[i].Ranges)
	}
	return &g
}

// Errors the fake returns where the kernel would fail.
var (
	errFakeNoDevice = errors.New("no such device")
	errFakePrefsrc  = errors.New("invalid prefsrc address")
	errFakeNoSet    = errors.New("no such set")
)

func (s *fakeHost) do(o op) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.fail) > 0 {
		line := o.String()
		for match, err := range s.fail {
			if strings.Contains(line, match) {
				return err
			}
		}
	}
	switch o.kind {
	case opSetMTU:
		l := s.link(o.iface)
		if l == nil {
			return errFakeNoDevice
		}
		l.MTU = o.mtu
	case opAddAddr:
		l := s.link(o.iface)
		if l == nil {
			return errFakeNoDevice
		}
		if !slices.Contains(l.Addrs, o.addr) {
			l.Addrs = append(l.Addrs, o.addr)
		}
	case opDelAddr:
		l := s.link(o.iface)
		if l == nil || !slices.Contains(l.Addrs, o.addr) {
			return nil
		}
		l.Addrs = slices.DeleteFunc(l.Addrs, func(a netip.Prefix) bool { return a == o.addr })
		s.addrRemoved(l, o.addr)
	case opReplaceRoute:
		r := o.route
		if r.Type == typeUnicast {
			if s.link(r.Dev) == nil {
				return errFakeNoDevice
			}
			if r.Src.IsValid() && !s.hasAddr(r.Src) {
				return errFakePrefsrc
			}
		}
		old, had := s.routes[r.key()]
		s.routes[r.key()] = r
		if had {
			s.unsort(old)
		}
		s.resort(r)
	case opDelRoute:
		if s.routes[o.route.key()] == o.route {
			delete(s.routes, o.route.key())
			s.unsort(o.route)
		}
	case opAddRule:
		if !slices.Contains(s.rules, o.rule) {
			s.rules = append(s.rules, o.rule)
		}
	case opDelRule:
		if i := slices.Index(s.rules, o.rule); i >= 0 {
			s.rules = slices.Delete(s.rules, i, i+1)
		}
	case opPutFilter:
		s.filters[o.filter.Table] = o.filter.clone()
		s.drops[o.filter.Table] = dropCounts{}
	case opUpdateSet:
		flt := s.filters[o.table]
		if flt == nil {
			return errFakeNoSet
		}
		i := slices.IndexFunc(flt.Sets, func(x nftSet) bool { return x.Name == o.set.Name })
		if i < 0 {
			return errFakeNoSet
		}
		set := &flt.Sets[i]
		set.Ranges = slices.DeleteFunc(set.Ranges, func(r ipRange) bool { return slices.Contains(o.del, r) })
		set.Ranges = append(set.Ranges, o.add...)
		slices.SortFunc(set.Ranges, func(a, b ipRange) int { return a.From.Compare(b.From) })
	case opDelFilter, opDelLegacyFilter:
		delete(s.filters, o.table)
		delete(s.drops, o.table)
	default:
		return fmt.Errorf("unknown op %d", o.kind)
	}
	return nil
}

// addrRemoved does to routes what the kernel does when address a leaves
// link l: IPv4 routes preferring a as source go; when it was l's last IPv4
// address, every IPv4 route through l goes; IPv6 routes merely lose a as
// preferred source.
func (s *fakeHost) addrRemoved(l *link, a netip.Prefix) {
	last4 := familyOf(a.Addr()) == v4 && !hasFamily(l.Addrs, v4)
	s.changedRoutes()
	maps.DeleteFunc(s.routes, func(_ routeKey, r route) bool {
		return r.family() == v4 && (r.Src == a.Addr() || (last4 && r.Dev == l.Name))
	})
	for k, r := range s.routes {
		if r.family() == v6 && r.Src == a.Addr() {
			r.Src = netip.Addr{}
			s.routes[k] = r
		}
	}
}

func (s *fakeHost) counters(table string) dropCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.drops[table]
}

func (s *fakeHost) addRoutes(rs ...route) {
	for _, r := range rs {
		s.routes[r.key()] = r
	}
	s.changedRoutes()
}

// changedRoutes drops the sorted view after a bulk change of routes.
func (s *fakeHost) changedRoutes() { s.sorted = nil }

// maxPatches bounds the in-place updates of the sorted view between two
// observes; beyond it (a first apply) one sort is cheaper than shifting the
// slice for every route.
const maxPatches = 32

// patch reports whether the sorted view is to be updated in place; past
// maxPatches it drops the view instead.
func (s *fakeHost) patch() bool {
	if s.sorted == nil {
		return false
	}
	if s.patched++; s.patched > maxPatches {
		s.sorted = nil
		return false
	}
	return true
}

// unsort removes r from the sorted view, resort inserts it.
func (s *fakeHost) unsort(r route) {
	if !s.patch() {
		return
	}
	if i, ok := slices.BinarySearchFunc(s.sorted, r, compareRoutes); ok && s.sorted[i] == r {
		s.sorted = slices.Delete(s.sorted, i, i+1)
		return
	}
	s.sorted = nil // not where it should be: rebuild
}

func (s *fakeHost) resort(r route) {
	if !s.patch() {
		return
	}
	i, _ := slices.BinarySearchFunc(s.sorted, r, compareRoutes)
	s.sorted = slices.Insert(s.sorted, i, r)
}

// sortedRoutes returns the routes in the order the kernel dumps them: a
// table's routes by address, which for the routes wgmesh installs is
// compareRoutes' order (checkDumpOrder in the privileged tests checks it).
// Reporting that order lets a resync through the Fake take the path it
// takes on a host; a map has no order. The caller holds s.mu.
func (s *fakeHost) sortedRoutes() []route {
	if s.sorted == nil {
		s.sorted = slices.SortedFunc(maps.Values(s.routes), compareRoutes)
	}
	s.patched = 0
	return s.sorted
}

func (s *fakeHost) link(name string) *link {
	for i := range s.links {
		if s.links[i].Name == name {
			return &s.links[i]
		}
	}
	return nil
}

func (s *fakeHost) hasAddr(a netip.Addr) bool {
	for _, l := range s.links {
		for _, p := range l.Addrs {
			if p.Addr() == a {
				return true
			}
		}
	}
	return false
}

func addrLine(a netip.Prefix, dev string) string {
	return fmt.Sprintf("ip%s address add %s dev %s", familyOf(a.Addr()).ipFlag(), a, dev)
}

// render prints the whole host in the same line format as ours.render.
func (s *fakeHost) render() string {
	var out []string
	links := slices.Clone(s.links)
	slices.SortFunc(links, func(a, b link) int { return strings.Compare(a.Name, b.Name) })
	for _, l := range links {
		out = append(out, fmt.Sprintf("ip link set dev %s mtu %d", l.Name, l.MTU))
		if l.Master != "" {
			out = append(out, fmt.Sprintf("ip link set dev %s master %s", l.Name, l.Master))
		}
	}
	for _, l := range links {
		for _, a := range sortedPrefixes(l.Addrs) {
			out = append(out, addrLine(a, l.Name))
		}
	}
	for _, r := range sortedRules(s.rules) {
		out = append(out, r.String())
	}
	for _, r := range sortedRoutes(slices.Collect(maps.Values(s.routes))) {
		out = append(out, r.String())
	}
	nft := slices.Clone(s.foreignNFT)
	for _, name := range slices.Sorted(maps.Keys(s.filters)) {
		nft = append(nft, s.filters[name].lines()...)
	}
	out = append(out, nft...)
	return strings.Join(out, "\n") + "\n"
}
