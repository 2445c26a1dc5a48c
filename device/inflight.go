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
// a session, which it stages and drops beyond its 128 staged batches, or to
// a removed peer; on the way in: replayed, forged or misrouted datagrams
// that pass the receiver-index filter, see localIndices): those are never
// released and would shrink the window for good. So a wait that lasts a
// stall (releases came, but none brought the count below the limit)
// presumes the rest leaked and starts the count afresh. The stall follows
// the data path's own pace: 16 times the usual gap between releases, at
// least 10 ms and at most 250 ms. On a fast link a leak costs a pause of
// about 10 ms each time leaked packets fill the window; on a slow one
// (releases far apart) the window still holds instead of being reset by a
// drain it mistook for a leak.
type inflight struct {
	limit int64
	// minStall and maxStall bound the stall; the stall is stallFactor
	// times gap, the running mean of the time between releases.
	minStall, maxStall time.Duration
	n                  atomic.Int64
	// last is the time of the last release (Unix nanoseconds, 0: none
	// yet); gap the running mean of the time between releases, in
	// nanoseconds.
	last, gap atomic.Int64
	// now is the clock (time.Now; tests set their own).
	now func() time.Time
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
	// done is closed by stop: the device is closing, no wait blocks.
	done     chan struct{}
	stopOnce sync.Once
}

// inflightMinStall and inflightMaxStall bound how long a full window may go
// without a release before its count is presumed leaked; between them the
// stall is inflightStallFactor times the usual gap between releases. The
// packets of a full window leave in milliseconds on any link wgmesh runs
// on. Variables for tests only.
var (
	inflightMinStall = 10 * time.Millisecond
	inflightMaxStall = 250 * time.Millisecond
)

const inflightStallFactor = 16

// newInflight returns a window of limit packets, or nil (no bound) for
// limit <= 0. A nil *inflight is valid and never waits.
func newInflight(limit int, minStall, maxStall time.Duration) *inflight {
	if limit <= 0 {
		return nil
	}
	return &inflight{limit: int64(limit), minStall: minStall, maxStall: maxStall, now: time.Now,
		released: make(chan struct{}), done: make(chan struct{})}
}

// stall is how long a full window waits for a release before it presumes
// the count leaked: stallFactor times the mean gap between releases,
// within [minStall, maxStall].
func (w *inflight) stall() time.Duration {
	d := time.Duration(w.gap.Load()) * inflightStallFactor
	if d < w.minStall || w.last.Load() == 0 {
		return w.minStall
	}
	return min(d, w.maxStall)
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
			timer = time.NewTimer(w.stall())
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-w.done:
			return
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
	// The mean gap starts at the first gap and moves an eighth of the
	// way to each new one, so one late release does not stretch the
	// stall; gaps above maxStall (an idle link) are left out, they say
	// nothing about the pace of a busy one.
	now := w.now().UnixNano()
	if prev := w.last.Swap(now); prev != 0 {
		if g := now - prev; g >= 0 && g <= int64(w.maxStall) {
			// Two releases at once may lose one update: it is an estimate.
			if m := w.gap.Load(); m != 0 {
				g = m + (g-m)/8
			}
			w.gap.Store(g)
		}
	}
	if w.waiters.Load() == 0 {
		return
	}
	w.mu.Lock()
	close(w.released)
	w.released = make(chan struct{})
	w.mu.Unlock()
}

// stop ends every wait, now and later: the device is closing and its
// reads must return to see that.
func (w *inflight) stop() {
	if w == nil {
		return
	}
	w.stopOnce.Do(func() { close(w.done) })
}

// InflightState is one direction of the userspace data path's in-flight
// window (Options.InflightPackets).
type InflightState struct {
	// Direction is "tx" (TUN read to UDP send) or "rx" (UDP receive to
	// TUN write).
	Direction string
	// Limit is the window, in packets.
	Limit int
	// Held is the packets counted in flight now.
	Held int64
	// Resets counts the waits that lasted a stall and started the count
	// afresh, presuming packets the library dropped unseen (to a peer
	// without a session, or datagrams that failed to decrypt); each cost
	// the direction a pause of one stall.
	Resets uint64
}

// state reports the window as direction dir; ok is false without a bound.
func (w *inflight) state(dir string) (InflightState, bool) {
	if w == nil {
		return InflightState{}, false
	}
	return InflightState{Direction: dir, Limit: int(w.limit), Held: w.n.Load(), Resets: w.resets.Load()}, true
}
