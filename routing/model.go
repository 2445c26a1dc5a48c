package routing

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/internal/prefixes"
)

// This file models the OS state the router reads and writes. The kernel
// system converts netlink and nftables objects to and from these types; the
// fake keeps them in memory. Both render through the same String methods.

// family is an address family.
type family uint8

const (
	v4 family = 4
	v6 family = 6
)

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return v4
	}
	return v6
}

// ipFlag is the `ip` command's family flag ("" or " -6").
func (f family) ipFlag() string {
	if f == v6 {
		return " -6"
	}
	return ""
}

// routeType mirrors the kernel's rtm_type values the router uses.
type routeType uint8

const (
	typeUnicast     routeType = unix.RTN_UNICAST
	typeUnreachable routeType = unix.RTN_UNREACHABLE
	typeThrow       routeType = unix.RTN_THROW
)

// link is a network interface as far as the router cares.
type link struct {
	Name  string
	MTU   int
	Addrs []netip.Prefix
	// Master is the bridge (or other master device) the interface is
	// enslaved to, "" for none: a pod's veth names its CNI bridge.
	Master string
}

// rule is a policy routing rule.
type rule struct {
	Family   family
	Priority int
	// From is a source selector; only foreign rules have one.
	From     netip.Prefix
	Mark     uint32
	Mask     uint32
	Invert   bool
	Table    int
	Protocol uint8
}

// String renders the rule as the `ip rule add` command that creates it.
func (r rule) String() string { return "ip" + r.Family.ipFlag() + " rule add " + r.spec() }

func (r rule) spec() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pref %d", r.Priority)
	if r.Invert {
		b.WriteString(" not")
	}
	if r.From.IsValid() {
		fmt.Fprintf(&b, " from %s", r.From)
	}
	if r.Mark != 0 || r.Mask != 0 {
		fmt.Fprintf(&b, " fwmark %#x/%#x", r.Mark, r.Mask)
	}
	fmt.Fprintf(&b, " lookup %s", tableName(r.Table))
	if r.Protocol != 0 {
		fmt.Fprintf(&b, " proto %s", protoName(r.Protocol))
	}
	return b.String()
}

// route is one route in some table.
type route struct {
	Table int
	Dst   netip.Prefix
	Type  routeType
	// Dev and Gw only for unicast routes; Src is the preferred source.
	Dev      string
	Gw       netip.Addr
	Src      netip.Addr
	Protocol uint8
	// Metric as the kernel reports it (IPv6 turns 0 into 1024).
	Metric int
}

func (r route) family() family { return familyOf(r.Dst.Addr()) }

// String renders the route as the `ip route add` command that creates it.
func (r route) String() string { return "ip" + r.family().ipFlag() + " route add " + r.spec() }

func (r route) spec() string {
	var b strings.Builder
	switch r.Type {
	case typeThrow:
		b.WriteString("throw ")
	case typeUnreachable:
		b.WriteString("unreachable ")
	case typeUnicast:
	default:
		fmt.Fprintf(&b, "type%d ", r.Type)
	}
	b.WriteString(r.Dst.String())
	if r.Gw.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.Dev != "" {
		fmt.Fprintf(&b, " dev %s", r.Dev)
	}
	fmt.Fprintf(&b, " table %s", tableName(r.Table))
	if r.Protocol != 0 {
		fmt.Fprintf(&b, " proto %s", protoName(r.Protocol))
	}
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	if r.Metric != defaultMetric(r.family()) {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	return b.String()
}

// key identifies a route the way the kernel does for replace: the same key
// means RouteReplace overwrites it.
func (r route) key() routeKey { return routeKey{r.Table, r.Dst, r.Metric} }

type routeKey struct {
	Table  int
	Dst    netip.Prefix
	Metric int
}

// defaultMetric is the metric the kernel reports for a route added with
// metric 0.
func defaultMetric(f family) int {
	if f == v6 {
		return 1024
	}
	return 0
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_LOCAL:
		return "local"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	}
	return fmt.Sprint(t)
}

func protoName(p uint8) string {
	switch p {
	case unix.RTPROT_KERNEL:
		return "kernel"
	case unix.RTPROT_BOOT:
		return "boot"
	case unix.RTPROT_STATIC:
		return "static"
	}
	return fmt.Sprintf("%#x", p)
}

// filter is the instance's nftables table (family inet, named by
// Options.nftTableName) as far as the router can observe it:
// the strict ingress filter, the egress guard and the MSS clamp. A filter
// whose structure (everything but the set elements) differs from the wanted
// one is replaced as a whole.
type filter struct {
	// Table is the table's name (family inet), Options.nftTableName.
	Table string
	// Chains are the base chains, sorted by name.
	Chains []nftChain
	// Counters are the named counters, sorted.
	Counters []string
	// Sets are the address sets, sorted by name.
	Sets []nftSet
	// Rules are the rules' signatures, grouped by chain in the order of
	// Chains, in chain order within each.
	Rules []nftRule
}

