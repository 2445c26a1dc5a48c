// Package routing programs the host side of the mesh: the policy rule that
// sends unmarked traffic into the wgmesh routing table, the table's routes,
// the tunnel addresses and MTU of the WireGuard interface, and the nftables
// table that drops plaintext packets from remote pod CIDRs (strict ingress).
//
// The package has one diff engine and two places to carry it out. plan
// compares a model of the OS state (rules, routes, addresses, link MTU, the
// nftables sets) with the state a mesh.Desired asks for and returns an
// ordered list of operations; a system executes them. The kernel system
// (netlink + nftables) is what New returns; the in-memory system behind
// NewFake renders the resulting state as sorted `ip`/`nft` text for golden
// tests. Both read the current state, filter it to what is ours with the
// same predicates and go through the same plan, so the fake cannot drift
// from production.
//
// Everything the router installs belongs to one instance, named by its
// interface, and is recognisable as its own: routes carry the route
// protocol RouteProtocol and live in Options.Table, rules look up
// Options.Table and carry RouteProtocol, addresses are those on the tunnel
// interface and the nftables table is "inet " + NFTTableName(interface).
// Nothing else is ever modified, including another instance's entries of
// the same protocol in another table.
package routing

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/wgmesh/wgmesh/mesh"
)

const (
	// DefaultInterface is the WireGuard interface the device package creates.
	DefaultInterface = "wgmesh0"

	// DefaultTable is the routing table holding wgmesh's routes. 51820 is
	// WireGuard's default UDP port; wg-quick uses it as table number by the
	// same convention, so operators recognise it. It is far from the tables
	// the kernel reserves (253 default, 254 main, 255 local) and from those
	// CNIs allocate (Calico's WireGuard table 1, Cilium's 200-202 and
	// 2004/2005), and table IDs are 32-bit, so no one is squeezed.
	DefaultTable = 51820

	// DefaultPriority is the priority of the policy rule. It must come after
	// the local table lookup (priority 0), so traffic to the host's own
	// addresses is delivered locally, and before the main table (32766), so
	// remote pod traffic cannot leave through the CNI's plaintext routes.
	// 99 also precedes the source-based rules that distributions and
	// multi-NIC setups add from 100 upwards. Calico's own WireGuard rule
	// defaults to 99 as well; running both encryptions at once makes no
	// sense, and equal priorities would still coexist.
	DefaultPriority = 99

	// DefaultFwMark is the firewall mark bit the WireGuard device puts on its
	// UDP socket (device.Options / mesh.DeviceConfig.FwMark); the rule
	// matches `not fwmark <mark>/<mark>`, so encrypted packets skip the
	// wgmesh table and leave through the main table instead of looping into
	// the tunnel. Only this single bit is tested (mask = mark), so any other
	// bits other software sets are ignored. Bit 17 (0x20000) is outside
	// kube-proxy's 0x4000 (masquerade) and 0x8000 (drop), outside Cilium's
	// 0xf00 nibble of magic marks (0x200 to-proxy, 0xa00, 0xb00, 0xc00,
	// 0xe00, 0xf00), and outside Istio's 1337 (0x539). It does fall inside
	// Calico's default IptablesMarkMask 0xffff0000, from whose lowest bits
	// Felix allocates its marks: with Calico, either narrow Calico's mask
	// (e.g. 0xfff00000) or pick another --fwmark bit.
	DefaultFwMark uint32 = 0x20000

	// RouteProtocol is the route protocol number on every route and rule
	// wgmesh installs; it is how a restarted agent (or `wgmesh cleanup`)
	// finds its own entries in any table and leaves everyone else's alone.
	// 0x57 (87, "W") is unassigned in iproute2's rt_protos (which reserves
	// 0-4, 8-16, 18, 42, 99, 186-189 and 192) and differs from the numbers
	// CNIs use (bird 12, Calico's Felix 80, keepalived 18). `ip route` shows
	// it as "proto 87".
	RouteProtocol uint8 = 0x57

	// LegacyNFTTable is the nftables table (family inet) versions before
	// per-instance tables shared among all instances. The router deletes it
	// once its own table exists, if the table's rules name its interface,
	// and leaves it alone otherwise (it is another instance's).
	LegacyNFTTable = "wgmesh"
)

