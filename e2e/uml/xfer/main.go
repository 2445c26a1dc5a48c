// Command xfer moves a pseudo-random byte stream over TCP and prints its
// length and SHA-256, so the e2e tests can check a transfer end to end between
// pods of UML guests and of host namespaces (the guests run host binaries).
//
//	xfer recv ADDR PORT        accept one connection, print "BYTES SHA256" at EOF
//	xfer send ADDR PORT BYTES  connect (retrying for 30 s), send, print "BYTES SHA256"
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "xfer:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: xfer recv ADDR PORT | xfer send ADDR PORT BYTES")
	}
	hp := net.JoinHostPort(args[1], args[2])
	switch args[0] {
	case "recv":
		ln, err := net.Listen("tcp", hp)
		if err != nil {
			return err
		}
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return err
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return fmt.Errorf("after %d bytes: %w", n, err)
		}
		fmt.Println(n, hex.EncodeToString(h.Sum(nil)))
		return nil
	case "send":
		if len(args) != 4 {
			return fmt.Errorf("send needs BYTES")
		}
		total, err := strconv.ParseInt(args[3], 10, 64)
		if err != nil {
			return err
		}
		var c net.Conn
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err = net.DialTimeout("tcp", hp, 5*time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		rng := rand.NewChaCha8([32]byte{byte(total), 1})
		buf := make([]byte, 64<<10)
		var sent int64
		for sent < total {
			b := buf[:min(int64(len(buf)), total-sent)]
			rng.Read(b)
			h.Write(b)
			if _, err := c.Write(b); err != nil {
				return fmt.Errorf("after %d bytes: %w", sent, err)
			}
			sent += int64(len(b))
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		// Wait for the receiver to close: it has read everything.
		io.Copy(io.Discard, c)
		c.Close()
		fmt.Println(sent, hex.EncodeToString(h.Sum(nil)))
		return nil
	}
	return fmt.Errorf("unknown mode %q", args[0])
}
