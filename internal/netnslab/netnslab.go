// Package netnslab holds the network-namespace primitives every lab of the
// project builds on: the device and routing privileged tests, the benchmark
// lab (bench/cmd/benchrun) and the e2e lab (e2e/lab, e2e/apiserver). A lab
// is a set of namespaces named
//
//	<prefix>-<pid>-<id>-<role>
//
// prefix names the kind of lab, pid is the creating process and id is random,
// so parallel labs never collide and a lab left behind by a killed process
// is recognised by its dead pid and removed by the next run (RemoveStale).
//
// The primitives shell out to ip(8), as an operator would, except Do, which
// enters a namespace in process so that sockets can be opened inside it.
// Everything here needs root.
package netnslab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is where `ip netns` keeps its named namespaces.
const Dir = "/var/run/netns"

// NewID returns 6 random characters of [0-9a-z] for a lab's names.
func NewID() (string, error) {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("netnslab: random id: %w", err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:]), nil
}

// Base is "<prefix>-<pid>-<id>", the start of every name of a lab of this
// process; a namespace's name is Base + "-" + role. prefix must not contain
// '-'.
func Base(prefix, id string) string { return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), id) }

// ParseName splits "<prefix>-<pid>-<id>-<role>" into pid and id; ok is false
// for names of other prefixes or shapes.
func ParseName(prefix, name string) (pid int, id string, ok bool) {
	rest, found := strings.CutPrefix(name, prefix+"-")
	if !found {
		return 0, "", false
	}
	parts := strings.SplitN(rest, "-", 3)
	if len(parts) != 3 {
		return 0, "", false
	}
	pid, err := strconv.Atoi(parts[0])
	if err != nil || pid <= 0 {
		return 0, "", false
	}
	return pid, parts[1], true
}

// Add creates namespace name with its loopback up.
func Add(ctx context.Context, name string) error {
	if _, err := Run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	_, err := Run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// Veth creates a veth pair: end a in namespace nsA and end b in nsB. Extra
// arguments (e.g. "mtu", "1400") go to the a end's `ip link add`.
func Veth(ctx context.Context, a, nsA, b, nsB string, extra ...string) error {
	args := append([]string{"link", "add", "name", a}, extra...)
	args = append(args, "netns", nsA, "type", "veth", "peer", "name", b, "netns", nsB)
	_, err := Run(ctx, "ip", args...)
	return err
}

// Remove kills every process in namespace name and deletes it, so the
// namespace really goes with its last reference. A namespace that does not
// exist is not an error.
func Remove(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join(Dir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killAll(ctx, name)
	if _, err := Run(ctx, "ip", "netns", "del", name); err != nil {
		if _, serr := os.Stat(filepath.Join(Dir, name)); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return err
	}
	return nil
}

// killAll sends SIGKILL to every process inside ns, retrying briefly while
// new ones show up or old ones linger.
func killAll(ctx context.Context, ns string) {
	for range 20 {
		out, err := Run(ctx, "ip", "netns", "pids", ns)
		if err != nil {
			return
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// RemoveAll removes the namespaces names, the longest name first (a pod
// "...-n1-p1" before its node "...-n1"), and returns every failure joined.
func RemoveAll(names []string) error {
	names = append([]string(nil), names...)
	sort.SliceStable(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	var errs []error
	for _, ns := range names {
		errs = append(errs, Remove(ns))
	}
	return errors.Join(errs...)
}

// RemoveStale removes the namespaces of labs with prefix whose creating
// process no longer runs (a killed earlier run), with the processes in
// them, and returns their names. Labs of live processes, this one
// included, are left alone.
func RemoveStale(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netnslab: list %s: %w", Dir, err)
	}
	var stale []string
	for _, e := range entries {
		pid, _, ok := ParseName(prefix, e.Name())
		if !ok || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		stale = append(stale, e.Name())
	}
	return stale, RemoveAll(stale)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Command returns a command that runs name inside namespace ns.
func Command(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Run runs a command and returns its standard output; the error names the
// command and carries its standard error.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Do runs fn on an OS thread switched into namespace ns ("" runs fn in
// place). Sockets fn creates stay in ns for their whole life, so the caller
// may use them from any goroutine afterwards. The thread returns to the
// scheduler only once it is back in its own namespace; otherwise it exits
// with fn's goroutine.
func Do(ns string, fn func() error) error {
	if ns == "" {
		return fn()
	}
	target, err := os.Open(filepath.Join(Dir, ns))
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
