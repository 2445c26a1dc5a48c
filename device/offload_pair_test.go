package device_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/device/devicetest"
)

// pairBatch is how many packets the fakes below move per call, like TUN
// TSO and UDP GRO hand wireguard-go batches with offloads on.
const pairBatch = 8

// refusingTUN is an in-memory TUN that hands wireguard-go whole batches on
// Read. With refuse set it behaves like a kernel that rejects coalesced
// virtio-net GSO writes: it refuses every Write of more than one packet with
// EINVAL (the shape of NativeTun.Write's error). What it takes goes to out;
// with gate set, a Write first waits until gate is closed.
type refusingTUN struct {
	refuse  bool
	gate    chan struct{}
	written atomic.Int64
	// read counts the packets handed to wireguard-go; onRead, when set,
	// is called after each read with the new count.
	read   atomic.Int64
	onRead func(read int64)
	in     chan [][]byte
	out    chan []byte
	events chan tun.Event
	once   sync.Once
	closed chan struct{}
}

func newRefusingTUN() *refusingTUN {
	t := &refusingTUN{refuse: true, in: make(chan [][]byte, 256), out: make(chan []byte, 4096), events: make(chan tun.Event, 1), closed: make(chan struct{})}
	t.events <- tun.EventUp
	return t
}

func (t *refusingTUN) File() *os.File           { return nil }
func (t *refusingTUN) MTU() (int, error)        { return 1420, nil }
func (t *refusingTUN) Name() (string, error)    { return "refusingtun", nil }
func (t *refusingTUN) Events() <-chan tun.Event { return t.events }
func (t *refusingTUN) BatchSize() int           { return pairBatch }

func (t *refusingTUN) Close() error {
	t.once.Do(func() { close(t.closed); close(t.events) })
	return nil
}

func (t *refusingTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case pkts := <-t.in:
		n := min(len(pkts), len(bufs))
		for i := range n {
			sizes[i] = copy(bufs[i][offset:], pkts[i])
		}
		if r := t.read.Add(int64(n)); t.onRead != nil {
			t.onRead(r)
		}
		return n, nil
	case <-t.closed:
		return 0, os.ErrClosed
	}
}

func (t *refusingTUN) Write(bufs [][]byte, offset int) (int, error) {
	if t.gate != nil {
		select {
		case <-t.gate:
		case <-t.closed:
			return 0, os.ErrClosed
		}
	}
	if len(bufs) > 1 && t.refuse {
		return 0, errors.Join(&os.PathError{Op: "write", Path: "/dev/net/tun", Err: unix.EINVAL})
	}
	for _, b := range bufs {
		select {
		case t.out <- append([]byte(nil), b[offset:]...):
		default: // the test reads far fewer than fit
		}
	}
	t.written.Add(int64(len(bufs)))
	return len(bufs), nil
}

// batchBinds joins two devices and moves each Send as one batch, which
// the receiver gets in one call (what UDP GSO and GRO do on a socket).
type batchBind struct {
	rx, tx chan [][]byte
	self   bindtest.ChannelEndpoint
	mu     sync.Mutex
	closed chan struct{}
	// received counts the datagrams handed to wireguard-go; onReceive,
	// when set, is called after each receive with the new count.
	received  atomic.Int64
	onReceive func(received int64)
	// sent counts the datagrams sent; with sendGate set, a Send first
	// waits until it is closed.
	sent     atomic.Int64
	sendGate chan struct{}
}

func newBatchBinds() [2]*batchBind {
	a, b := make(chan [][]byte, 256), make(chan [][]byte, 256)
	return [2]*batchBind{{rx: a, tx: b, self: 2}, {rx: b, tx: a, self: 1}}
}

func (c *batchBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	c.mu.Lock()
	c.closed = make(chan struct{})
	closed := c.closed
	c.mu.Unlock()
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case batch := <-c.rx:
			n := min(len(batch), len(bufs))
			for i := range n {
				sizes[i] = copy(bufs[i], batch[i])
				eps[i] = c.self
			}
			if r := c.received.Add(int64(n)); c.onReceive != nil {
				c.onReceive(r)
			}
			return n, nil
		case <-closed:
			return 0, net.ErrClosed
		}
	}
	return []conn.ReceiveFunc{recv}, uint16(c.self), nil
}