// nftChain is a base chain of type filter. A chain of another type is
// observed with Hook "?", which no wanted chain has.
type nftChain struct {
	Name string
	// Hook is the netfilter hook by its nft name (prerouting, forward,
	// output, postrouting).
	Hook string
	// Priority is the chain's priority number (nft's raw is -300, mangle
	// -150).
	Priority int
}

// nftRule is one rule: its chain and its signature, the rule in nft syntax,
// which is also stored as the rule's user data so the router recognises it
// when it reads it back.
type nftRule struct {
	Chain string
	Sig   string
}

type nftSet struct {
	Name   string
	Family family
	Ranges []ipRange
}

// Names inside the instance's table.
const (
	// nftChainIngress is the ingress filter's chain, nftChainEgress the egress
	// guard's, nftChainForward and nftChainOutput the MSS clamp's.
	nftChainIngress = "prerouting"
	nftChainEgress  = "postrouting"
	nftChainForward = "forward"
	nftChainOutput  = "output"
	// nftCounter counts the ingress filter's drops, nftCounterEgress the
	// egress guard's.
	nftCounter       = "strict_drops"
	nftCounterEgress = "egress_drops"
	// nftSet4/6 hold the strict sources (ingress), nftEncrypt4/6 the
	// encrypt-only destinations (egress).
	nftSet4     = "strict4"
	nftSet6     = "strict6"
	nftEncrypt4 = "encrypt4"
	nftEncrypt6 = "encrypt6"
)

// Chain priorities (nft's named priorities).
const (
	nftPrioRaw    = -300
	nftPrioMangle = -150
)

func nftSetName(f family) string {
	if f == v6 {
		return nftSet6
	}
	return nftSet4
}

func nftEncryptSetName(f family) string {
	if f == v6 {
		return nftEncrypt6
	}
	return nftEncrypt4
}

func nftFamilyWords(f family) (proto, match string) {
	if f == v6 {
		return "ipv6", "ip6"
	}
	return "ipv4", "ip"
}

// nftRuleSig is the ingress rule dropping plaintext packets of one family,
// in nft syntax.
func nftRuleSig(f family, iface string) string {
	proto, match := nftFamilyWords(f)
	return fmt.Sprintf("meta nfproto %s iifname != %q %s saddr @%s counter name %q drop",
		proto, iface, match, nftSetName(f), nftCounter)
}

// nftEgressSig is the egress guard's rule of one family, in nft syntax.
func nftEgressSig(f family, iface string) string {
	proto, match := nftFamilyWords(f)
	return fmt.Sprintf("meta nfproto %s oifname != %q %s daddr @%s counter name %q drop",
		proto, iface, match, nftEncryptSetName(f), nftCounterEgress)
}

// nftMSSSig is an MSS clamp rule for TCP SYNs leaving through (dir
// "oifname") or arriving from (dir "iifname") the tunnel.
func nftMSSSig(dir, iface string) string {
	return fmt.Sprintf("%s %q tcp flags syn / syn,rst tcp option maxseg size set rt mtu", dir, iface)
}

