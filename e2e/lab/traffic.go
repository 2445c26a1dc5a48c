package lab

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// PingResult is the summary line of ping(8).
type PingResult struct {
	Sent, Received int
}

// Loss is the lost fraction in percent.
func (r PingResult) Loss() float64 {
	if r.Sent == 0 {
		return 100
	}
	return 100 * float64(r.Sent-r.Received) / float64(r.Sent)
}

func (r PingResult) String() string {
	return fmt.Sprintf("%d/%d received (%.0f%% loss)", r.Received, r.Sent, r.Loss())
}

var pingRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// Ping sends count echo requests from pod p to dst, interval apart, each
// waiting at most a second for its reply. A destination that answers nothing
// is not an error; the result says so.
func (p *Pod) Ping(ctx context.Context, dst netip.Addr, count int, interval time.Duration) (PingResult, error) {
	fam := "-4"
	if dst.Is6() {
		fam = "-6"
	}
	args := []string{"ping", fam, "-n", "-q", "-c", strconv.Itoa(count), "-i", fmt.Sprintf("%.3f", interval.Seconds()), "-W", "1", dst.String()}
	out, err := p.Exec(ctx, args...)
	r, ok := parsePing(out)
	if !ok {
		if err == nil {
			err = errors.New("no summary line")
		}
		return PingResult{}, fmt.Errorf("lab: ping %s from %s: %w", dst, p.Name, err)
	}
	// ping exits 1 when replies were missing; that is a result, not an error.
	return r, nil
}

// ParsePing reads the summary of ping's output (for pings run some other
// way than Pod.Ping, such as inside a UML guest).
func ParsePing(out string) (PingResult, bool) { return parsePing(out) }

// parsePing reads ping(8)'s summary line ("3 packets transmitted, 2
// received, ...").
func parsePing(out string) (PingResult, bool) {
	m := pingRE.FindStringSubmatch(out)
	if m == nil {
		return PingResult{}, false
	}
	sent, err1 := strconv.Atoi(m[1])
	recv, err2 := strconv.Atoi(m[2])
	if err1 != nil || err2 != nil {
		return PingResult{}, false
	}
	return PingResult{Sent: sent, Received: recv}, true
}

// TransferResult describes one TCP transfer.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
	// LongestGap is the longest time the receiver waited between two reads:
	// the interruption of the data flow.
	LongestGap time.Duration
	// SentSHA256 and ReceivedSHA256 are the digests on both ends.
	SentSHA256, ReceivedSHA256 [32]byte
}

// OK reports whether the receiver got exactly what was sent.
func (r TransferResult) OK() bool { return r.SentSHA256 == r.ReceivedSHA256 }

// Throughput in MiB/s.
func (r TransferResult) Throughput() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / (1 << 20) / r.Duration.Seconds()
}

func (r TransferResult) String() string {
	return fmt.Sprintf("%d bytes in %s (%.1f MiB/s), longest gap %s, sha256 match %v",
		r.Bytes, r.Duration.Round(time.Millisecond), r.Throughput(), r.LongestGap.Round(time.Millisecond), r.OK())
}

// listenIn opens a TCP listener on addr:0 inside namespace ns.
func listenIn(ns string, addr netip.Addr) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := inNetNS(ns, func() error {
		var err error
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: listen on %s in %s: %w", addr, ns, err)
	}
	return ln, nil
}

// dialIn connects from namespace ns to dst.
func dialIn(ctx context.Context, ns string, dst netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := inNetNS(ns, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: connect from %s to %s: %w", ns, dst, err)
	}
	return c.(*net.TCPConn), nil
}

// receiver accepts one connection and hashes everything it reads, tracking
// the longest pause between reads.
type receiver struct {
	ln     *net.TCPListener
	done   chan struct{}
	mu     sync.Mutex
	bytes  int64
	gap    time.Duration
	last   time.Time
	digest [32]byte
	err    error
	conn   net.Conn
}

func startReceiver(ln *net.TCPListener) *receiver {
	r := &receiver{ln: ln, done: make(chan struct{})}
	go r.run()
	return r
}

func (r *receiver) run() {
	defer close(r.done)
	c, err := r.ln.Accept()
	r.ln.Close()
	if err != nil {
		r.setErr(err)
		return
	}
	r.mu.Lock()
	r.conn = c
	r.last = time.Now()
	r.mu.Unlock()
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			now := time.Now()
			h.Write(buf[:n])
			r.mu.Lock()
			if g := now.Sub(r.last); g > r.gap {
				r.gap = g
			}
			r.last = now
			r.bytes += int64(n)
			r.mu.Unlock()
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			r.setErr(err)
			return
		}
	}
	r.mu.Lock()
	copy(r.digest[:], h.Sum(nil))
	r.mu.Unlock()
}