func (c *batchBind) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != nil {
		select {
		case <-c.closed:
		default:
			close(c.closed)
		}
	}
	return nil
}

func (c *batchBind) SetMark(uint32) error { return nil }
func (c *batchBind) BatchSize() int       { return pairBatch }

func (c *batchBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	batch := make([][]byte, len(bufs))
	for i, b := range bufs {
		batch[i] = append([]byte(nil), b...)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if c.sendGate != nil {
		select {
		case <-c.sendGate:
		case <-closed:
			return net.ErrClosed
		}
	}
	select {
	case c.tx <- batch:
		c.sent.Add(int64(len(bufs)))
		return nil
	case <-closed:
		return net.ErrClosed
	}
}

func (c *batchBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return bindtest.ChannelEndpoint(ap.Port()), nil
}

// openBatchPair opens two userspace devices on tuns and binds, each the
// other's peer, with the given in-flight bound; closed in t.Cleanup.
func openBatchPair(t *testing.T, tuns [2]*refusingTUN, binds [2]*batchBind, inflight int) ([2]device.Device, [2]netip.Addr) {
	t.Helper()
	p := devicetest.NewPairOn(t, [2]tun.Device{tuns[0], tuns[1]}, [2]conn.Bind{binds[0], binds[1]}, devicetest.Options{InflightPackets: inflight})
	return [2]device.Device{p[0].Device, p[1].Device}, [2]netip.Addr{p[0].Addr, p[1].Addr}
}

// TestOffloadFallbackDeliversBatches is the scenario of a kernel that
// refuses coalesced TUN writes: two real wireguard-go devices opened by
// device.Open, joined by batching fakes, the receiving TUN refusing every
// multi-packet write with EINVAL. All but the first refused batch must
// arrive. wireguard-go alone (the code before the fallback) loses every
// batch for as long as it runs.
func TestOffloadFallbackDeliversBatches(t *testing.T) {
	tuns := [2]*refusingTUN{newRefusingTUN(), newRefusingTUN()}
	binds := newBatchBinds()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	devs, addr := openBatchPair(t, tuns, binds, 0)

	// The first packet starts the handshake; wait for it to arrive alone so
	// that the batches below travel on an established session.
	tuns[0].in <- [][]byte{devicetest.UDPPacket(addr[0], addr[1], 100)}
	select {
	case <-tuns[1].out:
	case <-ctx.Done():
		t.Fatal("the handshake packet did not arrive")
	}
	const batches = 20
	for range batches {
		var b [][]byte
		for range pairBatch {
			b = append(b, devicetest.UDPPacket(addr[0], addr[1], 1000))
		}
		tuns[0].in <- b
	}
	// One refused batch is lost at most; wait for the rest, generously.
	want := (batches - 1) * pairBatch
	got := 0
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for got < want {
		select {
		case <-tuns[1].out:
			got++
		case <-timeout.C:
			t.Fatalf("%d of %d packets arrived (at least %d expected): refused TUN batches are lost instead of written packet by packet", got, batches*pairBatch, want)
		}
	}
	t.Logf("%d of %d packets arrived", got, batches*pairBatch)
	// The receiver says so (status and metrics read this); the sender,
	// whose TUN took only single packets, still coalesces.
	if st := devs[1].Offloads(); len(st) != 2 || st[0].Kind != device.OffloadTUNGSO || st[0].Active || st[0].Fallbacks != 1 {
		t.Errorf("receiver's offloads %+v, want tun_gso inactive after one fallback", st)
	}
	if st := devs[0].Offloads(); len(st) != 2 || !st[0].Active || st[0].Fallbacks != 0 {
		t.Errorf("sender's offloads %+v, want tun_gso active", st)
	}
}
