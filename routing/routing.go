// Package routing programs the host side of the mesh: the policy rule that
// sends unmarked traffic into the wgmesh routing table, the table's routes,
// the tunnel addresses and MTU of the WireGuard interface, and the nftables
// table that drops plaintext packets from remote pod CIDRs (strict ingress),
// drops packets to remote pod CIDRs leaving outside the tunnel (egress
// guard) and clamps the TCP MSS through the tunnel. It also reports other
// software that uses its mark bit (see marks.go).
//
// The package has one diff engine and two places to carry it out. plan
// compares a model of the OS state (rules, routes, addresses, link MTU, the
// nftables sets) with the state a mesh.Desired asks for and returns an
// ordered list of operations; a system executes them. The kernel system
// (netlink + nftables) is what New returns; the in-memory system of the
// package's tests (fakehost_test.go) renders the resulting state as sorted
// `ip`/`nft` text for golden tests. Both read the current state, filter it
// to what is ours with the same predicates and go through the same plan, so
// the fake cannot drift from production.
//
// Everything the router installs belongs to one instance, named by its
// interface, and is recognisable as its own: routes carry the route
// protocol RouteProtocol and live in one of its tables (Options.Table,
// Options.HostTable), rules look up one of those tables and carry
// RouteProtocol, addresses are those on the tunnel interface and the
// nftables table is "inet " + NFTTableName(interface). Nothing else is ever
// modified, including another instance's entries of the same protocol in
// another table.
//
// Two tables: Options.Table holds mesh.Desired.Routes and is looked up by
// every unmarked packet (rule `not fwmark M/M`, Options.Priority);
// Options.HostTable holds mesh.Desired.HostRoutes, the peers' host IPs,
// and is looked up only by unmarked packets from the local pod CIDRs
// (rules `from <pod CIDR> fwmark 0/M`, i.e. the mark bit clear, at
// Options.Priority-1). Pods' traffic to other nodes' addresses is thereby
// encrypted, while the host's own traffic to them (the agent's to the API
// server and to the peers' endpoints, whose source is a node address) never
// enters the tunnel.
package routing