// Options configure a Router. Start from DefaultOptions.
type Options struct {
	// Interface is the WireGuard interface routes point at.
	Interface string
	// Table is the routing table of wgmesh routes; Priority the rule's
	// priority; FwMark the mark bit of the device's encrypted packets.
	Table    int
	Priority int
	FwMark   uint32
	// IPv4 and IPv6 enable the families. Routes, addresses and strict
	// sources of a disabled family are ignored.
	IPv4, IPv6 bool
	// MTU fixes the link MTU; 0 derives it from the underlay (AutoMTU).
	MTU int
	// UnderlayAddr is the node's own endpoint address; the interface holding
	// it is the underlay for AutoMTU. Zero (or an address no interface
	// holds, e.g. a NAT address) means the default route's interface.
	UnderlayAddr netip.Addr
	// DisableIngressFilter skips (and removes) the strict ingress nftables
	// table.
	DisableIngressFilter bool
	Logger               *slog.Logger
}

// DefaultOptions returns the documented defaults: interface wgmesh0, table
// 51820, priority 99, mark 0x20000, both families, auto MTU, ingress filter
// on.
func DefaultOptions() Options {
	return Options{
		Interface: DefaultInterface,
		Table:     DefaultTable,
		Priority:  DefaultPriority,
		FwMark:    DefaultFwMark,
		IPv4:      true,
		IPv6:      true,
	}
}

// validate rejects options that would hijack or shadow system routing.
func (o Options) validate() error {
	switch {
	case o.Interface == "" || len(o.Interface) > 15:
		return fmt.Errorf("routing options: interface %q: must be 1-15 characters", o.Interface)
	case o.Table <= 0 || o.Table == 253 || o.Table == 254 || o.Table == 255:
		return fmt.Errorf("routing options: route table %d: must be positive and not one of the kernel's tables default (253), main (254), local (255)", o.Table)
	case o.Priority <= 0 || o.Priority >= 32766:
		return fmt.Errorf("routing options: rule priority %d: must be between 1 and 32765 (after the local table, before main)", o.Priority)
	case o.FwMark == 0:
		return fmt.Errorf("routing options: fwmark 0: must have at least one bit set, or encrypted packets loop into the tunnel")
	case !o.IPv4 && !o.IPv6:
		return fmt.Errorf("routing options: both IPv4 and IPv6 are disabled: enable at least one family")
	case o.MTU < 0 || (o.MTU > 0 && o.MTU < minMTU) || o.MTU > 65535:
		return fmt.Errorf("routing options: MTU %d: must be 0 (auto) or between %d and 65535", o.MTU, minMTU)
	}
	return nil
}

// nftTableName is the name of the instance's nftables table (family inet).
// Everything that names the table goes through it.
func (o Options) nftTableName() string { return NFTTableName(o.Interface) }

// NFTTableName is the nftables table (family inet) of the instance whose
// interface is iface: "wgmesh_" followed by the interface name, in which
// every byte other than an ASCII letter, digit, '-' or '.' is written as
// '_' and two lower-case hex digits ("wg_0" gives "wgmesh_wg_5f0"). The
// result is a bare nft identifier (no quoting needed in `nft list table
// inet wgmesh_wgmesh0`), distinct for distinct interfaces, and never the
// legacy shared table's name.
func NFTTableName(iface string) string {
	const hex = "0123456789abcdef"
	b := []byte("wgmesh_")
	for i := 0; i < len(iface); i++ {
		switch c := iface[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.':
			b = append(b, c)
		default:
			b = append(b, '_', hex[c>>4], hex[c&0xf])
		}
	}
	return string(b)
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger.With("component", "routing")
	}
	return slog.New(slog.DiscardHandler)
}

