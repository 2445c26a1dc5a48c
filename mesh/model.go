// Package mesh is the pure core of wgmesh: the data model (Node, Peer, Route,
// Problem, Desired), the Derive function that turns a set of Nodes into the
// desired WireGuard and routing state, and the WireGuard key type.
//
// Package mesh does no I/O and starts no goroutines: no files, sockets,
// clocks to wait on, client-go, netlink, wgctrl or nftables; a test enforces
// it. The reconcile loop, the key file and the ports to the outside world are
// in mesh/agent; the sources (mesh/kube, mesh/file), the device and the
// router are adapters, and cmd/wgmesh plugs them together.
package mesh

import (
	"net/netip"
	"time"
)

// Backend names the WireGuard implementation behind a node's interface.
type Backend string

const (
	// BackendKernel is the in-kernel WireGuard module driven over netlink.
	BackendKernel Backend = "kernel"
	// BackendUserspace is wireguard-go running inside the agent on a TUN device.
	BackendUserspace Backend = "userspace"
)

// Node is one member of the cluster as a source sees it: a Kubernetes Node or
// an entry of the peers file. Sources fill only what they could parse; what
// they could not parse is described in Problems so Derive can report it.
type Node struct {
	Name   string
	Labels map[string]string
	// PublicKey is the node's WireGuard public key; the zero Key means no
	// agent has published one (yet).
	PublicKey Key
	// Endpoint is where the node's agent listens; the zero value means none
	// was published.
	Endpoint netip.AddrPort
	// PodCIDRs are the prefixes this node routes for.
	PodCIDRs []netip.Prefix
	// HostIPs are the node's own addresses (InternalIP); used with host
	// encryption.
	HostIPs []netip.Addr
	// Backend is what the node's agent reported it runs (informational).
	Backend Backend
	// Created is the node's seniority: when it joined the cluster, as far
	// as its source can tell. Derive uses only its order, to decide which of
	// several nodes publishing one public key keeps it (the earliest; equal
	// instants are ordered by name). mesh/kube fills it from the Node's
	// metadata.creationTimestamp (whole seconds); mesh/file gives the i-th
	// entry of the peers file (0-based) the instant i seconds after the Unix
	// epoch, so an earlier entry is older. The zero Time means unknown and
	// orders after every known instant: a node whose age is unknown never
	// takes a key from one whose age is known.
	Created time.Time
	// Problems are defects the source found while reading this node, such as
	// a malformed key annotation. A node with an InvalidKey or InvalidEndpoint
	// problem is treated as keyless (or endpoint-less) by Derive.
	Problems []Problem
}

// Peer is one WireGuard peer the local interface must have.
type Peer struct {
	Node       string
	PublicKey  Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix // sorted, masked
	// Keepalive is the persistent keepalive interval; 0 disables it.
	Keepalive time.Duration
}

// RouteKind says what the routing table does with a destination.
type RouteKind int

const (
	// ViaTunnel sends the destination into the WireGuard interface.
	ViaTunnel RouteKind = iota + 1
	// Throw ends the lookup in the wgmesh table so the main table decides
	// (plaintext; used for own CIDRs, unmanaged nodes and, when allowed,
	// keyless nodes).
	Throw
	// Unreachable drops the packet with an ICMP error: the strict answer for
	// a node that cannot be reached encrypted.
	Unreachable
)

func (k RouteKind) String() string {
	switch k {
	case ViaTunnel:
		return "tunnel"
	case Throw:
		return "throw"
	case Unreachable:
		return "unreachable"
	}
	return "unknown"
}

// Route is one entry of the wgmesh routing table.
type Route struct {
	Dst  netip.Prefix
	Kind RouteKind
	// Node is the node this route exists for ("" for routes that belong to no
	// single node, such as the API server's addresses).
	Node string
}

// Reason classifies a Problem.
type Reason string