import (
	"context"
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

	// DefaultHostTable is the routing table of the host routes: one route
	// into the tunnel per peer's host IP, looked up only by packets from
	// the local pod CIDRs (rules `from <pod CIDR> fwmark 0/M lookup 51821`
	// at priority Priority-1). It is the table after DefaultTable,
	// so the two are recognisable as a pair, and clear of the same tables
	// as DefaultTable.
	DefaultHostTable = 51821

	// DefaultFwMark is the firewall mark bit the WireGuard device puts on its
	// UDP socket (device.Options / mesh.DeviceConfig.FwMark); the rule
	// matches `not fwmark <mark>/<mark>`, so encrypted packets skip the
	// wgmesh table and leave through the main table instead of looping into
	// the tunnel. Only this single bit is tested (mask = mark), so any other
	// bits other software sets are ignored; but software that sets this bit
	// on pod traffic makes it skip the table (the egress guard then drops
	// it, and the router warns about the rule).
	//
	// Bit 13 (0x2000) is the one bit none of the usual neighbours assigns
	// (docs/coexist/egress.md has the table and sources): kube-proxy uses
	// 0x4000 (masquerade) and 0x8000 (drop); Calico takes its marks from
	// IptablesMarkMask (0xffff0000 by default, 0xff000000 in old releases;
	// eBPF mode 0x1ff00000); Cilium puts its magic values in 0x0f00, the
	// identity in 0xffff00ff and kube-proxy's bits in 0xf000; Tailscale
	// owns 0xff0000 (0x40000, 0x80000); Istio uses 0x539 and 0x111 under
	// mask 0xfff; wg-quick marks 51820 (0xca6c); Kilo uses no mark. The
	// only overlap is Cilium's IPsec key index (0xf000), which does not run
	// together with a second encryption. The previous default 0x20000 is
	// Calico's "pass" mark with its default mask, Tailscale's range and a
	// Cilium identity bit. An agent upgraded from it replaces its rule
	// cleanly: a rule looking up our table is ours whatever its mark, so the
	// new rule is added and then the old one deleted.
	DefaultFwMark uint32 = 0x2000

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

// Options configure a Router. Start from DefaultOptions; New and Cleanup
// check them with Validate.
type Options struct {
	// Interface is the WireGuard interface routes point at.
	Interface string
	// Table is the routing table of wgmesh routes; Priority the rule's
	// priority; FwMark the mark bit of the device's encrypted packets.
	Table    int
	Priority int
	FwMark   uint32
	// HostTable is the routing table of mesh.Desired.HostRoutes (pod
	// traffic to peers' host IPs); its rules, one per own pod CIDR, have
	// priority Priority-1, so Priority must be at least 2.
	HostTable int
	// IPv4 and IPv6 enable the families. Routes, addresses and strict
	// sources of a disabled family are ignored.
	IPv4, IPv6 bool
	// MTU fixes the link MTU; 0 derives it from the underlay (AutoMTU).
	// One rule holds for both (Validate): with IPv6 on, the tunnel MTU is
	// never below 1280, IPv6's minimum link MTU, below which the kernel
	// removes IPv6 from the interface. A fixed MTU below it is refused; an
	// automatic one below it is raised to 1280 with a Status warning, and
	// full-sized outer packets are then fragmented on the underlay (both
	// backends' sockets allow that, see AutoMTU). With IPv6 off the floor
	// is 576.
	MTU int
	// UnderlayAddr is the node's own endpoint address (--endpoint); the
	// interface holding it is the underlay for AutoMTU. It is tried before
	// the addresses each Desired gives (mesh.Desired.Underlay: the own
	// entry's endpoint, InternalIP, host IPs). When none is known, or no
	// interface holds any (e.g. a NAT address), the default route's
	// interface is the underlay.
	UnderlayAddr netip.Addr
	// DisableIngressFilter skips (and removes) the whole nftables table:
	// the strict ingress filter, the egress guard and the MSS clamp. The
	// agent never sets it (strict mode needs both filters); it is for tests
	// and hosts without nftables.
	DisableIngressFilter bool
	Logger               *slog.Logger
}

// DefaultOptions returns the documented defaults: interface wgmesh0, table
// 51820, host table 51821, priority 99, mark 0x2000, both families, auto
// MTU, ingress filter on.
func DefaultOptions() Options {
	return Options{
		Interface: DefaultInterface,
		Table:     DefaultTable,
		HostTable: DefaultHostTable,
		Priority:  DefaultPriority,
		FwMark:    DefaultFwMark,
		IPv4:      true,
		IPv6:      true,
	}
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
//     Desired.Addresses on the interface, the link MTU (see Options.MTU) and
//     the nftables table (strict ingress filter, egress guard, MSS clamp).
//     It reads the current state every time, so a periodic Apply repairs
//     entries deleted by hand. It writes no sysctl: no host-wide knob and no
//     other interface's (see target for why src_valid_mark is not needed).
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
//     tunnel routes are unreachable routes.
//   - Cleanup removes everything Apply installed (rules, routes, addresses,
//     the nftables table, and the legacy shared table if it is this
//     instance's); the interface itself belongs to the device, and its MTU
//     stays until the device removes it. Apply changes nothing outside
//     those entries and the tunnel interface, so there is nothing else to
//     restore.
//   - Status is cheap and safe to call concurrently with Apply.
type Router interface {
	// Apply makes the OS state equal d, adding before deleting, and returns
	// every failure joined (it converges as far as it can).
	Apply(ctx context.Context, d mesh.Desired) error
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
	// EgressDropped counts packets to remote pod CIDRs (Desired.EncryptOnly)
	// the egress guard has dropped because they were about to leave on an
	// interface other than the tunnel, since the table was created.
	EgressDropped uint64
	// Warnings are problems of the last Apply that did not fail it but
	// leave the host short of the intended state: an automatic tunnel MTU
	// raised to IPv6's minimum (outer packets fragment), local pod
	// interfaces whose MTU exceeds PodMTU, other software's policy rules
	// or nft rules that use the mark bit (each naming the rule, for nft
	// its table, chain and handle). One line each, naming the values and
	// the remedy. They are also logged, rate-limited.
	Warnings []string
}

// WireGuard overhead per packet on the underlay: outer IP header (20 or 40
// bytes), UDP header (8), WireGuard data header (16: type, receiver, counter)
// and the Poly1305 tag (16).
const (
	overheadIPv4 = 20 + 8 + 16 + 16
	overheadIPv6 = 40 + 8 + 16 + 16
)

// The smallest tunnel MTUs (Options.Validate).
const (
	// MinMTUIPv6 is IPv6's minimum link MTU (RFC 8200): the kernel removes
	// IPv6 from an interface with a smaller MTU, addresses and routes
	// included.
	MinMTUIPv6 = 1280
	// MinMTUIPv4 is the smallest datagram every IPv4 host must accept (RFC
	// 791); a smaller tunnel MTU is certainly a mistake.
	MinMTUIPv4 = 576
)

// AutoMTU is the tunnel MTU for an underlay of the given MTU: minus 60 bytes
// of encapsulation over IPv4, 80 over IPv6 (the same values wg-quick uses).
// It does not apply the floor of Options.Validate; the router does, and raises a
// result below it to the floor: full-sized outer packets are then larger
// than the underlay MTU and are fragmented by the sender. Both backends
// allow that: the kernel module sends with DF clear and skb->ignore_df set
// for both families (drivers/net/wireguard/socket.c), and wireguard-go's
// UDP sockets keep the kernel default IP_PMTUDISC_WANT, under which a
// datagram larger than the route MTU leaves in fragments. (The kernel
// refuses such datagrams in a UDP GSO batch; the device package then sends
// the batch one datagram at a time.)
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
	if err := o.Validate(); err != nil {
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
	if err := o.Validate(); err != nil {
		return err
	}
	sys, err := newKernel(o, nsCurrent)
	if err != nil {
		return err
	}
	defer sys.close()
	return newRouter(o, sys).Cleanup(ctx)
}
