package routing

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
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
	// SrcValidMark is the interface's own net.ipv4.conf.<name>.src_valid_mark.
	// The kernel system reads it only for the interfaces markDevs names.
	SrcValidMark bool
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
// Options.nftTableName) as far as the router can observe it. A filter whose
// structure (everything but the set elements) differs from the wanted one
// is replaced as a whole.
type filter struct {
	// Table is the table's name.
	Table string
	// Chain reports that the base chain exists with the expected type, hook
	// and priority.
	Chain bool
	// Counter reports that the named drop counter exists.
	Counter bool
	// Rules are the rules' signatures, in chain order.
	Rules []string
	// Sets are the address sets, sorted by name.
	Sets []nftSet
}

type nftSet struct {
	Name   string
	Family family
	Ranges []ipRange
}

// Names inside the instance's table.
const (
	nftChain   = "prerouting"
	nftCounter = "strict_drops"
	nftSet4    = "strict4"
	nftSet6    = "strict6"
)

func nftSetName(f family) string {
	if f == v6 {
		return nftSet6
	}
	return nftSet4
}

// nftRuleSig is the rule dropping plaintext packets of one family, in nft
// syntax. It is also stored as the rule's user data, which is how the router
// recognises the rule when it reads it back.
func nftRuleSig(f family, iface string) string {
	proto, match := "ipv4", "ip"
	if f == v6 {
		proto, match = "ipv6", "ip6"
	}
	return fmt.Sprintf("meta nfproto %s iifname != %q %s saddr @%s counter name %q drop",
		proto, iface, match, nftSetName(f), nftCounter)
}

// ruleIface extracts the tunnel interface from a rule signature of family f.
func ruleIface(sig string, f family) (string, bool) {
	prefix := nftRuleSig(f, "")
	prefix = prefix[:strings.Index(prefix, `""`)]
	if !strings.HasPrefix(sig, prefix) {
		return "", false
	}
	q, err := strconv.QuotedPrefix(sig[len(prefix):])
	if err != nil {
		return "", false
	}
	name, err := strconv.Unquote(q)
	return name, err == nil && sig == nftRuleSig(f, name)
}

// legacyOwner reports whether the legacy shared table, whose drop rules
// carry the signatures sigs as user data, belongs to the instance of iface:
// a signature names iface. The table was written whole by one instance, so
// all its rules name the same interface; a table without a readable
// signature is no one's in particular and is left alone.
func legacyOwner(sigs []string, iface string) bool {
	for _, sig := range sigs {
		for _, f := range []family{v4, v6} {
			if name, ok := ruleIface(sig, f); ok && name == iface {
				return true
			}
		}
	}
	return false
}

// sameShape reports whether two filters differ at most in set elements.
func (f *filter) sameShape(g *filter) bool {
	if f.Table != g.Table || f.Chain != g.Chain || f.Counter != g.Counter || !slices.Equal(f.Rules, g.Rules) || len(f.Sets) != len(g.Sets) {
		return false
	}
	for i := range f.Sets {
		if f.Sets[i].Name != g.Sets[i].Name || f.Sets[i].Family != g.Sets[i].Family {
			return false
		}
	}
	return true
}

func (f *filter) lines() []string {
	t := "inet " + f.Table
	out := []string{"nft add table " + t}
	if f.Chain {
		out = append(out, fmt.Sprintf("nft add chain %s %s { type filter hook prerouting priority raw; }", t, nftChain))
	}
	if f.Counter {
		out = append(out, fmt.Sprintf("nft add counter %s %s", t, nftCounter))
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
		out = append(out, fmt.Sprintf("nft add rule %s %s %s", t, nftChain, r))
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
	Addrs []netip.Prefix
	// SrcValidMark is net.ipv4.conf.all.src_valid_mark.
	SrcValidMark bool
	// SrcValidMarkDevs, observed, are the interfaces among markDevs whose
	// own src_valid_mark is 1; wanted, they are the interfaces to set it on
	// when the `all` value cannot be written (see target).
	SrcValidMarkDevs []string
	Rules            []rule
	Routes           []route
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
	Ours     ours
	// Notes are partial read failures (nftables) that must not keep the
	// routes from being applied; Apply reports them.
	Notes []error
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
// links, addresses, sysctl, rules, routes, nftables.
func (s ours) render(iface string) string {
	var out []string
	if s.LinkMTU > 0 {
		out = append(out, fmt.Sprintf("ip link set dev %s mtu %d", iface, s.LinkMTU))
	}
	for _, a := range sortedPrefixes(s.Addrs) {
		out = append(out, fmt.Sprintf("ip%s address add %s dev %s", familyOf(a.Addr()).ipFlag(), a, iface))
	}
	if s.SrcValidMark {
		out = append(out, srcValidMarkLine("all", 1))
	}
	for _, dev := range slices.Sorted(slices.Values(s.SrcValidMarkDevs)) {
		out = append(out, srcValidMarkLine(dev, 1))
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

// srcValidMarkLine is the sysctl command setting src_valid_mark of dev
// ("all" for the global value). sysctl's dotted notation writes dots in
// interface names (VLANs: eth0.100) as slashes.
func srcValidMarkLine(dev string, v int) string {
	return fmt.Sprintf("sysctl -w net.ipv4.conf.%s.src_valid_mark=%d", strings.ReplaceAll(dev, ".", "/"), v)
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, comparePrefix)
	return ps
}

// comparePrefix orders IPv4 before IPv6, then by address and length.
func comparePrefix(a, b netip.Prefix) int {
	if c := cmp.Compare(familyOf(a.Addr()), familyOf(b.Addr())); c != 0 {
		return c
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
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
	if c := comparePrefix(a.Dst, b.Dst); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Metric, b.Metric); c != 0 {
		return c
	}
	return cmp.Compare(a.spec(), b.spec())
}
