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
// Wrapping the bind costs wireguard-go's sticky-source route listener (it
// runs only for a bare *conn.StdNetBind); a source address made stale by a
// route change is then cleared by the handshake retry timer instead, a few
// seconds later.
type oversizeBind struct {
	conn.Bind
	log *slog.Logger
	// split[0] is set for IPv4 endpoints, split[1] for IPv6 ones.
	split [2]atomic.Bool
}

var _ conn.Bind = (*oversizeBind)(nil)

func newOversizeBind(b conn.Bind, log *slog.Logger) *oversizeBind {
	return &oversizeBind{Bind: b, log: log}
}

// Open implements conn.Bind; a new socket may see another route, so the
// batches are tried whole again.
func (b *oversizeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.split[0].Store(false)
	b.split[1].Store(false)
	return b.Bind.Open(port)
}

// Send implements conn.Bind.
func (b *oversizeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	fam := 0
	if ep.DstIP().Is6() {
		fam = 1
	}
	if len(bufs) > 1 && b.split[fam].Load() {
		return b.sendEach(bufs, ep)
	}
	err := b.Bind.Send(bufs, ep)
	if len(bufs) < 2 || !errors.Is(err, unix.EMSGSIZE) {
		return err
	}
	if !b.split[fam].Swap(true) {
		b.log.Warn("UDP GSO batches to the peers exceed the underlay's MTU (tunnel MTU plus encapsulation is larger): "+
			"sending datagrams one by one, the kernel fragments them; raise the underlay MTU to restore full speed",
			"endpoint", ep.DstToString(), "err", err)
	}
	// Datagrams before the refused one may have left already; sending
	// them again is harmless, the peer's replay window drops duplicates.
	return b.sendEach(bufs, ep)
}

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
