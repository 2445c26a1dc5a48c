package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// Addressing of the two-host lab. The underlay is inside 198.18.0.0/15 (the
// benchmarking range) and the inner addresses inside the pod range
// 10.244.0.0/16, so no packet can leave the namespaces the harness created.
const (
	underlayA = "198.19.77.1"
	underlayB = "198.19.77.2"
	innerA    = "10.244.201.1"
	innerB    = "10.244.202.1"
	podCIDRA  = "10.244.201.0/24"
	podCIDRB  = "10.244.202.0/24"
	wgPort    = 51820
	// tunnelMTU is the inner MTU every tunnel gets: 1500-byte veth minus the
	// 60 bytes of IPv4+UDP+WireGuard overhead, what wg-quick would choose.
	tunnelMTU = 1440
)

// lab is two network namespaces joined by a veth pair.
type lab struct {
	id     string
	nsA    string
	nsB    string
	dir    string
	procs  []*exec.Cmd
	pinned bool
}

// labPrefix names the benchmark's namespaces (netnslab): a lab a killed
// run left behind is removed by the next one.
const labPrefix = "wgbench"

func newLab(pinned bool) (*lab, error) {
	if stale, err := netnslab.RemoveStale(labPrefix); err != nil {
		return nil, fmt.Errorf("remove the stale labs %v: %w", stale, err)
	}
	id, err := netnslab.NewID()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "wgmesh-bench-")
	if err != nil {
		return nil, err
	}
	base := netnslab.Base(labPrefix, id)
	l := &lab{id: id, nsA: base + "-a", nsB: base + "-b", dir: dir, pinned: pinned}
	ctx := context.Background()
	err = errors.Join(netnslab.Add(ctx, l.nsA), netnslab.Add(ctx, l.nsB))
	if err == nil {
		err = netnslab.Veth(ctx, "wbv-a-"+id, l.nsA, "wbv-b-"+id, l.nsB)
	}
	steps := [][]string{
		{"ip", "-n", l.nsA, "addr", "add", underlayA + "/24", "dev", "wbv-a-" + id},
		{"ip", "-n", l.nsB, "addr", "add", underlayB + "/24", "dev", "wbv-b-" + id},
		{"ip", "-n", l.nsA, "link", "set", "wbv-a-" + id, "up"},
		{"ip", "-n", l.nsB, "link", "set", "wbv-b-" + id, "up"},
	}
	for _, s := range steps {
		if err != nil {
			break
		}
		err = run(s...)
	}
	if err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

// close kills what the lab started and removes its namespaces; safe twice.
func (l *lab) close() {
	for _, c := range l.procs {
		if c.Process != nil {
			_ = c.Process.Kill()
			_, _ = c.Process.Wait()
		}
	}
	l.procs = nil
	for _, ns := range []string{l.nsA, l.nsB} {
		// Tunnel interfaces may be persistent TUN devices; delete every
		// non-loopback link before the namespace so nothing outlives it.
		out, _ := exec.Command("ip", "-n", ns, "-o", "link", "show").Output()
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
			if name != "lo" {
				_ = exec.Command("ip", "-n", ns, "link", "del", name).Run()
			}
		}
		_ = netnslab.Remove(ns)
	}
	for _, name := range l.sockets() {
		_ = os.Remove(name)
	}
	_ = os.RemoveAll(l.dir)
}

func (l *lab) sockets() []string {
	var s []string
	for _, ifc := range []string{l.ifName("a"), l.ifName("b")} {
		s = append(s, "/var/run/wireguard/"+ifc+".sock")
	}
	return s
}

// ifName is the tunnel interface of a side; unique across labs because the
// UAPI socket directory is shared by every namespace.
func (l *lab) ifName(side string) string { return "wgb" + side + "-" + l.id }

func (l *lab) ns(side string) string {
	if side == "a" {
		return l.nsA
	}
	return l.nsB
}

// cpu is the core a side's processes are pinned to in pinned mode.
func (l *lab) cpu(side string) string {
	if side == "a" {
		return "0"
	}
	return "1"
}

