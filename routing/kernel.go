package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsCurrent selects the network namespace of the calling process.
var nsCurrent = netns.None()

// kernel is the system backed by netlink (links, addresses, rules, routes)
// and nftables (ingress filter, egress guard, MSS clamp), optionally bound
// to one network namespace. It writes no sysctl.
type kernel struct {
	o  Options
	ns netns.NsHandle
	nl *netlink.Handle

	mu sync.Mutex
	// ifindex maps interface names to indexes as of the last observe, so
	// route ops need no lookup each.
	ifindex map[string]int
	// ownRoutes is how many routes of ours the last observe found: the
	// next one sizes its list by it.
	ownRoutes int
	// markScan is the last scan of other tables' rules for our mark bit
	// (see foreignNFT), made at markScanAt with generation id markGen.
	markScan   []markingRule
	markScanOK bool
	markGen    uint32
	markScanAt time.Time
	// noObjref is set once a filter put failed only because the kernel
	// lacks the nft objref expression (CONFIG_NFT_OBJREF): from then on the
	// guard rules count in per-rule counters instead (see putFilter).
	noObjref atomic.Bool
}

var _ system = (*kernel)(nil)

// netlinkFamilies are the netlink protocols the router's handle opens:
// links, addresses, rules and routes are all rtnetlink. netlink.NewHandleAt
// without a list also opens XFRM and NETFILTER sockets, and a kernel without
// CONFIG_XFRM_USER refuses the XFRM one ("protocol not supported"); nftables
// has its own connection (nft).
var netlinkFamilies = []int{unix.NETLINK_ROUTE}

func newKernel(o Options, ns netns.NsHandle) (*kernel, error) {
	h, err := netlink.NewHandleAt(ns, netlinkFamilies...)
	if err != nil {
		return nil, fmt.Errorf("routing: open netlink socket: %w", err)
	}
	return &kernel{o: o, ns: ns, nl: h, ifindex: map[string]int{}}, nil
}

func (k *kernel) close() { k.nl.Close() }

// dumpRetries bounds retries of netlink dumps interrupted by concurrent
// changes (the kernel then flags the dump as inconsistent).
const dumpRetries = 5

func retryDump[T any](what string, f func() (T, error)) (T, error) {
	var v T
	var err error
	for range dumpRetries {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return v, fmt.Errorf("list %s: %w", what, err)
	}
	return v, nil
}

