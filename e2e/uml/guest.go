package uml

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wgmesh/wgmesh/e2e/internal/buildcache"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

//go:embed init.sh
var initScript []byte

// Options describe a guest.
type Options struct {
	// Kernel is the UML kernel to boot.
	Kernel *Kernel
	// Lab and Node: the guest takes over the lab node's identity (underlay
	// and link-local addresses, pod CIDRs and pod addresses, directory, key
	// and peers file); the node's namespace is unplugged from the switch.
	Lab  *lab.Lab
	Node *lab.Node
	// Wgmesh is the wgmesh binary (on the host; the guest sees it through
	// the read-only root).
	Wgmesh string
	// Mem is the guest's memory ("256M" when empty).
	Mem string
	// Logf receives progress; nil discards it.
	Logf func(string, ...any)
}

// Guest is a running UML node. Create it with Boot; always Close it.
type Guest struct {
	// Node is the lab node the guest stands in for.
	Node *lab.Node
	// Kernel is what it booted.
	Kernel *Kernel
	// Tap is the TAP device on the lab bridge (in the switch namespace).
	Tap string
	// BootTime is from starting the UML process to the init script's
	// command loop running.
	BootTime time.Duration

	o       Options
	cmd     *exec.Cmd
	done    chan struct{}
	seq     atomic.Int64
	closeMu sync.Mutex
	closed  bool
	agentN  int
}

// cmdDir is the exchange folder inside the node directory.
func (g *Guest) cmdDir() string { return filepath.Join(g.Node.Dir, "cmd") }

// ConsoleLog is the guest kernel's console output.
func (g *Guest) ConsoleLog() string { return filepath.Join(g.Node.Dir, "console.log") }

// Boot starts a UML guest in place of o.Node: it unplugs the node's namespace
// from the switch, plugs a TAP device into the bridge instead, boots the
// kernel on it and gives the guest the node's addresses, pod bridge and pods
// (and the lab's plaintext host-gw routes to the other nodes' pods). The UML
// process runs in the switch namespace, so a lab removed by lab.RemoveStale
// after a killed run takes the guest and its TAP with it.
func Boot(ctx context.Context, o Options) (*Guest, error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	if o.Mem == "" {
		o.Mem = "256M"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if hiddenInGuest(o.Wgmesh, o.Lab.Dir()) {
		return nil, fmt.Errorf("uml: the guest cannot see %s: init.sh covers %v with tmpfs (use GuestBinary)", o.Wgmesh, guestTmpfs)
	}
	n := o.Node
	g := &Guest{Node: n, Kernel: o.Kernel, o: o, Tap: fmt.Sprintf("u%sn%d", o.Lab.ID(), n.Index)}
	sw := o.Lab.Switch
	// The node's veth port on the switch is named after the node.
	if _, err := run(ctx, "ip", "-n", sw, "link", "del", n.Name); err != nil {
		return nil, fmt.Errorf("uml: unplug namespace node %s: %w", n.Name, err)
	}
	if _, err := run(ctx, "ip", "-n", sw, "tuntap", "add", "dev", g.Tap, "mode", "tap"); err != nil {
		return nil, fmt.Errorf("uml: create TAP %s: %w", g.Tap, err)
	}
	if _, err := run(ctx, "ip", "-n", sw, "link", "set", g.Tap, "master", o.Lab.Bridge, "up"); err != nil {
		return nil, fmt.Errorf("uml: plug TAP %s into %s: %w", g.Tap, o.Lab.Bridge, err)
	}
	if err := os.MkdirAll(g.cmdDir(), 0o700); err != nil {
		return nil, fmt.Errorf("uml: %w", err)
	}
	os.Remove(filepath.Join(g.cmdDir(), "boot"))
	os.Remove(filepath.Join(g.cmdDir(), "poweroff"))
	initPath := filepath.Join(n.Dir, "uml-init.sh")
	if err := os.WriteFile(initPath, initScript, 0o755); err != nil {
		return nil, fmt.Errorf("uml: write %s: %w", initPath, err)
	}
	console, err := os.OpenFile(g.ConsoleLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("uml: console log: %w", err)
	}
	defer console.Close()
	umlDir := filepath.Join(n.Dir, "uml")
	os.MkdirAll(umlDir, 0o700)
	args := []string{
		"netns", "exec", sw, o.Kernel.Path,
		"mem=" + o.Mem, "rootfstype=hostfs", "rootflags=/", "ro", "init=" + initPath,
		"vec0:transport=tap,ifname=" + g.Tap, "con=null", "con0=null,fd:1",
		"umid=" + g.Tap, "uml_dir=" + umlDir,
		// Words with '=' the kernel does not know reach init's environment.
		"LAB=" + o.Lab.Dir(), "X=" + n.Dir, "NAME=" + n.Name,
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("uml: start %s: %w", o.Kernel.Path, err)
	}
	g.cmd, g.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(g.done) }()
	if err := g.waitBoot(ctx); err != nil {
		g.Close()
		return nil, err
	}
	g.BootTime = time.Since(start)
	o.Logf("uml: %s booted kernel %s in %s", n.Name, o.Kernel.Variant.Name, g.BootTime.Round(time.Millisecond))
	if _, err := g.Run(ctx, g.networkScript()); err != nil {
		g.Close()
		return nil, fmt.Errorf("uml: %s: network setup: %w", n.Name, err)
	}
	return g, nil
}

