package device_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/device/devicetest"
)

// TestInflightBoundHoldsReceiver is the memory scenario of issue 14: the
// receiver's TUN stops taking packets while the sender keeps sending.
// wireguard-go alone pulls every datagram off the socket into a 64 KiB
// buffer of its own and queues it; with InflightPackets the receiver holds
// at most the window plus one receive batch and leaves the rest in the
// socket (here: the bind's channel). Once the TUN takes packets again all
// arrive. The bound is counted, not timed: the packets wireguard-go has
// received and not yet written.
func TestInflightBoundHoldsReceiver(t *testing.T) {
	const (
		limit = 128
		total = 1200 // packets; 75 MiB of wireguard-go buffers if all were held
		bound = limit + pairBatch
	)
	// No stall resets while the test holds the TUN shut, however slow the
	// machine.
	defer device.SetInflightStallForTest(time.Hour)()
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	tuns[0].refuse, tuns[1].refuse = false, false
	binds := newBatchBinds()
	var peak atomic.Int64
	binds[1].onReceive = func(received int64) {
		held := received - tuns[1].written.Load()
		for p := peak.Load(); held > p && !peak.CompareAndSwap(p, held); p = peak.Load() {
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, addr := openBatchPair(ctx, t, tuns, binds, limit)

	tuns[0].in <- [][]byte{devicetest.UDPPacket(addr[0], addr[1], 100)}
	select {
	case <-tuns[1].out:
	case <-ctx.Done():
		t.Fatal("the handshake packet did not arrive")
	}
	tuns[1].gate = make(chan struct{})
	go func() {
		for range total / pairBatch {
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
	// Wait until the receiver is held back (data waits in its socket, it
	// received nothing more for a while) or holds more than the bound.
	var last int64 = -1
	for {
		if p := peak.Load(); p > bound {
			close(tuns[1].gate)
			t.Fatalf("the receiver holds %d packets it has not written, want at most %d (window %d + one batch of %d)", p, bound, limit, pairBatch)
		}
		r := binds[1].received.Load()
		if r == last && r >= limit && len(binds[1].rx) > 0 {
			break
		}
		last = r
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("timed out: received %d, %d batches waiting, peak %d", r, len(binds[1].rx), peak.Load())
		}
	}
	t.Logf("held back at %d packets received, peak %d not written, %d batches waiting in the socket", last, peak.Load(), len(binds[1].rx))
	close(tuns[1].gate)
	// Everything arrives once the TUN takes packets again.
	want := int64(1 + total)
	for tuns[1].written.Load() < want {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("%d of %d packets written after the TUN opened", tuns[1].written.Load(), want)
		}
	}
	if p := peak.Load(); p > bound {
		t.Errorf("peak %d packets held, want at most %d", p, bound)
	}
}

// TestInflightBoundHoldsSender is the same on the way out: the sender's
// socket stops taking datagrams while the TUN has more to read. wireguard-go
// alone reads on and queues every packet in a 64 KiB buffer; with
// InflightPackets the sender stops reading at the window plus one TUN batch
// and the rest stays in the TUN queue.
func TestInflightBoundHoldsSender(t *testing.T) {
	const (
		limit = 128
		total = 1200
		bound = limit + pairBatch
	)
	defer device.SetInflightStallForTest(time.Hour)()
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	tuns[0].refuse, tuns[1].refuse = false, false
	binds := newBatchBinds()
	var peak atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, addr := openBatchPair(ctx, t, tuns, binds, limit)

	tuns[0].in <- [][]byte{devicetest.UDPPacket(addr[0], addr[1], 100)}
	select {
	case <-tuns[1].out:
	case <-ctx.Done():
		t.Fatal("the handshake packet did not arrive")
	}
	// From here on, count what the sender holds: read from its TUN and not
	// yet sent (the handshake packet was both).
	tuns[0].onRead = func(read int64) {
		held := read - binds[0].sent.Load()
		for p := peak.Load(); held > p && !peak.CompareAndSwap(p, held); p = peak.Load() {
		}
	}
	binds[0].sendGate = make(chan struct{})
	go func() {
		for range total / pairBatch {
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
	var last int64 = -1
	for {
		if p := peak.Load(); p > bound {
			close(binds[0].sendGate)
			t.Fatalf("the sender holds %d packets it has not sent, want at most %d (window %d + one batch of %d)", p, bound, limit, pairBatch)
		}
		r := tuns[0].read.Load()
		if r == last && r >= limit && len(tuns[0].in) > 0 {
			break
		}
		last = r
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("timed out: read %d, %d batches waiting, peak %d", r, len(tuns[0].in), peak.Load())
		}
	}
	t.Logf("held back at %d packets read, peak %d not sent, %d batches waiting in the TUN", last, peak.Load(), len(tuns[0].in))
	close(binds[0].sendGate)
	want := int64(1 + total)
	for tuns[1].written.Load() < want {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("%d of %d packets written after the socket opened", tuns[1].written.Load(), want)
		}
	}
	if p := peak.Load(); p > bound {
		t.Errorf("peak %d packets held, want at most %d", p, bound)
	}
}