func (k *kernel) observe(ctx context.Context) (observed, error) {
	var w observed
	links, err := retryDump("links", k.nl.LinkList)
	if err != nil {
		return w, err
	}
	addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return k.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return w, err
	}
	byIndex := map[int]string{}
	index := map[string]int{}
	for _, l := range links {
		a := l.Attrs()
		byIndex[a.Index], index[a.Name] = a.Name, a.Index
	}
	linkAddrs := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			linkAddrs[a.LinkIndex] = append(linkAddrs[a.LinkIndex], p)
		}
	}
	for _, l := range links {
		a := l.Attrs()
		w.Links = append(w.Links, link{Name: a.Name, MTU: a.MTU, Addrs: linkAddrs[a.Index], Master: byIndex[a.MasterIndex]})
		if a.Name == k.o.Interface {
			w.Ours.LinkMTU = a.MTU
			for _, p := range linkAddrs[a.Index] {
				if ownsAddr(p) {
					w.Ours.Addrs = append(w.Ours.Addrs, p)
				}
			}
		}
	}
	k.mu.Lock()
	k.ifindex = index
	k.mu.Unlock()

	// One dump serves both the main table's default routes (the underlay)
	// and our routes in our table (table 0 with RT_FILTER_TABLE lists
	// every table; the library deserialises each route of every table
	// either way). Routes are converted as they arrive, without a list of
	// netlink.Route in between: at 5,000 nodes there are 15,000 of ours.
	type routeDump struct{ defaults, connected, ours []route }
	k.mu.Lock()
	hint := k.ownRoutes
	k.mu.Unlock()
	dump, err := retryDump("routes", func() (routeDump, error) {
		var d routeDump
		if hint > 0 {
			d.ours = make([]route, 0, hint)
		}
		err := k.nl.RouteListFilteredIter(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE,
			func(r netlink.Route) bool {
				if r.Table != unix.RT_TABLE_MAIN && !k.o.ownsTable(r.Table) {
					return true
				}
				rt, ok := fromNLRoute(r, byIndex)
				if !ok {
					return true
				}
				k.o.sortObserved(rt, &d.defaults, &d.connected, &d.ours)
				return true
			})
		return d, err
	})
	if err != nil {
		return w, err
	}
	w.Defaults, w.Connected, w.Ours.Routes = dump.defaults, dump.connected, dump.ours
	if len(w.Ours.Routes) == 0 {
		w.Ours.Routes = nil
	}
	k.mu.Lock()
	k.ownRoutes = len(w.Ours.Routes)
	k.mu.Unlock()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := retryDump("rules", func() ([]netlink.Rule, error) { return k.nl.RuleList(fam) })
		if fam == netlink.FAMILY_V6 && errors.Is(err, unix.EAFNOSUPPORT) {
			// IPv6 is disabled on this host: there are no IPv6 rules, and
			// adding ours fails with an error naming it.
			continue
		}
		if err != nil {
			return w, err
		}
		// Kernels before 4.17 do not report rule protocols (their own rules
		// then show protocol 0 instead of "kernel"). Rules on our table are
		// ours there; give them our protocol so that ownsRule recognises
		// them and they compare equal to the wanted ones.
		protocols := slices.ContainsFunc(rules, func(r netlink.Rule) bool { return r.Protocol != 0 })
		for _, r := range rules {
			ru, ok := fromNLRule(r)
			if !protocols && k.o.ownsTable(ru.Table) {
				ru.Protocol = RouteProtocol
			}
			if ok && k.o.ownsRule(ru) {
				w.Ours.Rules = append(w.Ours.Rules, ru)
			}
			if ok && k.o.foreignMarkRule(ru) {
				w.MarkRules = append(w.MarkRules, ru)
			}
		}
	}
	// Without nftables the routes must still be applied: the failure is
	// reported and putting the table is retried (and fails, reported) on
	// every Apply.
	// With the filter disabled, a host without nftables cannot hold a
	// table of ours either: nothing to report.
	// Other software's nft rules that can set our mark bit are a warning;
	// failing to list them is one too, never a reason not to apply.
	// Without the table (a host without nftables) there is nothing to say.
	if w.MarkNFT, err = k.foreignNFT(); err != nil && !k.o.DisableIngressFilter {
		w.MarkScanErr = fmt.Errorf("list nftables rules of other tables to check for mark bit %#x: %w", k.o.FwMark, err)
	}
	if w.Ours.Filter, w.Ours.LegacyFilter, err = k.observeFilter(); err != nil {
		if !k.o.DisableIngressFilter {
			w.Notes = append(w.Notes, fmt.Errorf("read nftables table inet %s: %w", k.o.nftTableName(), err))
		}
		w.Ours.Filter, w.Ours.LegacyFilter = nil, ""
	}
	return w, nil
}

// degraded says what the kernel lacks that the system works around, and
// what that costs (read after the ops ran, so the Apply that found out
// already reports it).
func (k *kernel) degraded() []string {
	if k.noObjref.Load() && !k.o.DisableIngressFilter {
		return []string{noObjrefWarning(k.o.nftTableName())}
	}
	return nil
}

