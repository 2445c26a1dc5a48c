package device

import (
	"errors"
	"log/slog"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// oversizeBind lets wireguard-go send datagrams larger than the route MTU
// to the peer. That happens when the tunnel MTU plus the encapsulation
// exceeds the underlay's, as when the router raises the tunnel MTU to
// IPv6's minimum of 1280 on a small underlay (routing.Options.MTU). A
// single such datagram leaves in IP fragments (the socket keeps the
// kernel's default IP_PMTUDISC_WANT), but wireguard-go coalesces a batch
// into one UDP GSO send, and the kernel refuses a GSO segment larger than
// the route MTU with EMSGSIZE: every bulk transfer would stall. Once that
// happens for a family, batches to that family are sent datagram by
// datagram, which the kernel fragments, until the bind is opened again.
//
// The same fallback covers a kernel that refuses UDP GSO batches with
// EINVAL; a refusal with EIO (no checksum offload on the NIC) is handled by
// wireguard-go's StdNetBind itself, which stops coalescing and says so with
// conn.ErrUDPGSODisabled. Either way the bind records the fallback in the
// device's offload state (Device.Offloads), for status and metrics.
//
// Wrapping the bind costs wireguard-go's sticky-source route listener (it
// runs only for a bare *conn.StdNetBind); a source address made stale by a
// route change is then cleared by the handshake retry timer instead, a few
// seconds later.
type oversizeBind struct {
	conn.Bind
	log *slog.Logger
	off *offloadTracker
	// tx and rx are the device's packet windows (see inflight): Send
	// releases tx, the receive functions wait for and fill rx. Nil: no
	// bound.
	tx, rx *inflight
	// idx are the receiver indices of this device's handshakes, learnt
	// from what Send sends; the rx window counts only datagrams addressed
	// to them. Set with rx.
	idx *localIndices
	// split[0] is set for IPv4 endpoints, split[1] for IPv6 ones.
	split [2]atomic.Bool
}

var _ conn.Bind = (*oversizeBind)(nil)

func newOversizeBind(b conn.Bind, log *slog.Logger, off *offloadTracker) *oversizeBind {
	return &oversizeBind{Bind: b, log: log, off: off}
}

// Open implements conn.Bind; a new socket may see another route, so the
// batches are tried whole again.
func (b *oversizeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.split[0].Store(false)
	b.split[1].Store(false)
	b.off.reopened(OffloadUDPGSO)
	fns, actual, err := b.Bind.Open(port)
	if b.rx == nil {
		return fns, actual, err
	}
	for i, f := range fns {
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			b.rx.wait()
			n, err := f(bufs, sizes, eps)
			b.rx.add(b.idx.dataPackets(bufs[:n], sizes[:n]))
			return n, err
		}
	}
	return fns, actual, err
}

// Send implements conn.Bind.
func (b *oversizeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	fam := 0
	if ep.DstIP().Is6() {
		fam = 1
	}
	defer b.tx.release(len(bufs))
	if b.rx != nil {
		b.idx.learn(bufs)
	}
	if len(bufs) > 1 && b.split[fam].Load() {
		return b.sendEach(bufs, ep)
	}
	err := b.Bind.Send(bufs, ep)
	var disabled conn.ErrUDPGSODisabled
	if errors.As(err, &disabled) {
		// The library has stopped coalescing on this socket and sent the
		// batch again; it logs only at verbose level.
		b.off.fellBack(OffloadUDPGSO, "the kernel refused a UDP GSO send ("+disabled.Error()+"); sending datagrams one by one")
		b.log.Warn("the kernel refused a UDP GSO send (the NIC may lack TX checksum offload): wireguard-go sends datagrams one by one on this socket",
			"endpoint", ep.DstToString(), "err", disabled.RetryErr)
	}
	if len(bufs) < 2 {
		return err
	}
	var msg, reason string
	switch {
	case errors.Is(err, unix.EMSGSIZE):
		msg = "UDP GSO batches to the peers exceed the underlay's MTU (tunnel MTU plus encapsulation is larger): " +
			"sending datagrams one by one, the kernel fragments them; raise the underlay MTU to restore full speed"
		reason = "UDP GSO batches exceed the underlay's MTU (EMSGSIZE); sending datagrams one by one, fragmented"
	case errors.Is(err, unix.EINVAL):
		msg = "the kernel refused a UDP GSO batch: sending datagrams one by one until the socket is reopened"
		reason = "the kernel refused a UDP GSO batch (EINVAL); sending datagrams one by one"
	default:
		return err
	}
	if !b.split[fam].Swap(true) {
		b.off.fellBack(OffloadUDPGSO, reason)
		b.log.Warn(msg, "endpoint", ep.DstToString(), "err", err)
	}
	// Datagrams before the refused one may have left already; sending
	// them again is harmless, the peer's replay window drops duplicates.
	return b.sendEach(bufs, ep)
}

// WireGuard message framing (the protocol's, as wireguard-go's device
// package defines it): a transport data message starts with type 4 and has
// a 16-byte header and a 16-byte tag around its payload; with no payload it
// is a keepalive.
const (
	messageTransportType = 4
	messageKeepaliveSize = 32
)

// sendEach sends bufs one datagram per call, so none is coalesced; it
// returns the first error and keeps going after it.
func (b *oversizeBind) sendEach(bufs [][]byte, ep conn.Endpoint) error {
	var first error
	for i := range bufs {
		if err := b.Bind.Send(bufs[i:i+1], ep); err != nil && first == nil {
			first = err
		}
	}
	return first
}
