package device

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/internal/netnslab"
	"github.com/wgmesh/wgmesh/mesh"
)

// The privileged tests run devices and traffic generators inside network
// namespaces by re-executing the test binary under `ip netns exec` with
// helperEnv set to a mode; TestMain then runs the helper instead of tests.
// A namespace switch is per thread, so a separate process is the robust
// way to own a device inside a namespace (and to kill it with -9).
const (
	helperEnv     = "WGMESH_DEVICE_HELPER"
	helperArgEnv  = "WGMESH_DEVICE_HELPER_ARG"
	helperSizeEnv = "WGMESH_DEVICE_HELPER_SIZE"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Getenv(helperArgEnv)))
	}
	os.Exit(m.Run())
}

// helperConfig is what a device helper opens and applies.
type helperConfig struct {
	Name string
	// Backend is a Choice; "" means userspace.
	Backend         Choice
	DisableOffloads bool
	InflightPackets int
	// Remove removes the interface on SIGTERM after closing (what the
	// agent does after a failed start).
	Remove         bool
	PrivateKeyFile string
	ListenPort     int
	FwMark         uint32
	Peers          []helperPeer
}

type helperPeer struct {
	PublicKey  string
	Endpoint   string
	AllowedIPs []string
	Keepalive  int
}

func runHelper(mode, arg string) int {
	var err error
	switch mode {
	case "device":
		err = helperDevice(arg)
	case "remove":
		err = Remove(arg)
	case "tcp-recv":
		err = helperRecv(arg)
	case "tcp-send":
		size, _ := strconv.Atoi(os.Getenv(helperSizeEnv))
		err = helperSend(arg, size)
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper error:", err)
		return 1
	}
	return 0
}

func helperDevice(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var hc helperConfig
	if err := json.Unmarshal(raw, &hc); err != nil {
		return err
	}
	keyText, err := os.ReadFile(hc.PrivateKeyFile)
	if err != nil {
		return err
	}
	priv, err := mesh.ParseKey(strings.TrimSpace(string(keyText)))
	if err != nil {
		return err
	}
	cfg := mesh.DeviceConfig{PrivateKey: priv, ListenPort: hc.ListenPort, FwMark: hc.FwMark}
	for _, hp := range hc.Peers {
		pub, err := mesh.ParseKey(hp.PublicKey)
		if err != nil {
			return err
		}
		p := mesh.Peer{Node: hp.PublicKey[:8], PublicKey: pub, Keepalive: time.Duration(hp.Keepalive) * time.Second}
		if hp.Endpoint != "" {
			if p.Endpoint, err = netip.ParseAddrPort(hp.Endpoint); err != nil {
				return err
			}
		}
		for _, s := range hp.AllowedIPs {
			q, err := netip.ParsePrefix(s)
			if err != nil {
				return err
			}
			p.AllowedIPs = append(p.AllowedIPs, q)
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if hc.Backend == "" {
		hc.Backend = ChoiceUserspace
	}
	d, err := Open(ctx, Options{Name: hc.Name, Backend: hc.Backend, DisableOffloads: hc.DisableOffloads, InflightPackets: hc.InflightPackets, Logger: logger})
	if err != nil {
		return err
	}
	if err := d.Configure(ctx, cfg); err != nil {
		d.Close()
		return err
	}
	ifi, err := net.InterfaceByName(hc.Name)
	if err != nil {
		d.Close()
		return err
	}
	fmt.Printf("ready %d\n", ifi.Index)
	<-sig
	// The offload state at the end, for the test to read from stderr.
	for _, o := range d.Offloads() {
		fmt.Fprintf(os.Stderr, "offload %s active=%v fallbacks=%d reason=%q\n", o.Kind, o.Active, o.Fallbacks, o.Reason)
	}
	if u, ok := d.(*userspace); ok {
		for _, w := range []struct {
			dir string
			w   *inflight
		}{{"tx", u.tx}, {"rx", u.rx}} {
			if w.w != nil {
				fmt.Fprintf(os.Stderr, "inflight %s limit=%d peak=%d resets=%d\n", w.dir, w.w.limit, w.w.peak.Load(), w.w.resets.Load())
			}
		}
	}
	if hc.Remove {
		return errors.Join(d.Close(), Remove(d.Name()))
	}
	return d.Close()
}

// helperRecv accepts one TCP connection on addr and prints the byte count
// and SHA-256 of everything received.
func helperRecv(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Println("listening")
	l.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Minute))
	c, err := l.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return err
	}
	fmt.Printf("%d %x\n", n, h.Sum(nil))
	return nil
}