func (r *receiver) setErr(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// abort unblocks the receiver (deadline passed).
func (r *receiver) abort() {
	r.ln.Close()
	r.mu.Lock()
	if r.conn != nil {
		r.conn.Close()
	}
	r.mu.Unlock()
}

// payload is a deterministic pseudo-random byte stream (incompressible, so
// nothing along the way can cheat by compressing it).
type payload struct{ rng *rand.ChaCha8 }

func newPayload(seed uint64) *payload {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	return &payload{rng: rand.NewChaCha8(s)}
}

func (p *payload) fill(b []byte) { _, _ = p.rng.Read(b) }

// Transfer sends n bytes over TCP from pod `from` to pod `to` at address dst
// (one of to's addresses, choosing the family) and checks that the receiver
// got the same sha256. ctx bounds the whole transfer.
func Transfer(ctx context.Context, from, to *Pod, dst netip.Addr, n int64) (TransferResult, error) {
	s, err := StartStream(ctx, from, to, dst, StreamOptions{Bytes: n})
	if err != nil {
		return TransferResult{}, err
	}
	return s.Wait(ctx)
}

// StreamOptions shape a stream.
type StreamOptions struct {
	// Bytes ends the stream after that many bytes; 0 runs until Stop.
	Bytes int64
	// Rate limits the sender in bytes per second; 0 is unlimited. A limited
	// stream leaves CPU for the agents on a small machine.
	Rate int64
}

// Stream is a TCP connection from one pod to another carrying a
// pseudo-random byte stream, hashed on both ends.
type Stream struct {
	rcv      *receiver
	conn     *net.TCPConn
	start    time.Time
	stop     chan struct{}
	stopOnce sync.Once
	sent     chan sendResult
	desc     string
}

type sendResult struct {
	bytes  int64
	digest [32]byte
	err    error
}

// StartStream opens the connection and starts sending in the background.
func StartStream(ctx context.Context, from, to *Pod, dst netip.Addr, o StreamOptions) (*Stream, error) {
	ln, err := listenIn(to.NS, dst)
	if err != nil {
		return nil, err
	}
	rcv := startReceiver(ln)
	port := ln.Addr().(*net.TCPAddr).Port
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dialIn(dialCtx, from.NS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		rcv.abort()
		<-rcv.done
		return nil, err
	}
	s := &Stream{rcv: rcv, conn: conn, start: time.Now(), stop: make(chan struct{}), sent: make(chan sendResult, 1),
		desc: fmt.Sprintf("%s -> %s [%s]", from.Name, to.Name, dst)}
	go s.send(o)
	return s, nil
}

func (s *Stream) send(o StreamOptions) {
	h := sha256.New()
	p := newPayload(uint64(time.Now().UnixNano()))
	buf := make([]byte, 32<<10)
	var total int64
	var err error
	for o.Bytes == 0 || total < o.Bytes {
		select {
		case <-s.stop:
			goto done
		default:
		}
		chunk := buf
		if o.Bytes > 0 && o.Bytes-total < int64(len(chunk)) {
			chunk = chunk[:o.Bytes-total]
		}
		p.fill(chunk)
		h.Write(chunk)
		var n int
		n, err = s.conn.Write(chunk)
		total += int64(n)
		if err != nil {
			break
		}
		if o.Rate > 0 {
			// Sleep until the stream is back on its rate.
			due := s.start.Add(time.Duration(float64(total) / float64(o.Rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-s.stop:
				case <-time.After(d):
				}
			}
		}
	}
done:
	var r sendResult
	r.bytes, r.err = total, err
	copy(r.digest[:], h.Sum(nil))
	if err == nil {
		r.err = s.conn.CloseWrite()
	}
	s.sent <- r
}

// Stop ends an unbounded stream: the sender finishes its current write and
// closes its side; Wait then collects the result.
func (s *Stream) Stop() { s.stopOnce.Do(func() { close(s.stop) }) }

// Progress returns the bytes received so far and the time since the receiver
// last got data: a stalled stream shows a growing idle time.
func (s *Stream) Progress() (bytes int64, idle time.Duration) {
	s.rcv.mu.Lock()
	defer s.rcv.mu.Unlock()
	if s.rcv.last.IsZero() {
		return s.rcv.bytes, time.Since(s.start)
	}
	return s.rcv.bytes, time.Since(s.rcv.last)
}

// Wait waits for the sender to finish and the receiver to read everything,
// then compares digests. When ctx ends first the connection is torn down and
// the error says how far the stream got.
func (s *Stream) Wait(ctx context.Context) (TransferResult, error) {
	defer s.conn.Close()
	var sr sendResult
	select {
	case sr = <-s.sent:
	case <-ctx.Done():
		s.Stop()
		s.conn.Close()
		s.rcv.abort()
		<-s.rcv.done
		b, _ := s.Progress()
		return TransferResult{Bytes: b}, fmt.Errorf("lab: stream %s: sender did not finish: %w (received %d bytes)", s.desc, ctx.Err(), b)
	}
	select {
	case <-s.rcv.done:
	case <-ctx.Done():
		s.rcv.abort()
		<-s.rcv.done
	}
	dur := time.Since(s.start)
	s.rcv.mu.Lock()
	res := TransferResult{Bytes: s.rcv.bytes, Duration: dur, LongestGap: s.rcv.gap, SentSHA256: sr.digest, ReceivedSHA256: s.rcv.digest}
	rerr := s.rcv.err
	s.rcv.mu.Unlock()
	switch {
	case sr.err != nil:
		return res, fmt.Errorf("lab: stream %s: send after %d bytes: %w", s.desc, sr.bytes, sr.err)
	case rerr != nil:
		return res, fmt.Errorf("lab: stream %s: receive after %d bytes: %w", s.desc, res.Bytes, rerr)
	case ctx.Err() != nil:
		return res, fmt.Errorf("lab: stream %s: receiver did not finish: %w (%d of %d bytes)", s.desc, ctx.Err(), res.Bytes, sr.bytes)
	case res.Bytes != sr.bytes:
		return res, fmt.Errorf("lab: stream %s: sent %d bytes, received %d", s.desc, sr.bytes, res.Bytes)
	case !res.OK():
		return res, fmt.Errorf("lab: stream %s: sha256 differs: sent %x, received %x", s.desc, sr.digest[:8], res.ReceivedSHA256[:8])
	}
	return res, nil
}

// ProbeResult summarises a Probe.
type ProbeResult struct {
	Sent, Received int
	// LongestGap is the longest time without any echo coming back while
	// the prober kept sending: the interruption as an application sees it.
	LongestGap time.Duration
}

func (r ProbeResult) String() string {
	return fmt.Sprintf("%d/%d echoes, longest gap %s", r.Received, r.Sent, r.LongestGap.Round(time.Millisecond))
}

// Probe sends a small UDP datagram from one pod to an echo socket in another
// pod every interval and measures the longest stretch without answers.
type Probe struct {
	client, server *net.UDPConn
	interval       time.Duration
	done           chan struct{}
	stop           chan struct{}
	stopOnce       sync.Once
	mu             sync.Mutex
	res            ProbeResult
	lastRecv       time.Time
	lastSent       time.Time
	start          time.Time
}

// StartProbe starts probing from pod `from` to pod `to` at dst, every interval.
func StartProbe(from, to *Pod, dst netip.Addr, interval time.Duration) (*Probe, error) {
	var server, client *net.UDPConn
	err := inNetNS(to.NS, func() error {
		var err error
		server, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab: probe echo socket on %s in %s: %w", dst, to.Name, err)
	}
	port := server.LocalAddr().(*net.UDPAddr).Port
	err = inNetNS(from.NS, func() error {
		var err error
		client, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port))))
		return err
	})
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("lab: probe socket in %s to %s: %w", from.Name, dst, err)
	}
	p := &Probe{client: client, server: server, interval: interval, done: make(chan struct{}), stop: make(chan struct{}), start: time.Now()}
	p.lastRecv = p.start
	go p.echo()
	go p.receive()
	go p.send()
	return p, nil
}

