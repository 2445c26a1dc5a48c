package device_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/device/devicetest"
)

// The in-flight scenarios: how many packets wireguard-go may hold, and how
// many the tests push while one side is held back.
const (
	inflightLimit = 128
	inflightTotal = 1200 // packets; 75 MiB of wireguard-go buffers if all were held
	inflightBound = inflightLimit + pairBatch
)

// heldBack is what the receiver and sender scenarios vary: which side is
// held back, how its progress is read, and what it is holding.
type heldBack struct {
	// holds names, for messages, the packets the side holds ("it has not
	// written") and where the rest waits ("socket").
	holds, waitsIn string
	// taken counts the packets the held side has taken in; waiting is how
	// many batches wait outside it.
	taken   func() int64
	waiting func() int
	// open lets the side go on.
	open func()
}

// runHeldBack sends inflightTotal packets from end 0 in batches while side
// is held back, and fails if peak (what the side holds, counted by the
// caller's hook) ever exceeds inflightBound. It waits until the side stops
// taking packets with more waiting outside it, then opens it and waits for
// every packet to arrive.
func runHeldBack(ctx context.Context, t *testing.T, tuns [2]*refusingTUN, addr [2]netip.Addr, peak *atomic.Int64, side heldBack) {
	t.Helper()
	go func() {
		for range inflightTotal / pairBatch {
			var b [][]byte
			for range pairBatch {
				b = append(b, devicetest.UDPPacket(addr[0], addr[1], 1000))
			}
			select {
			case tuns[0].in <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Wait until the side is held back (data waits outside it, it took
	// nothing more for a while) or holds more than the bound.
	var last int64 = -1
	for {
		if p := peak.Load(); p > inflightBound {
			side.open()
			t.Fatalf("it holds %d packets %s, want at most %d (window %d + one batch of %d)", p, side.holds, inflightBound, inflightLimit, pairBatch)
		}
		r := side.taken()
		if r == last && r >= inflightLimit && side.waiting() > 0 {
			break
		}
		last = r
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("timed out: took %d, %d batches waiting, peak %d", r, side.waiting(), peak.Load())
		}
	}
	t.Logf("held back at %d packets taken, peak %d %s, %d batches waiting in the %s", last, peak.Load(), side.holds, side.waiting(), side.waitsIn)
	side.open()
	// Everything arrives once the side goes on.
	want := int64(1 + inflightTotal)
	for tuns[1].written.Load() < want {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("%d of %d packets written after the %s opened", tuns[1].written.Load(), want, side.waitsIn)
		}
	}
	if p := peak.Load(); p > inflightBound {
		t.Errorf("peak %d packets held, want at most %d", p, inflightBound)
	}
}

// handshakeBatchPair sends one packet from end 0 and waits for it at end
// 1: the session the scenario's batches then travel on.
func handshakeBatchPair(ctx context.Context, t *testing.T, tuns [2]*refusingTUN, addr [2]netip.Addr) {
	t.Helper()
	tuns[0].in <- [][]byte{devicetest.UDPPacket(addr[0], addr[1], 100)}
	select {
	case <-tuns[1].out:
	case <-ctx.Done():
		t.Fatal("the handshake packet did not arrive")
	}
}

// raise lifts peak to held if that is higher.
func raise(peak *atomic.Int64, held int64) {
	for p := peak.Load(); held > p && !peak.CompareAndSwap(p, held); p = peak.Load() {
	}
}

// TestInflightBoundHoldsReceiver is the memory scenario of issue 14: the
// receiver's TUN stops taking packets while the sender keeps sending.
// wireguard-go alone pulls every datagram off the socket into a 64 KiB
// buffer of its own and queues it; with InflightPackets the receiver holds
// at most the window plus one receive batch and leaves the rest in the
// socket (here: the bind's channel). Once the TUN takes packets again all
// arrive. The bound is counted, not timed: the packets wireguard-go has
// received and not yet written.
func TestInflightBoundHoldsReceiver(t *testing.T) {
	// No stall resets while the test holds the TUN shut, however slow the
	// machine.
	defer device.SetInflightStallForTest(time.Hour)()
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	tuns[0].refuse, tuns[1].refuse = false, false
	binds := newBatchBinds()
	var peak atomic.Int64
	binds[1].onReceive = func(received int64) { raise(&peak, received-tuns[1].written.Load()) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, addr := openBatchPair(t, tuns, binds, inflightLimit)
	handshakeBatchPair(ctx, t, tuns, addr)
	tuns[1].gate = make(chan struct{})
	runHeldBack(ctx, t, tuns, addr, &peak, heldBack{
		holds: "received and not written", waitsIn: "socket",
		taken:   binds[1].received.Load,
		waiting: func() int { return len(binds[1].rx) },
		open:    func() { close(tuns[1].gate) },
	})
}

// TestInflightBoundHoldsSender is the same on the way out: the sender's
// socket stops taking datagrams while the TUN has more to read. wireguard-go
// alone reads on and queues every packet in a 64 KiB buffer; with
// InflightPackets the sender stops reading at the window plus one TUN batch
// and the rest stays in the TUN queue.
func TestInflightBoundHoldsSender(t *testing.T) {
	defer device.SetInflightStallForTest(time.Hour)()
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	tuns[0].refuse, tuns[1].refuse = false, false
	binds := newBatchBinds()
	var peak atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, addr := openBatchPair(t, tuns, binds, inflightLimit)
	handshakeBatchPair(ctx, t, tuns, addr)
	// From here on, count what the sender holds: read from its TUN and not
	// yet sent (the handshake packet was both).
	tuns[0].onRead = func(read int64) { raise(&peak, read-binds[0].sent.Load()) }
	binds[0].sendGate = make(chan struct{})
	runHeldBack(ctx, t, tuns, addr, &peak, heldBack{
		holds: "read and not sent", waitsIn: "TUN",
		taken:   tuns[0].read.Load,
		waiting: func() int { return len(tuns[0].in) },
		open:    func() { close(binds[0].sendGate) },
	})
}

// TestInflightForgedDatagramsLeaveWindow: datagrams that look like
// transport data but carry no index of this device's sessions (garbage
// from anyone who can reach the UDP port) are dropped by wireguard-go
// before they reach the TUN; the receiver's window must not count them, or
// a few hundred of them would hold the data path until the stall reset.
// The stall is an hour here, so a window they filled would stop the real
// packets for good.
func TestInflightForgedDatagramsLeaveWindow(t *testing.T) {
	defer device.SetInflightStallForTest(time.Hour)()
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	tuns[0].refuse, tuns[1].refuse = false, false
	binds := newBatchBinds()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, addr := openBatchPair(t, tuns, binds, inflightLimit)
	handshakeBatchPair(ctx, t, tuns, addr)
	const forged = 20 // batches
	for i := range forged {
		var b [][]byte
		for j := range pairBatch {
			d := make([]byte, 200)
			d[0] = 4 // transport data
			binary.LittleEndian.PutUint32(d[4:8], uint32(0xf0000000+i*pairBatch+j))
			b = append(b, d)
		}
		binds[1].rx <- b
	}
	const real = 10 // batches
	for range real {
		var b [][]byte
		for range pairBatch {
			b = append(b, devicetest.UDPPacket(addr[0], addr[1], 1000))
		}
		tuns[0].in <- b
	}
	want := int64(1 + real*pairBatch)
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for tuns[1].written.Load() < want {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-timeout.C:
			t.Fatalf("%d of %d packets written after %d forged datagrams: the window counted them", tuns[1].written.Load(), want, forged*pairBatch)
		}
	}
}
