package device

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// Offload names one offload of the userspace data path that a kernel may
// refuse at run time, so that the data path has to fall back from it.
type Offload string

const (
	// OffloadTUNGSO is wireguard-go coalescing the decrypted packets of one
	// flow into one super-packet and writing it to the TUN device with a
	// virtio-net GSO header (TSO/USO toward the kernel). Without it every
	// packet is written on its own.
	OffloadTUNGSO Offload = "tun_gso"
	// OffloadUDPGSO is wireguard-go sending a batch of encrypted datagrams
	// to one peer as one UDP_SEGMENT send. Without it every datagram is
	// sent on its own (still in one sendmmsg).
	OffloadUDPGSO Offload = "udp_gso"
)

// OffloadState says whether the data path uses one offload now and, when
// not, why.
type OffloadState struct {
	Kind Offload
	// Active is true while the offload is in use.
	Active bool
	// Reason says why it is not in use: switched off by configuration,
	// not offered by the kernel, or refused by the kernel at run time (with
	// the error). Empty while Active.
	Reason string
	// Fallbacks counts how often the data path switched the offload off at
	// run time because the kernel refused it, since Open.
	Fallbacks uint64
	// Since is when the last such fallback happened; zero when none did.
	Since time.Time
}

// offloadTracker is the offload state of one userspace device, written by
// its TUN and bind wrappers (from wireguard-go's goroutines) and read by
// Offloads.
type offloadTracker struct {
	mu    sync.Mutex
	state [2]OffloadState // OffloadTUNGSO, OffloadUDPGSO
	// initial is each offload's state at Open, restored when the bind's
	// socket is opened again (UDP only: a new socket is probed anew).
	initial [2]OffloadState
	now     func() time.Time
}

func offloadIndex(k Offload) int {
	if k == OffloadTUNGSO {
		return 0
	}
	return 1
}

// newOffloadTracker starts from what Open found: tun and udp are the
// initial states of OffloadTUNGSO and OffloadUDPGSO.
func newOffloadTracker(tunState, udpState OffloadState) *offloadTracker {
	tunState.Kind, udpState.Kind = OffloadTUNGSO, OffloadUDPGSO
	t := &offloadTracker{now: time.Now}
	t.state = [2]OffloadState{tunState, udpState}
	t.initial = t.state
	return t
}

// fellBack records that the data path stopped using k because of reason.
func (t *offloadTracker) fellBack(k Offload, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.state[offloadIndex(k)]
	s.Active, s.Reason = false, reason
	s.Fallbacks++
	s.Since = t.now()
}

// reopened restores k's state at Open (keeping the fallback count): the
// offload is tried again.
func (t *offloadTracker) reopened(k Offload) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := offloadIndex(k)
	t.state[i].Active, t.state[i].Reason = t.initial[i].Active, t.initial[i].Reason
}

// snapshot returns both states, TUN first.
func (t *offloadTracker) snapshot() []OffloadState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return []OffloadState{t.state[0], t.state[1]}
}

// offloadTUN is a tun.Device that falls back to writing packets one by one
// when the kernel refuses wireguard-go's coalesced writes.
//
// With the virtio-net header on, wireguard-go's Linux TUN coalesces the
// packets of one Write call (the packets of one peer decrypted together)
// into GSO super-packets. Some kernels refuse those with EINVAL (the
// virtio-net header is rejected), and the library neither retries nor
// stops coalescing: every bulk transfer would lose whole batches for as
// long as the agent runs. A Write of a single packet is never coalesced
// (its header is cleared), so after the first refusal every batch is
// written packet by packet: the kernel then sees plain packets, as without
// offloads. The packets of the refused batch itself are lost (the library
// has already merged them in place); TCP retransmits them.
//
// Reads are passed through: what the kernel hands over it also accepts.
//
// It is also where the packet windows are kept (see inflight): tx bounds the
// packets read and not yet sent, rx the packets received and not yet
// written; both nil without a bound.
type offloadTUN struct {
	tun.Device
	log    *slog.Logger
	off    *offloadTracker
	tx, rx *inflight
	split  atomic.Bool
}

var _ tun.Device = (*offloadTUN)(nil)

func newOffloadTUN(d tun.Device, log *slog.Logger, off *offloadTracker, tx, rx *inflight) *offloadTUN {
	return &offloadTUN{Device: d, log: log, off: off, tx: tx, rx: rx}
}

// Read implements tun.Device; it waits while the tx window is full.
func (t *offloadTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.tx.wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	t.tx.add(n)
	return n, err
}

// Write implements tun.Device.
func (t *offloadTUN) Write(bufs [][]byte, offset int) (int, error) {
	defer t.rx.release(len(bufs))
	if len(bufs) < 2 {
		return t.Device.Write(bufs, offset)
	}
	if t.split.Load() {
		return t.writeEach(bufs, offset)
	}
	n, err := t.Device.Write(bufs, offset)
	if err == nil || !errors.Is(err, unix.EINVAL) {
		return n, err
	}
	if !t.split.Swap(true) {
		t.off.fellBack(OffloadTUNGSO, "the kernel refused a coalesced TUN write ("+err.Error()+"); writing packets one by one")
		t.log.Warn("the kernel refused a coalesced (GSO) write to the TUN device: writing decrypted packets one by one from now on, "+
			"at a multiple of the CPU cost per byte; the refused batch is lost (TCP retransmits it)", "err", err)
	}
	return n, err
}

// writeEach writes bufs one packet per call, so none is coalesced; it
// returns the sum of the counts and every error.
func (t *offloadTUN) writeEach(bufs [][]byte, offset int) (int, error) {
	var (
		total int
		errs  []error
	)
	for i := range bufs {
		n, err := t.Device.Write(bufs[i:i+1], offset)
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// tunOffloadAtOpen is OffloadTUNGSO's state when wireguard-go starts on
// d: its Linux TUN reports a batch size above one exactly when the
// virtio-net header and the TSO offloads are on.
func tunOffloadAtOpen(o Options, d tun.Device) OffloadState {
	switch {
	case d.BatchSize() > 1:
		return OffloadState{Active: true}
	case o.TUN != nil:
		return OffloadState{Reason: "the in-memory TUN takes one packet per write"}
	case o.DisableOffloads:
		return OffloadState{Reason: "off by configuration (--offloads=false): the TUN device has no virtio-net header"}
	}
	return OffloadState{Reason: "the kernel did not accept the TUN offloads (TUNSETOFFLOAD): one packet per write"}
}

// udpOffloadAtOpen is OffloadUDPGSO's state when wireguard-go starts on b.
// wireguard-go's StdNetBind uses UDP GSO when its socket accepts the
// UDP_SEGMENT option (probed here the same way, on a scratch socket) and
// has batches to send only when the TUN hands it more than one packet per
// read.
func udpOffloadAtOpen(o Options, b conn.Bind) OffloadState {
	switch {
	case b.BatchSize() < 2:
		return OffloadState{Reason: "the bind sends one datagram per call"}
	case o.TUN != nil:
		return OffloadState{Active: true}
	case o.DisableOffloads:
		return OffloadState{Reason: "unused (--offloads=false): one packet per TUN read leaves no batches to coalesce"}
	}
	if err := probeUDPSegment(); err != nil {
		return OffloadState{Reason: "the kernel does not offer UDP GSO (UDP_SEGMENT: " + err.Error() + ")"}
	}
	return OffloadState{Active: true}
}

// probeUDPSegment reports whether a UDP socket takes the UDP_SEGMENT
// option (Linux 4.18 and later).
func probeUDPSegment() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	return err
}