func (k *kernel) do(ctx context.Context, o op) error {
	switch o.kind {
	case opSetMTU:
		l, err := k.nl.LinkByName(o.iface)
		if err != nil {
			return err
		}
		return k.nl.LinkSetMTU(l, o.mtu)
	case opAddAddr, opDelAddr:
		l, err := k.nl.LinkByName(o.iface)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: ipNetOf(o.addr)}
		if o.kind == opDelAddr {
			return ignore(k.nl.AddrDel(l, a), unix.EADDRNOTAVAIL, unix.ENODEV)
		}
		if familyOf(o.addr.Addr()) == v6 {
			// Without NODAD the address stays tentative for a while and the
			// kernel refuses it as a route's preferred source.
			a.Flags = unix.IFA_F_NODAD
		}
		return ignore(k.nl.AddrAdd(l, a), unix.EEXIST)
	case opReplaceRoute:
		r, err := k.toNLRoute(o.route)
		if err != nil {
			return err
		}
		return k.nl.RouteReplace(r)
	case opDelRoute:
		r, err := k.toNLRoute(o.route)
		if err != nil {
			return err
		}
		return ignore(k.nl.RouteDel(r), unix.ESRCH, unix.ENOENT)
	case opAddRule:
		return ignore(k.nl.RuleAdd(toNLRule(o.rule)), unix.EEXIST)
	case opDelRule:
		return ignore(k.nl.RuleDel(toNLRule(o.rule)), unix.ENOENT)
	case opPutFilter:
		return k.putFilter(o.filter)
	case opUpdateSet:
		return k.updateSet(o.table, o.set, o.add, o.del)
	case opDelFilter, opDelLegacyFilter:
		return k.deleteTable(o.table)
	}
	return fmt.Errorf("unknown op %d", o.kind)
}

// ignore treats the given errnos as success: adding what exists, deleting
// what is gone.
func ignore(err error, errnos ...unix.Errno) error {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return nil
		}
	}
	return err
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

func ipNetOf(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipOf(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func nlFamily(f family) int {
	if f == v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func fromNLRoute(r netlink.Route, names map[int]string) (route, bool) {
	fam := v4
	if r.Family == netlink.FAMILY_V6 {
		fam = v6
	}
	rt := route{
		Table: r.Table, Type: routeType(r.Type), Protocol: uint8(r.Protocol), Metric: r.Priority,
		Src: addrOf(r.Src), Gw: addrOf(r.Gw),
	}
	if r.Dst != nil {
		p, ok := prefixOf(r.Dst)
		if !ok {
			return route{}, false
		}
		rt.Dst = p
	} else if fam == v6 {
		rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if rt.Type == typeUnicast {
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
			rt.Gw = addrOf(r.MultiPath[0].Gw)
		}
		rt.Dev = names[idx]
	}
	return rt, true
}

func (k *kernel) toNLRoute(r route) (*netlink.Route, error) {
	nr := &netlink.Route{
		Family: nlFamily(r.family()), Dst: ipNetOf(r.Dst), Table: r.Table, Type: int(r.Type),
		Protocol: netlink.RouteProtocol(r.Protocol), Priority: r.Metric, Src: ipOf(r.Src), Gw: ipOf(r.Gw),
	}
	if r.Type == typeUnicast && r.Dev != "" {
		k.mu.Lock()
		idx, ok := k.ifindex[r.Dev]
		k.mu.Unlock()
		if !ok {
			l, err := k.nl.LinkByName(r.Dev)
			if err != nil {
				return nil, fmt.Errorf("interface %s: %w", r.Dev, err)
			}
			idx = l.Attrs().Index
		}
		nr.LinkIndex = idx
		if !r.Gw.IsValid() {
			nr.Scope = netlink.SCOPE_LINK
		}
	}
	return nr, nil
}

func fromNLRule(r netlink.Rule) (rule, bool) {
	ru := rule{
		Priority: r.Priority, Table: r.Table, Mark: r.Mark, Invert: r.Invert, Protocol: r.Protocol,
	}
	switch r.Family {
	case netlink.FAMILY_V4:
		ru.Family = v4
	case netlink.FAMILY_V6:
		ru.Family = v6
	default:
		return rule{}, false
	}
	if r.Mask != nil {
		ru.Mask = *r.Mask
	} else if r.Mark != 0 {
		ru.Mask = 0xffffffff
	}
	if p, ok := prefixOf(r.Src); ok {
		ru.From = p
	}
	return ru, true
}

func toNLRule(r rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = nlFamily(r.Family)
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.Mark = r.Mark
	if r.Mask != 0 {
		m := r.Mask
		nr.Mask = &m
	}
	nr.Invert = r.Invert
	nr.Protocol = r.Protocol
	if r.From.IsValid() {
		nr.Src = ipNetOf(r.From)
	}
	return nr
}
