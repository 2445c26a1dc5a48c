package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// run executes a command and returns its standard output. The error names the
// command and carries its standard error, which is what tells the reader why.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lab: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// ipn runs `ip -n ns args...`.
func ipn(ctx context.Context, ns string, args ...string) error {
	_, err := run(ctx, "ip", append([]string{"-n", ns}, args...)...)
	return err
}

// sysctl sets key=value pairs inside namespace ns.
func sysctl(ctx context.Context, ns string, kv ...string) error {
	_, err := run(ctx, "ip", append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, kv...)...)
	return err
}

// execIn runs a command inside namespace ns and returns its combined output.
func execIn(ctx context.Context, ns string, cmd ...string) (string, error) {
	if len(cmd) == 0 {
		return "", errors.New("lab: exec: empty command")
	}
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, cmd...)...)
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lab: in namespace %s: %s: %w: %s", ns, strings.Join(cmd, " "), err, strings.TrimSpace(lastLines(string(out), 5)))
	}
	return string(out), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// InNetNS is inNetNS for tests that open their own sockets inside a lab
// namespace (a transparent listener, a raw probe).
func InNetNS(ns string, fn func() error) error { return inNetNS(ns, fn) }

// inNetNS runs fn on an OS thread switched into the named namespace. Sockets
// created by fn stay in that namespace for their whole life, so the caller
// can use them from any goroutine afterwards; that is how the traffic helpers
// talk from one pod to another without a helper process.
func inNetNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is only returned to the scheduler once it is back in
		// its original namespace; otherwise it exits with this goroutine.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("lab: open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join(netnsDir, ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: enter namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
