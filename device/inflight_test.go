package device

import (
	"sync"
	"testing"
	"time"
)

func TestInflightNilNeverWaits(t *testing.T) {
	var w *inflight = newInflight(0, time.Hour)
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
	w := newInflight(10, time.Hour)
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
	w := newInflight(4, 10*time.Millisecond)
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
	w := newInflight(limit, time.Hour)
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

// TestDataPacketsCountsTransportOnly: only transport messages with a
// payload count in the rx window; a handshake message or a keepalive never
// reaches the TUN and would never be released.
func TestDataPacketsCountsTransportOnly(t *testing.T) {
	mk := func(typ byte, size int) []byte { b := make([]byte, 2048); b[0] = typ; return b[:size] }
	bufs := [][]byte{mk(4, 1452), mk(1, 148), mk(2, 92), mk(4, 32), mk(3, 64), mk(4, 33)}
	sizes := make([]int, len(bufs))
	for i, b := range bufs {
		sizes[i] = len(b)
	}
	if n := dataPackets(bufs, sizes); n != 2 {
		t.Errorf("dataPackets = %d, want 2 (the two transport messages with payload)", n)
	}
}
