package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// TransferVia moves n pseudo-random bytes over one TCP connection that a
// client in namespace clientNS opens to dial, and that a server in
// namespace serverNS accepts on listen. dial and listen differ when
// something in between translates addresses (a NodePort: DNAT to a pod and
// masquerade). With download the server sends and the client receives,
// otherwise the client sends. It checks that the receiver got exactly what
// was sent; ctx bounds the whole transfer, and a stalled connection fails
// with the number of bytes that got through.
func TransferVia(ctx context.Context, clientNS string, dial netip.AddrPort, serverNS string, listen netip.AddrPort, n int64, download bool) (TransferResult, error) {
	var ln *net.TCPListener
	if err := inNetNS(serverNS, func() error {
		var err error
		ln, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(listen))
		return err
	}); err != nil {
		return TransferResult{}, fmt.Errorf("lab: listen on %s in %s: %w", listen, serverNS, err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client, err := dialIn(dialCtx, clientNS, dial)
	if err != nil {
		return TransferResult{}, err
	}
	defer client.Close()
	var server net.Conn
	select {
	case server = <-accepted:
	case <-ctx.Done():
	}
	if server == nil {
		return TransferResult{}, fmt.Errorf("lab: %s accepted no connection from %s via %s", listen, clientNS, dial)
	}
	defer server.Close()
	var src, dst net.Conn = client, server
	if download {
		src, dst = server, client
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = src.SetDeadline(dl)
		_ = dst.SetDeadline(dl)
	}

	start := time.Now()
	type sent struct {
		digest [32]byte
		err    error
	}
	sentc := make(chan sent, 1)
	go func() {
		h := sha256.New()
		p := newPayload(uint64(start.UnixNano()))
		buf := make([]byte, 32<<10)
		var total int64
		var err error
		for total < n && err == nil {
			chunk := buf[:min(int64(len(buf)), n-total)]
			p.fill(chunk)
			h.Write(chunk)
			var k int
			k, err = src.Write(chunk)
			total += int64(k)
		}
		if err == nil {
			err = src.(*net.TCPConn).CloseWrite()
		}
		var s sent
		copy(s.digest[:], h.Sum(nil))
		s.err = err
		sentc <- s
	}()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var res TransferResult
	last := start
	var rerr error
	for {
		k, err := dst.Read(buf)
		if k > 0 {
			now := time.Now()
			h.Write(buf[:k])
			res.Bytes += int64(k)
			res.LongestGap = max(res.LongestGap, now.Sub(last))
			last = now
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rerr = err
			break
		}
	}
	res.Duration = time.Since(start)
	copy(res.ReceivedSHA256[:], h.Sum(nil))
	// Unblock the sender if the receiver gave up.
	_ = src.Close()
	s := <-sentc
	res.SentSHA256 = s.digest
	dir := "upload"
	if download {
		dir = "download"
	}
	switch {
	case rerr != nil:
		return res, fmt.Errorf("lab: %s %s -> %s: stalled or failed after %d of %d bytes: %w", dir, clientNS, dial, res.Bytes, n, rerr)
	case res.Bytes != n:
		return res, fmt.Errorf("lab: %s %s -> %s: received %d of %d bytes (sender: %v)", dir, clientNS, dial, res.Bytes, n, s.err)
	case !res.OK():
		return res, fmt.Errorf("lab: %s %s -> %s: sha256 differs", dir, clientNS, dial)
	}
	return res, nil
}