// normalize sorts what has no order of its own, so that an observed and a
// wanted filter compare equal when they hold the same.
func (f *filter) normalize() {
	slices.SortFunc(f.Chains, func(a, b nftChain) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(f.Counters)
	slices.SortFunc(f.Sets, func(a, b nftSet) int { return strings.Compare(a.Name, b.Name) })
	slices.SortStableFunc(f.Rules, func(a, b nftRule) int { return strings.Compare(a.Chain, b.Chain) })
}

// sigs are the signatures of f's rules, in order.
func (f *filter) sigs() []string {
	out := make([]string, len(f.Rules))
	for i, r := range f.Rules {
		out[i] = r.Sig
	}
	return out
}

// legacyOwner reports whether the legacy shared table, whose drop rules
// carry the signatures sigs as user data, belongs to the instance of iface:
// a signature names iface. The table was written whole by one instance, so
// all its rules name the same interface; a table without a readable
// signature is no one's in particular and is left alone.
func legacyOwner(sigs []string, iface string) bool {
	for _, sig := range sigs {
		for _, f := range []family{v4, v6} {
			if name, ok := ruleIface(sig, f, nftRuleSig); ok && name == iface {
				return true
			}
		}
	}
	return false
}

// sameShape reports whether two filters differ at most in set elements.
func (f *filter) sameShape(g *filter) bool {
	if f.Table != g.Table || !slices.Equal(f.Chains, g.Chains) || !slices.Equal(f.Counters, g.Counters) ||
		!slices.Equal(f.Rules, g.Rules) || len(f.Sets) != len(g.Sets) {
		return false
	}
	for i := range f.Sets {
		if f.Sets[i].Name != g.Sets[i].Name || f.Sets[i].Family != g.Sets[i].Family {
			return false
		}
	}
	return true
}

// nftPrioName renders a priority as nft does: by name where it has one.
func nftPrioName(p int) string {
	switch p {
	case nftPrioRaw:
		return "raw"
	case nftPrioMangle:
		return "mangle"
	case 0:
		return "filter"
	}
	return fmt.Sprint(p)
}

func (f *filter) lines() []string {
	t := "inet " + f.Table
	out := []string{"nft add table " + t}
	for _, c := range f.Chains {
		out = append(out, fmt.Sprintf("nft add chain %s %s { type filter hook %s priority %s; }", t, c.Name, c.Hook, nftPrioName(c.Priority)))
	}
	for _, c := range f.Counters {
		out = append(out, fmt.Sprintf("nft add counter %s %s", t, c))
	}
	for _, s := range f.Sets {
		typ := "ipv4_addr"
		if s.Family == v6 {
			typ = "ipv6_addr"
		}
		out = append(out, fmt.Sprintf("nft add set %s %s { type %s; flags interval; }", t, s.Name, typ))
		if len(s.Ranges) > 0 {
			els := make([]string, len(s.Ranges))
			for i, r := range s.Ranges {
				els[i] = r.String()
			}
			out = append(out, fmt.Sprintf("nft add element %s %s { %s }", t, s.Name, strings.Join(els, ", ")))
		}
	}
	for _, r := range f.Rules {
		out = append(out, fmt.Sprintf("nft add rule %s %s %s", t, r.Chain, r.Sig))
	}
	return out
}

// ours is the part of the OS state the router manages. As observed it holds
// only entries recognised as wgmesh's; as wanted it is the target.
type ours struct {
	// LinkMTU of the tunnel interface; 0 when the interface is absent
	// (observed) or when the MTU is to be left alone (wanted).
	LinkMTU int
	// Addrs on the tunnel interface (link-local addresses excluded).
	Addrs  []netip.Prefix
	Rules  []rule
	Routes []route
	// Filter is the instance's nftables table; nil when absent (or
	// unwanted).
	Filter *filter
	// LegacyFilter, observed, is the name of the table an older version
	// shared by all instances ("wgmesh", LegacyNFTTable) when it exists and
	// its rules name our interface; "" otherwise. It is never wanted.
	LegacyFilter string
}

// observed is everything a system reports: the router's own entries plus
// the facts it needs about the rest of the host.
type observed struct {
	// Links are all interfaces with their addresses, for finding the
	// underlay and checking the tunnel interface exists.
	Links []link
	// Defaults are the default routes of the main table (underlay).
	Defaults []route
	// Connected are the main table's other routes straight out of an
	// interface (unicast, a device, no gateway), such as a CNI's per-pod
	// routes: with the links' addresses and masters they tell which
	// interfaces face the local pods (podInterfaces).
	Connected []route
	Ours      ours
	// Notes are partial read failures (nftables) that must not keep the
	// routes from being applied; Apply reports them.
	Notes []error
	// MarkRules are other software's policy rules matching our mark bit
	// (foreignMarkRule), MarkNFT other tables' nft rules that can set it,
	// and MarkScanErr why the nft rules could not be listed. They become
	// Status warnings.
	MarkRules   []rule
	MarkNFT     []markingRule
	MarkScanErr error
}

func (w observed) link(name string) (link, bool) {
	for _, l := range w.Links {
		if l.Name == name {
			return l, true
		}
	}
	return link{}, false
}

// render writes the state as sorted command lines, section by section:
// links, addresses, rules, routes, nftables.
func (s ours) render(iface string) string {
	var out []string
	if s.LinkMTU > 0 {
		out = append(out, fmt.Sprintf("ip link set dev %s mtu %d", iface, s.LinkMTU))
	}
	for _, a := range sortedPrefixes(s.Addrs) {
		out = append(out, fmt.Sprintf("ip%s address add %s dev %s", familyOf(a.Addr()).ipFlag(), a, iface))
	}
	for _, r := range sortedRules(s.Rules) {
		out = append(out, r.String())
	}
	for _, r := range sortedRoutes(s.Routes) {
		out = append(out, r.String())
	}
	if s.Filter != nil {
		out = append(out, s.Filter.lines()...)
	}
	return strings.Join(out, "\n") + "\n"
}

// sortedPrefixes returns ps sorted by family as the rendered commands are
// (familyOf: an IPv4-mapped address counts as IPv4), then in prefixes'
// order.
func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := cmp.Compare(familyOf(a.Addr()), familyOf(b.Addr())); c != 0 {
			return c
		}
		return prefixes.Compare(a, b)
	})
	return ps
}

func sortedRules(rs []rule) []rule {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b rule) int {
		if c := cmp.Compare(a.Family, b.Family); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.spec(), b.spec())
	})
	return rs
}

// sortedRoutes orders by family, table, destination and metric; the
// rendered text (costly) only breaks the rare remaining ties. Input that is
// in order already (what target makes of Derive's sorted routes) comes back
// as it is, without a copy: callers only read the result.
func sortedRoutes(rs []route) []route {
	if slices.IsSortedFunc(rs, compareRoutes) {
		return rs
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, compareRoutes)
	return rs
}

func compareRoutes(a, b route) int {
	if c := cmp.Compare(a.family(), b.family()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Table, b.Table); c != 0 {
		return c
	}
	if c := prefixes.Compare(a.Dst, b.Dst); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Metric, b.Metric); c != 0 {
		return c
	}
	return cmp.Compare(a.spec(), b.spec())
}
