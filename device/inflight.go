package device

import (
	"sync"
	"sync/atomic"
	"time"
)

// inflight is a window that bounds how many packets wireguard-go holds
// between taking them in and handing them on: on the way out from the TUN
// read to the UDP send, on the way in from the UDP receive to the TUN
// write.
//
// wireguard-go gives every packet it holds a 64 KiB buffer and bounds its
// queues in batches (1,024 batches of up to 128 packets), not in bytes: a
// TCP window of several megabytes in flight through the tunnel becomes
// hundreds of megabytes of buffers. Waiting before the next read while the
// window is full leaves the excess where it costs no agent memory: in the
// TUN device's queue (and from there TCP's own backpressure) on the way
// out, in the socket's receive buffer on the way in.
//
// The count is kept at the edges of the library, so it cannot see packets
// the library drops in between (on the way out: packets to a peer without
// a session beyond the 128 it stages, or to a removed peer; on the way in:
// replayed, forged or misrouted datagrams; handshake messages and
// keepalives are not counted at all): those are never released and would
// shrink the window for good. So a wait that sees no release for
// stall assumes the rest leaked and starts the count afresh; the cost is
// one pause of stall, never a stuck data path.
type inflight struct {
	limit int64
	stall time.Duration
	n     atomic.Int64
	// peak is the largest count seen after an acquire, for tests and
	// benchmarks.
	peak atomic.Int64
	// resets counts the stall resets.
	resets atomic.Uint64
	// waiters counts goroutines in wait, so that release wakes only when
	// someone waits.
	waiters atomic.Int32

	mu sync.Mutex
	// released is closed and replaced on every release, waking all
	// waiters.
	released chan struct{}
}

// inflightStall is how long a full window may go without a release before
// its count is presumed leaked: the packets of a full window leave in
// milliseconds on any link wgmesh runs on. A variable for tests only.
var inflightStall = 250 * time.Millisecond

// newInflight returns a window of limit packets, or nil (no bound) for
// limit <= 0. A nil *inflight is valid and never waits.
func newInflight(limit int, stall time.Duration) *inflight {
	if limit <= 0 {
		return nil
	}
	return &inflight{limit: int64(limit), stall: stall, released: make(chan struct{})}
}

// wait blocks while the window is full.
func (w *inflight) wait() {
	if w == nil {
		return
	}
	if w.n.Load() < w.limit {
		return
	}
	w.waiters.Add(1)
	defer w.waiters.Add(-1)
	var timer *time.Timer
	for {
		// Registered as a waiter before the check: a release after it
		// either is seen by the check or closes ch.
		w.mu.Lock()
		ch := w.released
		w.mu.Unlock()
		if w.n.Load() < w.limit {
			return
		}
		if timer == nil {
			timer = time.NewTimer(w.stall)
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-timer.C:
			// Nothing left for stall: what is counted leaked.
			w.n.Store(0)
			w.resets.Add(1)
			return
		}
	}
}

// add counts n packets taken in.
func (w *inflight) add(n int) {
	if w == nil || n <= 0 {
		return
	}
	v := w.n.Add(int64(n))
	for {
		p := w.peak.Load()
		if v <= p || w.peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// release counts n packets handed on (or more: handshake messages and
// keepalives pass too, so the count is clamped at zero) and wakes waiters.
func (w *inflight) release(n int) {
	if w == nil || n <= 0 {
		return
	}
	if v := w.n.Add(-int64(n)); v < 0 {
		w.n.CompareAndSwap(v, 0)
	}
	if w.waiters.Load() == 0 {
		return
	}
	w.mu.Lock()
	close(w.released)
	w.released = make(chan struct{})
	w.mu.Unlock()
}