func (g *Guest) waitBoot(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		if _, err := os.Stat(filepath.Join(g.cmdDir(), "boot")); err == nil {
			return nil
		}
		select {
		case <-g.done:
			return fmt.Errorf("uml: %s: kernel exited during boot; console:\n%s", g.Node.Name, g.consoleTail())
		case <-ctx.Done():
			return fmt.Errorf("uml: %s: no command loop after %s; console:\n%s", g.Node.Name, "3m", g.consoleTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (g *Guest) consoleTail() string {
	b, _ := os.ReadFile(g.ConsoleLog())
	return buildcache.Tail(b, 3000)
}

// networkScript wires the guest like lab.build wires a node namespace.
func (g *Guest) networkScript() string {
	n := g.Node
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	p("set -e")
	p("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
	p("ip link set vec0 name eth0")
	p("ip addr add %s/15 dev eth0", n.Underlay)
	p("ip addr add %s/64 dev eth0 nodad", n.LinkLocal)
	if n.Underlay6.IsValid() {
		p("ip addr add %s/64 dev eth0 nodad", n.Underlay6)
	}
	p("ip link set eth0 up")
	p("ip link add name cni0 type bridge")
	p("ip addr add %s/24 dev cni0", n.Gateway4)
	p("ip addr add %s/64 dev cni0 nodad", n.Gateway6)
	p("ip link set cni0 mtu 1420 up")
	for i, pod := range n.Pods {
		ns := fmt.Sprintf("pod%d", i+1)
		p("ip netns add %s", ns)
		p("ip -n %s link set lo up", ns)
		p("ip netns exec %s sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0", ns)
		p("ip link add name veth%d mtu 1420 type veth peer name eth0 mtu 1420 netns %s", i+1, ns)
		p("ip link set veth%d master cni0 up", i+1)
		p("ip -n %s addr add %s/24 dev eth0", ns, pod.Addr4)
		p("ip -n %s addr add %s/64 dev eth0 nodad", ns, pod.Addr6)
		p("ip -n %s link set eth0 up", ns)
		p("ip -n %s route add default via %s", ns, n.Gateway4)
		p("ip -n %s -6 route add default via %s", ns, n.Gateway6)
	}
	for _, m := range g.o.Lab.Nodes {
		if m == n {
			continue
		}
		p("ip route add %s via %s dev eth0", m.PodCIDR4, m.Underlay)
		p("ip -6 route add %s via %s dev eth0", m.PodCIDR6, m.LinkLocal)
	}
	return b.String()
}

// Run runs a shell script in the guest (as root, in the guest's root
// namespace, cwd /) and returns its combined output; a non-zero exit is an
// error carrying the output. ctx bounds the wait, not the script: a script
// still running when ctx ends keeps running in the guest.
func (g *Guest) Run(ctx context.Context, script string) (string, error) {
	id := fmt.Sprintf("c%05d", g.seq.Add(1))
	base := filepath.Join(g.cmdDir(), id)
	if err := os.WriteFile(base+".tmp", []byte(script), 0o600); err != nil {
		return "", fmt.Errorf("uml: %s: write command: %w", g.Node.Name, err)
	}
	if err := os.Rename(base+".tmp", base+".sh"); err != nil {
		return "", fmt.Errorf("uml: %s: post command: %w", g.Node.Name, err)
	}
	for {
		if rc, err := os.ReadFile(base + ".rc"); err == nil {
			out, _ := os.ReadFile(base + ".out")
			code, perr := strconv.Atoi(strings.TrimSpace(string(rc)))
			if perr != nil {
				return string(out), fmt.Errorf("uml: %s: command %s: unreadable exit status %q", g.Node.Name, id, rc)
			}
			if code != 0 {
				return string(out), fmt.Errorf("uml: %s: command %s exited %d: %s\nscript:\n%s", g.Node.Name, id, code, strings.TrimSpace(string(out)), script)
			}
			return string(out), nil
		}
		select {
		case <-g.done:
			return "", fmt.Errorf("uml: %s: guest is gone; console:\n%s", g.Node.Name, g.consoleTail())
		case <-ctx.Done():
			return "", fmt.Errorf("uml: %s: command %s: %w\nscript:\n%s", g.Node.Name, id, ctx.Err(), script)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// InPod wraps a command line to run in the guest's pod p (from 1).
func InPod(p int, cmdline string) string { return fmt.Sprintf("ip netns exec pod%d %s", p, cmdline) }

// Close powers the guest off (SIGTERM halts UML cleanly; SIGKILL to its
// process group after 10 s) and removes the TAP. Safe to call twice.
func (g *Guest) Close() error {
	g.closeMu.Lock()
	defer g.closeMu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	var errs []error
	if g.cmd != nil && g.cmd.Process != nil {
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("uml: %s: kernel did not halt on SIGTERM in 10s; killed", g.Node.Name))
		}
		// UML's helper processes share its process group.
		_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := run(ctx, "ip", "-n", g.o.Lab.Switch, "link", "del", g.Tap); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// guestTmpfs are the host directories init.sh covers with a tmpfs of the
// guest's own: a file there is invisible to the guest, except in the lab
// directory, which it mounts back.
var guestTmpfs = []string{"/tmp", "/run", "/var/tmp"}

func hiddenInGuest(path, labDir string) bool {
	if path == labDir || strings.HasPrefix(path, labDir+"/") {
		return false
	}
	for _, d := range guestTmpfs {
		if strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// GuestBinary returns a path of the executable bin that guests of the lab
// in labDir can run: bin itself, or a copy in labDir when bin lies under a
// directory the guest covers with its own tmpfs (a wgmesh built in /tmp,
// as for an old-code run). Errors: reading bin or writing the copy.
func GuestBinary(bin, labDir string) (string, error) {
	if !hiddenInGuest(bin, labDir) {
		return bin, nil
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("uml: read %s: %w", bin, err)
	}
	cp := filepath.Join(labDir, filepath.Base(bin))
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		return "", fmt.Errorf("uml: copy %s where the guest sees it: %w", bin, err)
	}
	return cp, nil
}