func (p *Probe) echo() {
	buf := make([]byte, 64)
	for {
		n, addr, err := p.server.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, _ = p.server.WriteToUDPAddrPort(buf[:n], addr)
	}
}

func (p *Probe) receive() {
	buf := make([]byte, 64)
	for {
		_, err := p.client.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP errors (unreachable, refused) surface as read errors on
			// a connected UDP socket: they are losses, keep going.
			continue
		}
		now := time.Now()
		p.mu.Lock()
		if g := now.Sub(p.lastRecv); g > p.res.LongestGap {
			p.res.LongestGap = g
		}
		p.lastRecv = now
		p.res.Received++
		p.mu.Unlock()
	}
}

func (p *Probe) send() {
	defer close(p.done)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	var seq uint64
	msg := make([]byte, 16)
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		seq++
		binary.BigEndian.PutUint64(msg, seq)
		_, _ = p.client.Write(msg) // errors (unreachable) are counted as losses
		p.mu.Lock()
		p.res.Sent++
		p.lastSent = time.Now()
		p.mu.Unlock()
	}
}

// Snapshot returns the result so far, counting an ongoing outage.
func (p *Probe) Snapshot() ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
	if g := time.Since(p.lastRecv); g > r.LongestGap {
		r.LongestGap = g
	}
	return r
}

// Stop ends the probe, waits a moment for the last echoes and returns the
// result.
func (p *Probe) Stop() ProbeResult {
	p.stopOnce.Do(func() {
		close(p.stop)
		<-p.done
		time.Sleep(2 * p.interval)
		p.client.Close()
		p.server.Close()
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.res
	// An outage still going on at the end counts up to the last probe sent.
	if g := p.lastSent.Sub(p.lastRecv); g > r.LongestGap {
		r.LongestGap = g
	}
	return r
}