const (
	ReasonInvalidKey        Reason = "InvalidKey"
	ReasonNoKey             Reason = "NoKey"
	ReasonDuplicateKey      Reason = "DuplicateKey"
	ReasonInvalidEndpoint   Reason = "InvalidEndpoint"
	ReasonNoEndpoint        Reason = "NoEndpoint"
	ReasonDuplicateEndpoint Reason = "DuplicateEndpoint"
	ReasonInvalidCIDR       Reason = "InvalidCIDR"
	ReasonCIDROverlap       Reason = "CIDROverlap"
	ReasonOwnCIDROverlap    Reason = "OwnCIDROverlap"
	ReasonUnmanaged         Reason = "Unmanaged"
	ReasonSelfMissing       Reason = "SelfMissing"
	ReasonSelfKeyMismatch   Reason = "SelfKeyMismatch"
)

// Warning reports whether a problem of reason r is informational: the node
// it names stays programmed as it would be without the problem, so the
// problem leaves no node and no pod CIDR out of the mesh. Only
// DuplicateEndpoint is: WireGuard tells peers apart by key, so two nodes
// publishing one endpoint are both peers, and each is roamed to the address
// its packets actually come from. Every other reason leaves something out.
func (r Reason) Warning() bool { return r == ReasonDuplicateEndpoint }

// Problem is something wrong with one node's input. Problems are reported
// (logs, Events, metrics); they never stop the rest of the mesh. Most leave
// the node, or one of its claims, out of the mesh; those whose Reason is a
// Warning leave everything programmed.
type Problem struct {
	Node   string
	Reason Reason
	Detail string
}

// Desired is everything the local node's data plane must look like. Every
// slice is sorted so two Derive calls on the same input are deep-equal.
type Desired struct {
	// Peers sorted by Node.
	Peers []Peer
	// Routes for the wgmesh table, sorted by Dst (address, then bits).
	Routes []Route
	// Addresses are the tunnel addresses of the local interface, one per
	// enabled family, as single-address prefixes (/32, /128).
	Addresses []netip.Prefix
	// HostRoutes are the routes of the host table, sorted by Dst: one
	// ViaTunnel route per peer host IP (/32, /128). Only packets from
	// PodSources look them up (a policy rule per source), so pod traffic to
	// remote node addresses (API server, kubelet, hostNetwork pods) is
	// encrypted while the host's own traffic to them, the agent's included,
	// stays outside the tunnel.
	HostRoutes []Route
	// PodSources are the local node's own pod CIDRs of the enabled
	// families, sorted and masked: the sources whose packets consult the
	// host table, and the prefixes whose interfaces the router checks
	// against the tunnel's MTU.
	PodSources []netip.Prefix
	// StrictSources are remote pod prefixes whose packets must only ever
	// arrive through the tunnel; the router drops them on any other
	// interface.
	StrictSources []netip.Prefix
	// EncryptOnly are remote pod prefixes that packets may only ever leave
	// for through the tunnel: the router's egress guard drops packets to
	// them on any other interface, whatever marks, rules or routes other
	// software installed. Sorted. They are the peers' pod CIDRs and, in
	// strict mode, the CIDRs of nodes that cannot be reached encrypted;
	// never a Throw destination (own CIDRs, unmanaged nodes, keyless nodes
	// with AllowUnencrypted) and never a prefix holding a peer's endpoint
	// or a KeepOutside address, so the device's own encrypted UDP and the
	// agent's way to the API server are never dropped.
	EncryptOnly []netip.Prefix
	// ClusterCIDRs are the cluster's pod ranges in force (DeriveOptions.ClusterCIDRs
	// as Derive used them: valid, of an enabled family, masked, sorted, none
	// inside another or inside a node's pod CIDR). Empty means pod traffic to
	// a node this agent does not know (removed from its input, or not yet
	// seen) is not covered: it leaves through the main table.
	ClusterCIDRs []netip.Prefix
	// Underlay are the local node's own underlay addresses, most preferred
	// first, without duplicates: its endpoint's address (the one the agent
	// was given, then the one its own entry in the source publishes), then
	// its host IPs (the Node's InternalIPs, the peers-file entry's hostIPs).
	// The router takes the interface holding the first of them it finds as
	// the underlay whose MTU the tunnel's derives from. Empty when no own
	// address is known (yet).
	Underlay []netip.Addr
	// Unencrypted names the nodes whose pod traffic is not encrypted
	// (unmanaged, or keyless with AllowUnencrypted), sorted.
	Unencrypted []string
	// Problems sorted by Node, then Reason.
	Problems []Problem
}

