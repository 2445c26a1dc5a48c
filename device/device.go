// Package device owns the local WireGuard interface of wgmesh.
//
// Two backends sit behind one Device interface:
//
//   - userspace: wireguard-go inside the agent on a kernel TUN device with the
//     library's offloads (virtio-net header, TSO/GRO on the TUN, UDP GSO/GRO on
//     the socket). The TUN device is persistent: when the agent dies the
//     interface, its addresses and its routes stay and packets routed into it
//     are dropped, never sent elsewhere in plaintext; the next agent re-attaches
//     to the same interface. The UAPI socket is served at
//     /var/run/wireguard/<iface>.sock, so `wg show` and wgctrl work.
//   - kernel: a `wireguard` link created over rtnetlink.
//
// Both backends are configured through wgctrl (one code path, see Configure;
// in-memory devices, Options.TUN and Bind, speak the same UAPI in process):
// the desired configuration is diffed against the device's current state and
// only what differs is sent, so unchanged peers keep their sessions.
//
// Interface addresses, routes and MTU changes after Open belong to package
// routing, not to this package.
package device

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/mesh"
)

// Choice selects the backend at Open.
type Choice string

const (
	// ChoiceAuto uses the kernel module when a `wireguard` link can be
	// created and falls back to userspace otherwise (logged, with the reason).
	ChoiceAuto Choice = "auto"
	// ChoiceUserspace always uses wireguard-go on a TUN device.
	ChoiceUserspace Choice = "userspace"
	// ChoiceKernel always uses the kernel module; Open fails without it.
	ChoiceKernel Choice = "kernel"
)

// DefaultName is the interface name used when Options.Name is empty.
const DefaultName = "wgmesh0"

// DefaultMTU is the initial MTU when Options.MTU is 0: 1500 minus the 80 bytes
// of WireGuard overhead over an IPv6 underlay, the value wg-quick uses. The
// routing layer sets the real MTU (derived from the underlay) afterwards.
const DefaultMTU = 1420

// DefaultInflightPackets is the agent's default for Options.InflightPackets
// (its --inflight-packets): with it the userspace data path held 80-99 MiB
// under one and eight TCP streams where wireguard-go alone held 186-236 MiB,
// at twice the throughput (bench/README.md, "The window by default").
const DefaultInflightPackets = 128

// linkAlias marks interfaces created by wgmesh (IFLA_IFALIAS) when
// Options.Alias is empty, so an interface of the same name that belongs to
// someone else is never adopted or deleted. Any alias whose first word is
// "wgmesh" is wgmesh's (instance.ParseAlias); the agent records its
// instance's parameters after it.
const linkAlias = instance.AliasTag

// Options configure Open, which checks them with Validate first.
type Options struct {
	// Name is the interface name; "" means DefaultName.
	Name string
	// Backend is auto, userspace or kernel; "" means auto.
	Backend Choice
	// MTU is the MTU of a newly created interface, 68-65535; 0 means
	// DefaultMTU. An existing interface keeps its MTU (routing owns it after
	// creation).
	MTU int
	// DisableOffloads opens the TUN device without the virtio-net header, so
	// the kernel hands wireguard-go one packet per read: no TSO/GRO/checksum
	// offload on the TUN and, as a consequence, no UDP GSO batching on send.
	// wireguard-go has no switch for UDP GRO on its receive socket, which
	// stays on. Meant for benchmarks; userspace backend only.
	DisableOffloads bool
	// InflightPackets bounds, per direction, the packets wireguard-go holds
	// between taking them in and handing them on (TUN read to UDP send,
	// UDP receive to TUN write); 0 means no bound (wireguard-go's own
	// behaviour); the agent's default is DefaultInflightPackets. Each
	// held packet costs a 64 KiB buffer, so the bound caps that memory at
	// about 2 × (InflightPackets + 128) × 64 KiB; the excess waits in the
	// TUN queue and the socket buffer, in the kernel. Userspace backend
	// only.
	InflightPackets int
	// Alias is the link alias the interface carries: the instance's
	// parameters as instance.Params.Alias renders them; "" means the bare
	// "wgmesh". It must mark the interface as wgmesh's (first word
	// "wgmesh"). A created interface gets it, an adopted one of ours is
	// updated to it.
	Alias string
	// Logger receives structured logs; nil discards them. Key material is
	// never logged.
	Logger *slog.Logger

	// TUN and Bind, set together, make Open build a userspace device on them
	// instead of a kernel TUN device and UDP sockets: the in-memory pairs of
	// package devicetest (tuntest.ChannelTUN, bindtest.ChannelBind). No
	// kernel interface and no UAPI socket exist then: Configure and Stats
	// speak UAPI to wireguard-go in process, so it runs without root; Name
	// is only a label.
	TUN  tun.Device
	Bind conn.Bind
}

