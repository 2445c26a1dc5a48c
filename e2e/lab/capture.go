package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrCaptureStopped is returned by Stop on a capture that was already stopped.
var ErrCaptureStopped = errors.New("lab: capture already stopped")

// Capture is a tcpdump on the lab's switch bridge: every frame between any two
// namespaces of the lab passes it exactly once.
type Capture struct {
	// Path is the pcap file.
	Path string

	cmd    *exec.Cmd
	done   chan struct{}
	mu     sync.Mutex
	stderr strings.Builder
	result *CaptureResult
}

// CaptureResult is what a stopped capture recorded.
type CaptureResult struct {
	Counts
	// KernelDropped is tcpdump's "packets dropped by kernel": frames the
	// capture missed. Non-zero makes a zero plaintext count unreliable.
	KernelDropped int
}

// snapLen keeps the headers the counters need (Ethernet, IPv6, UDP and the
// first bytes of the WireGuard message) and little else, so long transfers
// produce small files.
const snapLen = 128

// StartCapture starts tcpdump on the switch bridge, writing to capture.pcap in
// the lab directory, and returns once tcpdump is listening. Close stops it.
func (l *Lab) StartCapture(ctx context.Context) (*Capture, error) {
	return l.StartCaptureFile(ctx, filepath.Join(l.dir, "capture.pcap"))
}

// StartCaptureFile is StartCapture writing to path.
func (l *Lab) StartCaptureFile(ctx context.Context, path string) (*Capture, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab: closed")
	}
	if l.capture != nil && l.capture.result == nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("lab: a capture is already running (%s)", l.capture.Path)
	}
	l.mu.Unlock()
	// --immediate-mode: without it packets wait in the kernel ring until a
	// block fills or a timeout passes, and whatever waits there when tcpdump
	// is stopped is silently lost — the last second of a scenario, or all
	// of a short one. -Z root: Debian's tcpdump otherwise drops to a user
	// that cannot write into the lab's 0700 directory. -B: a large kernel
	// buffer so bursts of a fast transfer are not dropped.
	cmd := exec.Command("ip", "netns", "exec", l.Switch,
		"tcpdump", "-i", l.Bridge, "-nn", "--immediate-mode", "-s", strconv.Itoa(snapLen), "-B", "16384", "-U", "-Z", "root", "-w", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("lab: start tcpdump on %s in %s: %w", l.Bridge, l.Switch, err)
	}
	c := &Capture{Path: path, cmd: cmd, done: make(chan struct{})}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.stderr.WriteString(line + "\n")
			c.mu.Unlock()
			if strings.Contains(line, "listening on") {
				once.Do(func() { close(listening) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(c.done)
	}()
	select {
	case <-listening:
	case <-c.done:
		return nil, fmt.Errorf("lab: tcpdump on %s in %s exited: %s", l.Bridge, l.Switch, c.stderrText())
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-c.done
		return nil, fmt.Errorf("lab: tcpdump on %s in %s did not start listening: %w", l.Bridge, l.Switch, ctx.Err())
	}
	l.mu.Lock()
	l.capture = c
	l.mu.Unlock()
	return c, nil
}

func (c *Capture) stderrText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.stderr.String())
}

var (
	droppedRE  = regexp.MustCompile(`(\d+) packets? dropped by kernel`)
	capturedRE = regexp.MustCompile(`(\d+) packets? captured`)
)

// Stop ends the capture (SIGINT, so tcpdump flushes the file), then counts
// what it recorded.
func (c *Capture) Stop() (CaptureResult, error) {
	c.mu.Lock()
	if c.result != nil {
		r := *c.result
		c.mu.Unlock()
		return r, ErrCaptureStopped
	}
	c.mu.Unlock()
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	var r CaptureResult
	stderr := c.stderrText()
	if m := droppedRE.FindStringSubmatch(stderr); m != nil {
		r.KernelDropped, _ = strconv.Atoi(m[1])
	}
	counts, err := CountPcapFile(c.Path, DefaultClassifier())
	r.Counts = counts
	c.mu.Lock()
	c.result = &r
	c.mu.Unlock()
	if err != nil {
		return r, fmt.Errorf("lab: capture %s: %w", c.Path, err)
	}
	// The file must hold what tcpdump says it captured, or the counts
	// describe only part of the scenario.
	m := capturedRE.FindStringSubmatch(stderr)
	if m == nil {
		return r, fmt.Errorf("lab: capture %s: tcpdump printed no statistics: %s", c.Path, stderr)
	}
	if n, _ := strconv.Atoi(m[1]); n != r.Frames {
		return r, fmt.Errorf("lab: capture %s holds %d frames but tcpdump captured %d", c.Path, r.Frames, n)
	}
	return r, nil
}

// Recount counts the stopped (or running) capture again with another
// classifier, for example one that exempts a node known to run no agent.
func (c *Capture) Recount(cl Classifier) (Counts, error) {
	return CountPcapFile(c.Path, cl)
}

// Snapshot counts what the capture has written so far without stopping it.
// tcpdump runs with -U (flush per packet), so the file is current up to the
// last packet.
func (c *Capture) Snapshot() (Counts, error) {
	return CountPcapFile(c.Path, DefaultClassifier())
}