// helperSend connects to addr (retrying while the tunnel comes up), sends
// size pseudo-random bytes and prints their count and SHA-256.
func helperSend(addr string, size int) error {
	var c net.Conn
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	src := rand.NewChaCha8([32]byte{'w', 'g', 'm', 'e', 's', 'h'})
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(src, int64(size)))
	if err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	fmt.Printf("%d %x\n", n, h.Sum(nil))
	return nil
}

// helperProc is a running helper subprocess.
type helperProc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
	exited chan struct{}
	err    error
}

// startHelper runs the test binary in mode inside namespace ns of lab.
func startHelper(t *testing.T, lab *netnslab.Lab, ns int, mode, arg string, extraEnv ...string) *helperProc {
	t.Helper()
	cmd := lab.Cmd(ns, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperArgEnv+"="+arg)
	cmd.Env = append(cmd.Env, extraEnv...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &helperProc{cmd: cmd, lines: make(chan string, 16), stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = h.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", mode, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		h.err = cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// line waits for the next stdout line.
func (h *helperProc) line(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			<-h.exited
			t.Fatalf("helper exited (%v) without output; stderr:\n%s", h.err, h.stderr)
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("helper printed nothing within %v; stderr:\n%s", timeout, h.stderr)
	}
	return ""
}

// wait waits for the helper to exit and returns its error.
func (h *helperProc) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-h.exited:
		return h.err
	case <-time.After(timeout):
		t.Fatalf("helper did not exit within %v; stderr:\n%s", timeout, h.stderr)
	}
	return nil
}

// stop sends SIGTERM, then SIGKILL if needed.
func (h *helperProc) stop(t *testing.T) {
	select {
	case <-h.exited:
		return
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.exited
		t.Errorf("helper ignored SIGTERM; stderr:\n%s", h.stderr)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// deviceSpec is one wgmesh userspace device in a lab namespace.
type deviceSpec struct {
	ns     int
	name   string
	priv   mesh.Key
	inner  netip.Addr   // tunnel address, /32 on the interface
	routes netip.Prefix // own prefix (allowed IPs at the peer)
}

func writeHelperConfig(t *testing.T, hc helperConfig, priv mesh.Key) string {
	t.Helper()
	dir := t.TempDir()
	hc.PrivateKeyFile = filepath.Join(dir, hc.Name+".key")
	if err := os.WriteFile(hc.PrivateKeyFile, []byte(priv.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(hc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, hc.Name+".json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// transfer sends size bytes over TCP from namespace from to dst (listening
// in namespace to) and checks that they arrive intact.
func transfer(t *testing.T, lab *netnslab.Lab, from, to int, dst netip.AddrPort, size int) {
	t.Helper()
	recv := startHelper(t, lab, to, "tcp-recv", dst.String())
	if l := recv.line(t, 20*time.Second); l != "listening" {
		t.Fatalf("receiver: %q", l)
	}
	send := startHelper(t, lab, from, "tcp-send", dst.String(), helperSizeEnv+"="+strconv.Itoa(size))
	sent := send.line(t, 3*time.Minute)
	got := recv.line(t, 30*time.Second)
	if err := send.wait(t, 10*time.Second); err != nil {
		t.Fatalf("sender: %v\n%s", err, send.stderr)
	}
	if err := recv.wait(t, 10*time.Second); err != nil {
		t.Fatalf("receiver: %v\n%s", err, recv.stderr)
	}
	if want := fmt.Sprintf("%d ", size); !strings.HasPrefix(sent, want) {
		t.Fatalf("sender reports %q, want %d bytes", sent, size)
	}
	if got != sent {
		t.Fatalf("TCP transfer corrupted: sent %q, received %q", sent, got)
	}
}
