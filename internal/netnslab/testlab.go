package netnslab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test side of the package: labs owned by one test, removed in its
// Cleanup, with stale labs of the same prefix (a killed earlier run)
// removed first. Tests using them must call SkipUnlessRoot.

// SkipUnlessRoot skips tb unless it runs as root with ip(8) and the tools
// named.
func SkipUnlessRoot(tb testing.TB, tools ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("privileged test: needs root (network namespaces)")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Skipf("privileged test: %s not installed", tool)
		}
	}
}

// Lab is the namespaces of one test.
type Lab struct {
	// ID is unique to this lab (6 characters of [0-9a-z]); use it in every
	// name that is global to the host, such as the interface names of
	// userspace devices, whose UAPI sockets share /var/run/wireguard.
	ID string
	// NS[i] is the namespace of the i-th role given to New.
	NS []string
}

// New removes stale labs of prefix, then creates one namespace per role,
// named Base(prefix, ID)+"-"+role with its loopback up; tb.Cleanup removes
// them with every process inside.
func New(tb testing.TB, prefix string, roles ...string) *Lab {
	tb.Helper()
	if stale, err := RemoveStale(prefix); err != nil {
		tb.Logf("removing stale labs %v: %v", stale, err)
	}
	id, err := NewID()
	if err != nil {
		tb.Fatal(err)
	}
	l := &Lab{ID: id}
	for _, role := range roles {
		ns := Base(prefix, id) + "-" + role
		if err := Add(context.Background(), ns); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() {
			if err := Remove(ns); err != nil {
				tb.Logf("cleanup: %v", err)
			}
		})
		l.NS = append(l.NS, ns)
	}
	return l
}

// UnderlayIface is the veth end's name inside each namespace of a Pair.
const UnderlayIface = "ul0"

// Pair is two namespaces joined by a veth pair, UnderlayIface in each, on
// the 198.18.0.0/24 underlay.
type Pair struct {
	*Lab
	// Underlay[i] is the address of namespace i on UnderlayIface.
	Underlay [2]netip.Addr
}

// NewPair creates the pair: namespaces <prefix>-<pid>-<id>-{0,1}, veth
// UnderlayIface in each, up, with 198.18.0.1/24 and 198.18.0.2/24.
func NewPair(tb testing.TB, prefix string) *Pair {
	tb.Helper()
	p := &Pair{Lab: New(tb, prefix, "0", "1")}
	if err := Veth(context.Background(), UnderlayIface, p.NS[0], UnderlayIface, p.NS[1]); err != nil {
		tb.Fatal(err)
	}
	for i := range 2 {
		p.Underlay[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		p.Run(tb, i, "ip", "addr", "add", p.Underlay[i].String()+"/24", "dev", UnderlayIface)
		p.Run(tb, i, "ip", "link", "set", UnderlayIface, "up")
	}
	return p
}

// MustRun runs a command and fails tb on error, returning its output.
func MustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Cmd returns a command that runs inside namespace i.
func (l *Lab) Cmd(i int, name string, args ...string) *exec.Cmd {
	return Command(context.Background(), l.NS[i], name, args...)
}

// Run runs a command inside namespace i and fails tb on error.
func (l *Lab) Run(tb testing.TB, i int, name string, args ...string) string {
	tb.Helper()
	return MustRun(tb, "ip", append([]string{"netns", "exec", l.NS[i], name}, args...)...)
}

// Try runs a command inside namespace i and returns its output and error.
func (l *Lab) Try(i int, name string, args ...string) (string, error) {
	out, err := l.Cmd(i, name, args...).CombinedOutput()
	return string(out), err
}

// WaitPing pings dst from namespace i once a second until a reply arrives
// or timeout passes (the first packets may wait for a WireGuard handshake).
func (l *Lab) WaitPing(t testing.TB, i int, dst netip.Addr, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, err := l.Try(i, "ping", "-n", "-c", "1", "-W", "1", dst.String())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %v from %s: no reply within %v: %v\n%s", dst, l.NS[i], timeout, err, out)
		}
	}
}

// Capture is a running tcpdump writing a pcap file.
type Capture struct {
	cmd    *exec.Cmd
	file   string
	stderr *bytes.Buffer
	done   chan error
	once   sync.Once
}

// StartCapture captures every packet on iface in namespace i until Stop.
// It returns once tcpdump is listening.
func (l *Lab) StartCapture(t testing.TB, i int, iface string) *Capture {
	t.Helper()
	file := filepath.Join(t.TempDir(), fmt.Sprintf("cap-%s-%d.pcap", iface, time.Now().UnixNano()))
	// --immediate-mode: hand each packet over at once instead of in ring
	// buffer blocks, which tcpdump discards unread when interrupted;
	// -U: write each packet at once; -s 160: headers are all we inspect.
	cmd := l.Cmd(i, "tcpdump", "-i", iface, "-n", "--immediate-mode", "-U", "-s", "160", "-w", file)
	pr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start tcpdump: %v", err)
	}
	c := &Capture{cmd: cmd, file: file, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		signalled := false
		for sc.Scan() {
			c.stderr.WriteString(sc.Text() + "\n")
			if !signalled && strings.Contains(sc.Text(), "listening on") {
				close(listening)
				signalled = true
			}
		}
		io.Copy(io.Discard, pr)
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() { c.Stop(t) })
	select {
	case <-listening:
	case err := <-c.done:
		c.done <- err
		t.Fatalf("tcpdump exited before listening: %v\n%s", err, c.stderr)
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start listening within 10s")
	}
	return c
}

// Stop ends the capture and flushes the file. Idempotent.
func (c *Capture) Stop(t testing.TB) {
	c.once.Do(func() {
		// Let packets still in flight reach the capture.
		time.Sleep(500 * time.Millisecond)
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			t.Errorf("tcpdump did not stop on SIGINT")
		}
	})
}

// Summary is tcpdump's own report (packets captured, dropped), for logs.
func (c *Capture) Summary() string {
	var lines []string
	for _, l := range strings.Split(c.stderr.String(), "\n") {
		if strings.Contains(l, "packets") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return strings.Join(lines, ", ")
}

// Count returns how many captured packets match the pcap filter.
func (c *Capture) Count(t testing.TB, filter string) int {
	t.Helper()
	out, err := exec.Command("tcpdump", "-r", c.file, "-n", filter).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s %q: %v", c.file, filter, err)
	}
	return bytes.Count(out, []byte("\n"))
}

// Lines returns up to n captured packets matching filter, for failure
// messages.
func (c *Capture) Lines(t testing.TB, filter string, n int) string {
	t.Helper()
	out, _ := exec.Command("tcpdump", "-r", c.file, "-n", "-c", fmt.Sprint(n), filter).Output()
	return string(out)
}
