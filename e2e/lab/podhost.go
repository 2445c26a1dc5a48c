package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// EchoResult is one TCP echo exchange between two namespaces.
type EchoResult struct {
	// Local is the client's address as the server saw it: the source the
	// connection actually used (a masquerade or a wrong choice shows here).
	Local netip.AddrPort
	// Bytes is how many bytes came back intact.
	Bytes int
	// Duration is from the dial to the last byte back.
	Duration time.Duration
}

func (r EchoResult) String() string {
	return fmt.Sprintf("%d bytes echoed in %s, server saw the client as %s", r.Bytes, r.Duration.Round(time.Millisecond), r.Local)
}

// TCPEcho listens on dst (port 0: any free port) inside namespace serverNS,
// connects to it from namespace clientNS with source address local (zero:
// the kernel chooses, as an unbound socket does), sends n random bytes and
// checks that the same bytes come back. It is the shape of a pod talking to
// a host-network listener (the API server, a kubelet) or of a host process
// bound to the node address (`curl --interface`) talking to a pod. ctx bounds
// the whole exchange; a connection that cannot be made is an error naming
// both ends.
func TCPEcho(ctx context.Context, clientNS string, local netip.Addr, serverNS string, dst netip.Addr, n int) (EchoResult, error) {
	var res EchoResult
	ln, err := listenIn(serverNS, dst)
	if err != nil {
		return res, err
	}
	defer ln.Close()
	type served struct {
		peer netip.AddrPort
		err  error
	}
	srv := make(chan served, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- served{err: err}
			return
		}
		defer c.Close()
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_, err = io.Copy(c, c)
		srv <- served{peer: peer, err: err}
	}()
	// Unblock the server when ctx ends before the client gets through.
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	start := time.Now()
	dst = dst.WithZone("")
	target := netip.AddrPortFrom(dst, uint16(ln.Addr().(*net.TCPAddr).Port))
	var conn net.Conn
	err = inNetNS(clientNS, func() error {
		d := net.Dialer{}
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
		}
		var err error
		conn, err = d.DialContext(ctx, "tcp", target.String())
		return err
	})
	if err != nil {
		return res, fmt.Errorf("lab: connect from %s (source %v) to %s in %s: %w", clientNS, local, target, serverNS, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	payload := make([]byte, n)
	_, _ = rand.Read(payload)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(payload)
		if err == nil {
			err = conn.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(conn)
	if err := errors.Join(<-werr, rerr); err != nil {
		return res, fmt.Errorf("lab: echo %s -> %s: %d of %d bytes back: %w", clientNS, target, len(got), n, err)
	}
	if !bytes.Equal(got, payload) {
		return res, fmt.Errorf("lab: echo %s -> %s: %d bytes back, want the %d sent, unchanged", clientNS, target, len(got), n)
	}
	res.Bytes, res.Duration = len(got), time.Since(start)
	select {
	case s := <-srv:
		if s.err != nil {
			return res, fmt.Errorf("lab: echo server %s in %s: %w", target, serverNS, s.err)
		}
		res.Local = s.peer
	case <-ctx.Done():
		return res, fmt.Errorf("lab: echo server %s in %s did not finish: %w", target, serverNS, ctx.Err())
	}
	return res, nil
}
