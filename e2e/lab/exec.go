package lab

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// run executes a command and returns its standard output. The error names the
// command and carries its standard error, which is what tells the reader why.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := netnslab.Run(ctx, name, args...)
	if err != nil {
		return out, fmt.Errorf("lab: %w", err)
	}
	return out, nil
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

// InNetNS is inNetNS for tests that open their own sockets inside a lab
// namespace (a transparent listener, a raw probe).
func InNetNS(ns string, fn func() error) error { return inNetNS(ns, fn) }

// inNetNS runs fn on an OS thread switched into the named namespace
// (netnslab.Do). Sockets created by fn stay in that namespace for their
// whole life, so the caller can use them from any goroutine afterwards;
// that is how the traffic helpers talk from one pod to another without a
// helper process.
func inNetNS(ns string, fn func() error) error {
	if err := netnslab.Do(ns, fn); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}