// Device is the local WireGuard interface.
//
// Configure may be called any number of times and is safe for concurrent use
// with Stats. After Close every method but Name and Backend
// returns an error wrapping net.ErrClosed.
type Device interface {
	// Configure makes the interface's WireGuard state equal cfg and touches
	// nothing that already matches: an unchanged peer is not re-sent (that
	// could interrupt its session), the private key, listen port and fwmark
	// are written only when they differ. cfg.ListenPort 0 means "keep the
	// current port". Allowed IPs that move between peers are first withdrawn
	// from their old owner and then granted to the new one, so no address is
	// ever routed to a peer that does not own it (it is dropped for the
	// instant in between). A peer's endpoint is written when the desired
	// one changes, not when WireGuard roamed the peer to the source address
	// of its authenticated packets (NAT). Errors are *Error values.
	Configure(ctx context.Context, cfg mesh.DeviceConfig) error
	// Name is the interface name.
	Name() string
	// Backend is the implementation in use.
	Backend() mesh.Backend
	// Stats returns per-peer counters and handshake times, sorted by public
	// key.
	Stats(ctx context.Context) ([]PeerStats, error)
	// Offloads reports, for the userspace backend, whether its data path
	// uses TUN GSO writes and UDP GSO sends (OffloadTUNGSO, then
	// OffloadUDPGSO) and, when not, why; it falls back from either by
	// itself when the kernel refuses it at run time. The kernel backend
	// returns nil. Safe for concurrent use, also after Close.
	Offloads() []OffloadState
	// Inflight reports the userspace data path's in-flight windows, tx
	// then rx (Options.InflightPackets); nil without a bound and for the
	// kernel backend. Safe for concurrent use, also after Close.
	Inflight() []InflightState
	// Close releases the device: wireguard-go and the UAPI socket stop, the
	// interface and its routes stay (a userspace interface then drops every
	// packet until an agent re-attaches). Idempotent. Removing the
	// interface as well is Remove's job, after Close.
	Close() error
}

// PeerStats are one peer's counters as the device reports them.
type PeerStats struct {
	PublicKey  mesh.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	// ReceiveBytes and TransmitBytes count encrypted bytes since the peer was
	// added.
	ReceiveBytes, TransmitBytes int64
	// LastHandshake is the zero Time when no handshake has completed.
	LastHandshake time.Time
}

// Info is the state of an interface as read from outside the owning process.
type Info struct {
	Name       string
	Backend    mesh.Backend
	PublicKey  mesh.Key
	ListenPort int
	FwMark     uint32
	Peers      []PeerStats
}

// ErrNotFound is wrapped by Inspect when no WireGuard device of that name
// answers (no interface, or a userspace interface whose agent is not running).
var ErrNotFound = errors.New("no WireGuard device")

// Open creates the interface or re-attaches to an existing one left by a
// previous agent, sets it up and returns it ready for Configure.
func Open(ctx context.Context, o Options) (Device, error) {
	return open(ctx, o, systemEnv())
}

// Inspect reads an interface's WireGuard state through wgctrl, from any
// process (for `wgmesh status`). Keys in the result are public.
func Inspect(name string) (Info, error) {
	return inspect(name, systemEnv())
}

// Remove deletes the interface of either backend created by wgmesh (its
// alias starts with "wgmesh"); an absent interface is not an error (for
// `wgmesh cleanup`), anyone else's interface of that name is refused. An
// agent still attached to a userspace interface loses it, so stop the agent
// first.
func Remove(name string) error {
	return remove(name, systemEnv())
}
