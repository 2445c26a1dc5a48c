package device

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"
)

func TestInflightNilNeverWaits(t *testing.T) {
	var w *inflight = newInflight(0, time.Hour, time.Hour)
	if w != nil {
		t.Fatal("limit 0 gave a window")
	}
	w.wait()
	w.add(1 << 20)
	w.release(1 << 20)
}

// TestInflightWaitsForRelease: a full window holds the reader until packets
// are handed on; the count never passes limit plus what one read takes in.
func TestInflightWaitsForRelease(t *testing.T) {
	w := newInflight(10, time.Hour, time.Hour)
	w.wait()
	w.add(8)
	w.wait() // 8 < 10: no wait
	w.add(8)
	done := make(chan struct{})
	go func() {
		w.wait()
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("wait returned with 16 of 10 packets in flight")
	case <-time.After(20 * time.Millisecond):
	}
	w.release(3) // 13: still full
	select {
	case <-done:
		t.Fatal("wait returned with 13 of 10 packets in flight")
	case <-time.After(20 * time.Millisecond):
	}
	w.release(8) // 5
	<-done
	if p := w.peak.Load(); p != 16 {
		t.Errorf("peak %d, want 16", p)
	}
	// More released than taken (handshakes, keepalives): clamped at 0.
	w.release(100)
	if n := w.n.Load(); n != 0 {
		t.Errorf("count %d after over-release, want 0", n)
	}
}

// TestInflightStallResets: counts that are never released (packets the
// library dropped) do not stop the data path: after the stall the count
// starts afresh.
func TestInflightStallResets(t *testing.T) {
	w := newInflight(4, 10*time.Millisecond, 10*time.Millisecond)
	w.add(4) // leaked
	w.wait()
	if w.resets.Load() != 1 || w.n.Load() != 0 {
		t.Errorf("after a stall: %d resets, count %d; want 1, 0", w.resets.Load(), w.n.Load())
	}
}

// TestInflightConcurrent: readers and writers at once keep the count within
// limit plus one batch per reader, and every wait returns.
func TestInflightConcurrent(t *testing.T) {
	const limit, batch, readers, rounds = 64, 8, 2, 2000
	w := newInflight(limit, time.Hour, time.Hour)
	handed := make(chan int, readers*rounds)
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				w.wait()
				w.add(batch)
				handed <- batch
			}
		}()
	}
	go func() { wg.Wait(); close(handed) }()
	for n := range handed {
		w.release(n)
	}
	if p := w.peak.Load(); p > limit+readers*batch {
		t.Errorf("peak %d in flight, want at most %d", p, limit+readers*batch)
	}
	if w.resets.Load() != 0 {
		t.Errorf("%d stall resets", w.resets.Load())
	}
}

// TestLocalIndicesCountsOwnSessionsOnly: only transport messages with a
// payload, addressed to an index of one of this device's handshakes, count
// in the rx window; a handshake message or a keepalive never reaches the
// TUN, and a datagram with an unknown index (garbage, a forgery, a session
// long gone) is dropped by wireguard-go unseen: counting any of them would
// leak.
func TestLocalIndicesCountsOwnSessionsOnly(t *testing.T) {
	mk := func(typ byte, index uint32, size int) []byte {
		b := make([]byte, 2048)
		b[0] = typ
		binary.LittleEndian.PutUint32(b[4:8], index)
		return b[:size]
	}
	count := func(l *localIndices, bufs ...[]byte) int {
		sizes := make([]int, len(bufs))
		for i, b := range bufs {
			sizes[i] = len(b)
		}
		return l.dataPackets(bufs, sizes)
	}
	clock := time.Unix(1e9, 0)
	l := newLocalIndices()
	l.now = func() time.Time { return clock }
	if n := count(l, mk(4, 7, 1452)); n != 0 {
		t.Errorf("before any handshake: %d counted, want 0", n)
	}
	// What this device sends: an initiation (sender index 7), a response
	// (9) and a transport message to the peer (whose index 8 is not ours).
	l.learn([][]byte{mk(1, 7, 148)})
	l.learn([][]byte{mk(4, 8, 1452), mk(2, 9, 92)})
	got := count(l,
		mk(4, 7, 1452), mk(4, 7, 1452), // ours, with payload: 2
		mk(4, 8, 1452),              // not ours
		mk(1, 7, 148), mk(2, 9, 92), // handshake messages
		mk(4, 9, 32),      // keepalive
		mk(3, 9, 64),      // cookie reply
		mk(4, 9, 33),      // ours: 1
		mk(4, 1234, 1452), // garbage
	)
	if got != 3 {
		t.Errorf("counted %d, want 3 (the transport messages with payload to indices 7 and 9)", got)
	}
	clock = clock.Add(indexTTL + time.Second)
	if n := count(l, mk(4, 7, 1452)); n != 0 {
		t.Errorf("after the index's lifetime: %d counted, want 0", n)
	}
	l.learn([][]byte{mk(1, 10, 148)}) // prunes the expired ones
	if len(l.seen) != 1 {
		t.Errorf("%d indices kept after the lifetime, want 1 (the new one)", len(l.seen))
	}
}

// TestInflightStallFollowsPace: the stall before a full window presumes a
// leak is 16 times the mean gap between releases, within its bounds; gaps
// of an idle link do not count.
func TestInflightStallFollowsPace(t *testing.T) {
	clock := time.Unix(1e9, 0)
	w := newInflight(8, 10*time.Millisecond, 250*time.Millisecond)
	w.now = func() time.Time { return clock }
	if s := w.stall(); s != 10*time.Millisecond {
		t.Errorf("stall before any release %v, want the minimum 10ms", s)
	}
	releases := func(gap time.Duration, n int) {
		for range n {
			clock = clock.Add(gap)
			w.release(1)
		}
	}
	releases(100*time.Microsecond, 50) // a fast link
	if s := w.stall(); s != 10*time.Millisecond {
		t.Errorf("stall at 0.1 ms between releases %v, want the minimum 10ms", s)
	}
	releases(5*time.Millisecond, 100) // a slow one
	if s := w.stall(); s < 79*time.Millisecond || s > 81*time.Millisecond {
		t.Errorf("stall at 5 ms between releases %v, want 80ms", s)
	}
	releases(time.Minute, 3) // idle: gaps over the maximum are left out
	if s := w.stall(); s < 79*time.Millisecond || s > 81*time.Millisecond {
		t.Errorf("stall after idle gaps %v, want still 80ms", s)
	}
	releases(50*time.Millisecond, 100) // very slow: capped
	if s := w.stall(); s != 250*time.Millisecond {
		t.Errorf("stall at 50 ms between releases %v, want the maximum 250ms", s)
	}
}

// TestInflightStopEndsWaits: a closing device's reads do not wait for the
// window, however long the stall.
func TestInflightStopEndsWaits(t *testing.T) {
	w := newInflight(1, time.Hour, time.Hour)
	w.add(1)
	done := make(chan struct{})
	go func() {
		w.wait()
		close(done)
	}()
	w.stop()
	<-done
	w.stop() // twice is fine
	w.wait()
	var none *inflight
	none.stop()
}
