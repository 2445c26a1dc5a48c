// Package devicetest joins two wgmesh userspace devices in memory, without
// TUN devices, sockets or network namespaces: each runs wireguard-go on a
// channel TUN (tuntest) and the two talk over a channel bind (bindtest), as
// wireguard-go's own tests do. Everything else is the production path: the
// devices are opened with device.Open and configured with Configure, so
// tests and benchmarks exercise the same diff and wgctrl configuration as
// the agent. Only the transport differs: an in-memory device speaks UAPI to
// wireguard-go in process instead of over /var/run/wireguard, so a pair
// needs no root and runs anywhere.
package devicetest

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
)

// Options shape a pair.
type Options struct {
	// Logger receives both devices' logs; nil discards them.
	Logger *slog.Logger
	// Keepalive is the persistent keepalive of both peers; 0 disables it.
	Keepalive time.Duration
	// InflightPackets is both devices' device.Options.InflightPackets.
	InflightPackets int
}

// End is one side of a pair.
type End struct {
	Device device.Device
	// TUN is the in-memory TUN of NewPair (nil from NewPairOn): write IP
	// packets to TUN.Outbound to send them through the tunnel, read the
	// peer's from TUN.Inbound.
	TUN        *tuntest.ChannelTUN
	PrivateKey mesh.Key
	// Addr is this end's inner IPv4 address, inside Prefix.
	Addr netip.Addr
	// Prefix is routed to this end by the other end (its allowed IPs).
	Prefix netip.Prefix
	// Config is what NewPair applied with Configure.
	Config mesh.DeviceConfig
}

// Pair is two devices configured as each other's only peer.
type Pair [2]*End

// NewPair opens and configures two in-memory devices on channel TUNs and
// binds, closed in tb.Cleanup. End i has address 10.244.(i+1).1 and routes
// 10.244.(i+1).0/24.
func NewPair(tb testing.TB, o Options) Pair {
	tb.Helper()
	ch := [2]*tuntest.ChannelTUN{tuntest.NewChannelTUN(), tuntest.NewChannelTUN()}
	binds := bindtest.NewChannelBinds()
	p := NewPairOn(tb, [2]tun.Device{ch[0].TUN(), ch[1].TUN()}, [2]conn.Bind{binds[0], binds[1]}, o)
	p[0].TUN, p[1].TUN = ch[0], ch[1]
	return p
}

// NewPairOn is NewPair on the caller's TUNs and binds (batching or
// misbehaving fakes). The binds follow bindtest's endpoint convention: end
// i's peer is at 127.0.0.1 port i+1.
func NewPairOn(tb testing.TB, tuns [2]tun.Device, binds [2]conn.Bind, o Options) Pair {
	tb.Helper()
	suffix := randomSuffix(tb)
	var p Pair
	for i := range p {
		priv, err := mesh.GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		e := &End{
			PrivateKey: priv,
			Addr:       netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 1}),
			Prefix:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
		}
		d, err := device.Open(tb.Context(), device.Options{
			Name:            fmt.Sprintf("wgmt%s%c", suffix, 'a'+i),
			Backend:         device.ChoiceUserspace,
			Logger:          o.Logger,
			TUN:             tuns[i],
			Bind:            binds[i],
			InflightPackets: o.InflightPackets,
		})
		if err != nil {
			tb.Fatalf("open in-memory device %d: %v", i, err)
		}
		tb.Cleanup(func() { d.Close() })
		e.Device = d
		p[i] = e
	}
	for i, e := range p {
		other := p[1-i]
		e.Config = mesh.DeviceConfig{
			PrivateKey: e.PrivateKey,
			Peers: []mesh.Peer{{
				Node:      fmt.Sprintf("end%d", 1-i),
				PublicKey: other.PrivateKey.PublicKey(),
				// bindtest routes by port: bind 0 reaches bind 1 as
				// endpoint 1, bind 1 reaches bind 0 as endpoint 2. The
				// address is never used for a real packet.
				Endpoint:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(i+1)),
				AllowedIPs: []netip.Prefix{other.Prefix},
				Keepalive:  o.Keepalive,
			}},
		}
		if err := e.Device.Configure(tb.Context(), e.Config); err != nil {
			tb.Fatalf("configure in-memory device %d: %v", i, err)
		}
	}
	return p
}

func randomSuffix(tb testing.TB) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// Send puts packet into end from's TUN and waits until it comes out of the
// other end's TUN, returning what arrived. Packets that arrive meanwhile and
// differ (none are expected) are skipped.
func (p Pair) Send(from int, packet []byte, timeout time.Duration) ([]byte, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	select {
	case p[from].TUN.Outbound <- packet:
	case <-deadline.C:
		return nil, fmt.Errorf("end %d did not accept the packet within %v", from, timeout)
	}
	for {
		select {
		case got := <-p[1-from].TUN.Inbound:
			if string(got) == string(packet) {
				return got, nil
			}
		case <-deadline.C:
			return nil, fmt.Errorf("packet from end %d did not arrive at end %d within %v", from, 1-from, timeout)
		}
	}
}

// Ping sends an ICMP echo request from end from to the other end's address
// through the tunnel and waits for it to arrive intact.
func (p Pair) Ping(from int, timeout time.Duration) error {
	_, err := p.Send(from, tuntest.Ping(p[1-from].Addr, p[from].Addr), timeout)
	return err
}

// UDPPacket returns an IPv4/UDP packet of total length size (at least 28)
// from src to dst, for throughput tests. The UDP checksum is left zero
// (allowed for IPv4); the IPv4 header checksum is set.
func UDPPacket(src, dst netip.Addr, size int) []byte {
	const ipHdr, udpHdr = 20, 8
	if size < ipHdr+udpHdr {
		size = ipHdr + udpHdr
	}
	pkt := make([]byte, size)
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(size))
	pkt[8] = 64 // TTL
	pkt[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	binary.BigEndian.PutUint16(pkt[10:], ipChecksum(pkt[:ipHdr]))
	binary.BigEndian.PutUint16(pkt[20:], 40000) // source port
	binary.BigEndian.PutUint16(pkt[22:], 9)     // discard
	binary.BigEndian.PutUint16(pkt[24:], uint16(size-ipHdr))
	return pkt
}

func ipChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