// command builds a command run inside a side's namespace, pinned to that
// side's core in pinned mode.
func (l *lab) command(ctx context.Context, side string, env []string, args ...string) *exec.Cmd {
	full := []string{"netns", "exec", l.ns(side)}
	if l.pinned {
		full = append(full, "taskset", "-c", l.cpu(side))
	}
	full = append(full, args...)
	c := exec.CommandContext(ctx, "ip", full...)
	c.Env = append(os.Environ(), env...)
	return c
}

// start runs a long-lived process in a side; its output goes to a log file.
func (l *lab) start(side string, env []string, args ...string) (*exec.Cmd, error) {
	c := l.command(context.Background(), side, env, args...)
	logf, err := os.Create(fmt.Sprintf("%s/%s-%d.log", l.dir, side, len(l.procs)))
	if err != nil {
		return nil, err
	}
	c.Stdout, c.Stderr = logf, logf
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("start %v in %s: %w", args, l.ns(side), err)
	}
	l.procs = append(l.procs, c)
	return c, nil
}

// waitPing waits until side a reaches addr through whatever tunnel is up.
func (l *lab) waitPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := exec.Command("ip", "netns", "exec", l.nsA, "ping", "-c", "1", "-W", "1", addr).Run()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no reply from %s within %s: tunnel did not come up (logs in %s)", addr, timeout, l.dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitListen waits until a TCP listener on port exists in a side's
// namespace: on a loaded machine iperf3 -s may take a while to bind.
func (l *lab) waitListen(side string, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.Command("ip", "netns", "exec", l.ns(side), "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
		if err == nil && len(bytes.TrimSpace(out)) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on TCP port %d in %s after %s (iperf3 -s did not start; logs in %s)", port, l.ns(side), timeout, l.dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pingInterval is the spacing of the echo requests under load: 50 per
// second gives a p99 from hundreds of samples in one run without adding
// load that matters next to gigabits of TCP.
const pingInterval = 20 * time.Millisecond

// pingResult is one ping run: the round trips of the replies (ms) and how
// many requests were sent.
type pingResult struct {
	rtts []float64
	sent int
	err  error
}

// ping sends echo requests from a side to addr for about d and collects
// the round trips of the replies.
func (l *lab) ping(ctx context.Context, side, addr string, d time.Duration) pingResult {
	n := int(d / pingInterval)
	if n < 1 {
		n = 1
	}
	c := l.command(ctx, side, nil, "ping", "-n", "-c", fmt.Sprint(n), "-i", fmt.Sprintf("%.3f", pingInterval.Seconds()), "-W", "1", addr)
	out, err := c.Output()
	// Exit status 1 means some requests went unanswered: that is a
	// measurement (loss), not a failure.
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return pingResult{err: fmt.Errorf("ping %s: %w (%s)", addr, err, bytes.TrimSpace(out))}
	}
	return pingResult{rtts: parsePingRTTs(string(out)), sent: n}
}

// parsePingRTTs returns the "time=… ms" of each reply line of iputils ping.
func parsePingRTTs(out string) []float64 {
	var rtts []float64
	for _, line := range strings.Split(out, "\n") {
		_, after, ok := strings.Cut(line, "time=")
		if !ok {
			continue
		}
		v, _, _ := strings.Cut(after, " ")
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			rtts = append(rtts, f)
		}
	}
	return rtts
}

// percentile is the nearest-rank p-th percentile of xs (not modified).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func output(ctx context.Context, args ...string) (string, error) {
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, args[0], args[1:]...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// cpuSeconds is user+system CPU time of a process and all its threads, from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name (field 2) may contain spaces; fields restart after ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	const clockTicks = 100 // USER_HZ on every Linux architecture Go supports here
	return (ut + st) / clockTicks, nil
}

// peakRSSMiB is the peak resident set (VmHWM) of a process in MiB: what the
// tunnel's buffers and queues cost in memory during the run.
func peakRSSMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmHWM of /proc/%d/status: %w", pid, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