// TunnelAddressMode says how the local interface's address is chosen.
type TunnelAddressMode string

const (
	// TunnelAddressAuto, the default, takes one unicast address per family
	// from the lowest own pod CIDR of that family: for IPv4 its first
	// address (as flannel does; never given to a pod, and a valid source as
	// a /32), for IPv6 its first address + 1 (the first address of an IPv6
	// subnet is the subnet-router anycast address, RFC 4291 2.6.1, not a
	// unicast source). The IPv6 one is the address bridge/host-local IPAM
	// keep for the gateway (on cni0): being on both interfaces of the same
	// host is harmless, it is local either way. A /127 or /128 CIDR gives
	// its first address.
	TunnelAddressAuto TunnelAddressMode = "auto"
	// TunnelAddressFirst takes the first address of each own pod CIDR
	// (the default before "auto"; for IPv6 the subnet-router anycast
	// address).
	TunnelAddressFirst TunnelAddressMode = "first"
	// TunnelAddressNone puts no address on the interface.
	TunnelAddressNone TunnelAddressMode = "none"
	// TunnelAddressFixed uses DeriveOptions.TunnelAddrs.
	TunnelAddressFixed TunnelAddressMode = "fixed"
)

// DeriveOptions steer Derive. Validate is the rule for them as an operator gives
// them (Derive itself skips what it cannot use).
type DeriveOptions struct {
	IPv4, IPv6       bool
	HostEncryption   bool
	AllowUnencrypted bool
	Keepalive        time.Duration
	// Unmanaged reports whether a node is outside the mesh (e.g. matches the
	// --unmanaged-nodes label selector). nil means no node is unmanaged.
	Unmanaged func(labels map[string]string) bool
	// TunnelAddress picks the interface address; "" means TunnelAddressAuto.
	TunnelAddress TunnelAddressMode
	TunnelAddrs   []netip.Addr
	// KeepOutside are addresses that must never be routed into the tunnel
	// with host encryption on (the Kubernetes API server); they get Throw
	// routes. Peers' endpoint addresses are always kept outside.
	KeepOutside []netip.Addr
	// ClusterCIDRs are the cluster's pod ranges (e.g. 10.244.0.0/16). In
	// strict mode every destination inside them that is not a local pod
	// CIDR, a node's pod CIDR or a keep-outside address gets an Unreachable
	// route and is EncryptOnly, so pod traffic to a node this agent does not
	// know (a removed entry, a deleted Node, a node not seen yet) is
	// dropped, never sent in plaintext. With AllowUnencrypted the ranges get
	// Throw routes. Keep-outside addresses inside a range (endpoints, host
	// IPs, the API server) get Throw routes, so they stay reachable outside
	// the tunnel. Invalid prefixes, prefixes covering a whole family, those
	// of a disabled family and those inside (or equal to) a node's pod CIDR
	// are ignored: that node's route covers them.
	ClusterCIDRs []netip.Prefix
}

// DeviceConfig is the complete WireGuard configuration of the local interface.
type DeviceConfig struct {
	PrivateKey Key
	ListenPort int
	// FwMark is set on the device's UDP socket so encrypted packets skip the
	// wgmesh routing table.
	FwMark uint32
	Peers  []Peer
}
