package bench

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wgmesh/wgmesh/device/devicetest"
)

// batchTUN is an in-memory TUN device that hands wireguard-go whole batches
// of packets per Read and takes whole batches per Write, as the kernel TUN
// does with offloads on (one 64 KiB TSO write is split into a batch of
// segments on read; received segments are written back as one batch). With
// a batch of one it behaves like a TUN without offloads. It copies packets
// from a read-only template, so the benchmark loop allocates nothing and
// the profile is wireguard-go's.
type batchTUN struct {
	batch  int
	in     chan [][]byte // batches to hand to wireguard-go's Read
	events chan tun.Event
	// written counts packets wireguard-go wrote (delivered by the tunnel).
	written atomic.Int64
	// progress is signalled (coalesced) after every Write, for the
	// sender's window.
	progress chan struct{}
	once     sync.Once
	closed   chan struct{}
	closeMu  sync.Once
}

var _ tun.Device = (*batchTUN)(nil)

func newBatchTUN(batch int) *batchTUN {
	t := &batchTUN{
		batch:    batch,
		in:       make(chan [][]byte, 64),
		events:   make(chan tun.Event, 1),
		progress: make(chan struct{}, 1),
		closed:   make(chan struct{}),
	}
	t.events <- tun.EventUp
	return t
}

func (t *batchTUN) File() *os.File           { return nil }
func (t *batchTUN) MTU() (int, error)        { return packetSize, nil }
func (t *batchTUN) Name() (string, error)    { return "batchtun", nil }
func (t *batchTUN) Events() <-chan tun.Event { return t.events }
func (t *batchTUN) BatchSize() int           { return t.batch }

func (t *batchTUN) Close() error {
	t.closeMu.Do(func() {
		close(t.closed)
		close(t.events)
	})
	return nil
}

func (t *batchTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case pkts := <-t.in:
		n := min(len(pkts), len(bufs))
		for i := 0; i < n; i++ {
			sizes[i] = copy(bufs[i][offset:], pkts[i])
		}
		return n, nil
	case <-t.closed:
		return 0, os.ErrClosed
	}
}

func (t *batchTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.written.Add(int64(len(bufs)))
	select {
	case t.progress <- struct{}{}:
	default:
	}
	return len(bufs), nil
}

// batchBind joins two devices like bindtest's channel bind, but moves whole
// batches (what UDP GSO/GRO gives wireguard-go on a real socket) and reuses
// its buffers.
type batchBind struct {
	batch    int
	rx, tx   chan *datagrams
	pool     *sync.Pool
	self     bindtest.ChannelEndpoint
	closeMu  sync.Mutex
	closed   chan struct{}
	isClosed bool
}

type datagrams struct {
	data  []byte
	sizes []int
}

var _ conn.Bind = (*batchBind)(nil)

func newBatchBinds(batch int) [2]*batchBind {
	pool := &sync.Pool{New: func() any {
		return &datagrams{data: make([]byte, 0, batch*(packetSize+64)), sizes: make([]int, 0, batch)}
	}}
	a, b := make(chan *datagrams, 256), make(chan *datagrams, 256)
	// bindtest's endpoint convention: bind 0 answers as endpoint 2 and is
	// reached at endpoint 1 … here an endpoint simply names the peer.
	return [2]*batchBind{
		{batch: batch, rx: a, tx: b, pool: pool, self: 2},
		{batch: batch, rx: b, tx: a, pool: pool, self: 1},
	}
}

func (c *batchBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	c.closeMu.Lock()
	c.closed, c.isClosed = make(chan struct{}), false
	closed := c.closed
	c.closeMu.Unlock()
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case d := <-c.rx:
			off, n := 0, 0
			for ; n < len(d.sizes) && n < len(bufs); n++ {
				sizes[n] = copy(bufs[n], d.data[off:off+d.sizes[n]])
				eps[n] = c.self
				off += d.sizes[n]
			}
			c.pool.Put(d)
			return n, nil
		case <-closed:
			return 0, net.ErrClosed // wireguard-go stops receiving on it
		}
	}
	return []conn.ReceiveFunc{recv}, uint16(c.self), nil
}

func (c *batchBind) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed != nil && !c.isClosed {
		close(c.closed)
		c.isClosed = true
	}
	return nil
}

func (c *batchBind) SetMark(uint32) error { return nil }
func (c *batchBind) BatchSize() int       { return c.batch }