// Router programs the routing side of the mesh.
//
// Contract:
//   - Apply makes the OS state equal the Desired: one policy rule per enabled
//     family, exactly Desired.Routes in the wgmesh table, exactly
//     Desired.Addresses on the interface, the link MTU, src_valid_mark
//     (net.ipv4.conf.all, or per interface on the underlay and the tunnel
//     where /proc/sys is read-only), and the strict ingress filter. It reads the current state every time, so a
//     periodic Apply repairs entries deleted by hand.
//   - Apply adds and replaces before it deletes: a route that changes kind is
//     replaced atomically, a new rule exists before an old one goes, a new
//     address before the old one is removed.
//   - Apply only ever touches entries that are its own (see the package
//     comment) and garbage-collects its own stale ones. Entries a previous
//     run left with another table are another table's: Cleanup with those
//     options removes them. The legacy shared nftables table is deleted
//     once the instance's own exists, if its rules name the interface.
//   - Apply converges as far as it can: one failure does not stop the rest.
//     It returns every failure joined with errors.Join, each wrapped with %w
//     and naming the rule, route, address or table. A tunnel route that
//     cannot be installed falls back to an unreachable route: traffic is
//     dropped rather than sent in plaintext. While the interface is absent,
//     tunnel routes are unreachable routes. src_valid_mark is the exception:
//     failing to set it is a Status warning, not an error (see target).
//   - Cleanup removes everything Apply installed (rules, routes, addresses,
//     the nftables table, and the legacy shared table if it is this
//     instance's); the interface itself belongs to the device. The MTU and
//     src_valid_mark stay.
//   - Status is cheap and safe to call concurrently with Apply.
type Router interface {
	mesh.Router
	Cleanup(ctx context.Context) error
	Status() Status
}

// Status is what the router last achieved.
type Status struct {
	// LinkMTU is the interface's MTU after the last Apply (0 before).
	LinkMTU int
	// PodMTU is the largest MTU pods may use for traffic through the tunnel;
	// the CNI's MTU must not exceed it. It equals LinkMTU: pod packets are
	// encapsulated exactly once, by the tunnel.
	PodMTU int
	// IngressDropped counts plaintext packets the strict ingress filter has
	// dropped since its table was created.
	IngressDropped uint64
	// Warnings are problems of the last Apply that did not fail it but
	// leave the host short of the intended state: src_valid_mark that could
	// be set neither globally nor on the underlay and tunnel interfaces.
	// They are also logged, rate-limited.
	Warnings []string
}

// WireGuard overhead per packet on the underlay: outer IP header (20 or 40
// bytes), UDP header (8), WireGuard data header (16: type, receiver, counter)
// and the Poly1305 tag (16).
const (
	overheadIPv4 = 20 + 8 + 16 + 16
	overheadIPv6 = 40 + 8 + 16 + 16
	// minMTU is the smallest MTU an IPv4 host must accept (RFC 791); a
	// fixed MTU below it is certainly a typo. IPv6 needs 1280.
	minMTU = 576
)

// AutoMTU is the tunnel MTU for an underlay of the given MTU: minus 60 bytes
// of encapsulation over IPv4, 80 over IPv6 (the same values wg-quick uses).
// It does not clamp: a tunnel MTU below 1280 disables IPv6 on the interface,
// but a larger one would fragment every full-sized packet on the underlay.
func AutoMTU(underlayMTU int, ipv6Underlay bool) int {
	overhead := overheadIPv4
	if ipv6Underlay {
		overhead = overheadIPv6
	}
	return underlayMTU - overhead
}

// New returns the kernel Router: netlink for links, addresses, rules and
// routes, nftables for the ingress filter.
func New(o Options) (Router, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	sys, err := newKernel(o, nsCurrent)
	if err != nil {
		return nil, err
	}
	return newRouter(o, sys), nil
}

// Cleanup removes everything wgmesh's router installed for o's interface,
// table and priority, without needing a running agent (`wgmesh cleanup`).
func Cleanup(ctx context.Context, o Options) error {
	if err := o.validate(); err != nil {
		return err
	}
	sys, err := newKernel(o, nsCurrent)
	if err != nil {
		return err
	}
	defer sys.close()
	return newRouter(o, sys).Cleanup(ctx)
}
