// Package nstest builds the small network-namespace labs of the device
// package's privileged tests: two namespaces joined by a veth pair on the
// 198.18.0.0/24 underlay, commands run inside them with `ip netns exec`, and
// tcpdump captures. Everything it creates carries a unique suffix and is
// removed in t.Cleanup. Tests using it must skip unless root.
package nstest

import (
	"bufio"
	"bytes"
	"crypto/rand"
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

// UnderlayIface is the veth end's name inside each namespace.
const UnderlayIface = "ul0"

// Lab is two namespaces joined by a veth pair.
type Lab struct {
	// Suffix is unique to this lab; use it in every name that is global
	// to the host (interface names of userspace devices, because their
	// UAPI sockets share /var/run/wireguard).
	Suffix string
	NS     [2]string
	// Underlay[i] is the address of namespace i on UnderlayIface.
	Underlay [2]netip.Addr
}

// SkipUnlessRoot skips t unless it runs as root with the tools the labs
// need.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root (network namespaces, TUN devices)")
	}
	for _, tool := range []string{"ip", "tcpdump", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("privileged test: %s not installed", tool)
		}
	}
}

// NewSuffix returns 6 random lower-case letters and digits.
func NewSuffix(t testing.TB) string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// New creates the lab: namespaces wgmdev-<pid>-<suffix>-{0,1}, loopback up,
// veth UnderlayIface in each with 198.18.0.1/24 and 198.18.0.2/24.
func New(t testing.TB) *Lab {
	t.Helper()
	l := &Lab{Suffix: NewSuffix(t)}
	for i := range l.NS {
		l.NS[i] = fmt.Sprintf("wgmdev-%d-%s-%d", os.Getpid(), l.Suffix, i)
		l.Underlay[i] = netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		Run(t, "ip", "netns", "add", l.NS[i])
		ns := l.NS[i]
		t.Cleanup(func() {
			// Deleting the namespace destroys its interfaces (veth, TUN).
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Logf("cleanup: ip netns del %s: %v: %s", ns, err, out)
			}
		})
		l.Run(t, i, "ip", "link", "set", "lo", "up")
	}
	Run(t, "ip", "link", "add", "name", UnderlayIface, "netns", l.NS[0], "type", "veth",
		"peer", "name", UnderlayIface, "netns", l.NS[1])
	for i := range l.NS {
		l.Run(t, i, "ip", "addr", "add", l.Underlay[i].String()+"/24", "dev", UnderlayIface)
		l.Run(t, i, "ip", "link", "set", UnderlayIface, "up")
	}
	return l
}

// Run runs a command and fails t on error, returning its output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Cmd returns a command that runs inside namespace i.
func (l *Lab) Cmd(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", l.NS[i], name}, args...)...)
}

// Run runs a command inside namespace i and fails t on error.
func (l *Lab) Run(t testing.TB, i int, name string, args ...string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", l.NS[i], name}, args...)...)
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