func (c *batchBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	d := c.pool.Get().(*datagrams)
	d.data, d.sizes = d.data[:0], d.sizes[:0]
	for _, b := range bufs {
		d.data = append(d.data, b...)
		d.sizes = append(d.sizes, len(b))
	}
	c.closeMu.Lock()
	closed := c.closed
	c.closeMu.Unlock()
	select {
	case c.tx <- d:
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

// batchPair is two devices joined by batchTUNs and batchBinds.
type batchPair struct {
	tuns [2]*batchTUN
}

// newBatchPair opens the pair with device.Open and Configure, the agent's
// path, configured in process (no root needed).
func newBatchPair(b *testing.B, batch int) *batchPair {
	p := &batchPair{tuns: [2]*batchTUN{newBatchTUN(batch), newBatchTUN(batch)}}
	binds := newBatchBinds(batch)
	devicetest.NewPairOn(b, [2]tun.Device{p.tuns[0], p.tuns[1]}, [2]conn.Bind{binds[0], binds[1]}, devicetest.Options{})
	return p
}

// window is how many packets may be in flight, like a TCP window of about
// 1.4 MB. Without it the sender outruns encryption and wireguard-go's
// queues, bounded in batches rather than bytes, grow to gigabytes of 64 KiB
// message buffers; a real TCP stream never lets that happen.
const window = 1024

// stall is how long no packet may arrive before the packets in flight are
// counted as lost: wireguard-go drops the oldest staged packets when a
// queue is full, as a kernel drops from a full qdisc.
const stall = time.Second

// run sends n packets of template from end 0 to end 1 in batches, never
// more than window ahead of what arrived, and waits until every packet
// arrived or was given up as lost. It returns how many were lost.
func (p *batchPair) run(n int, template []byte) (lost int64) {
	batch := p.tuns[0].batch
	pkts := make([][]byte, batch)
	for i := range pkts {
		pkts[i] = template
	}
	rx := p.tuns[1]
	base := rx.written.Load()
	timer := time.NewTimer(stall)
	defer timer.Stop()
	// wait blocks until fewer than limit packets are in flight; after a
	// stall it writes the ones in flight off as lost.
	wait := func(sent, limit int64) {
		for sent-(rx.written.Load()-base)-lost > limit {
			timer.Reset(stall)
			select {
			case <-rx.progress:
			case <-timer.C:
				lost = sent - (rx.written.Load() - base)
			}
		}
	}
	for sent := 0; sent < n; sent += batch {
		wait(int64(sent), window)
		p.tuns[0].in <- pkts[:min(batch, n-sent)]
	}
	wait(int64(n), 0)
	return lost
}

// handshake sends single packets until one arrives: the first triggers the
// WireGuard handshake, and a lost initiation is only retried by
// wireguard-go after seconds.
func (p *batchPair) handshake(pkt []byte, timeout time.Duration) error {
	rx := p.tuns[1]
	base := rx.written.Load()
	deadline := time.Now().Add(timeout)
	for rx.written.Load() == base {
		if time.Now().After(deadline) {
			return fmt.Errorf("no packet crossed the in-memory pair within %v: the handshake did not complete", timeout)
		}
		p.tuns[0].in <- [][]byte{pkt}
		select {
		case <-rx.progress:
		case <-time.After(500 * time.Millisecond):
		}
	}
	// Let the packets queued during the handshake drain.
	time.Sleep(100 * time.Millisecond)
	return nil
}

// BenchmarkInMemoryPair pushes 1420-byte packets through two userspace
// devices joined in memory — wireguard-go's whole data path (encrypt, queue,
// decrypt, cryptokey routing) without the kernel:
//
//   - batch=1: one packet per TUN read and per datagram, what wireguard-go
//     does with offloads off (B4);
//   - batch=46: one 64 KiB write's worth of 1420-byte segments per read and
//     per send, the batches TSO on the TUN and UDP GSO/GRO give it with
//     offloads on (B3). The kernel's own segmentation is not included.
//
// wireguard-go drops the oldest staged packets when its queues are full;
// packets that never arrive are reported as lost/op, and Gbit/s counts only
// delivered packets.
func BenchmarkInMemoryPair(b *testing.B) {
	for _, batch := range []int{1, 46} {
		b.Run(fmt.Sprintf("size=%d/batch=%d", packetSize, batch), func(b *testing.B) {
			p := newBatchPair(b, batch)
			src := netip.AddrFrom4([4]byte{10, 244, 1, 1})
			dst := netip.AddrFrom4([4]byte{10, 244, 2, 1})
			pkt := devicetest.UDPPacket(src, dst, packetSize)
			if err := p.handshake(pkt, 15*time.Second); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			lost := p.run(b.N, pkt)
			b.StopTimer()
			if lost >= int64(b.N) && b.N > 1 {
				b.Fatalf("all %d packets were lost", b.N)
			}
			delivered := float64(b.N) - float64(lost)
			sec := b.Elapsed().Seconds()
			b.ReportMetric(delivered*packetSize*8/sec/1e9, "Gbit/s")
			b.ReportMetric(sec*1e9/delivered, "ns/packet")
			b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
		})
	}
}
