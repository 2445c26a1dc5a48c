package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// backend is one way of joining the two namespaces.
type backend struct {
	ID   string // B0 … B4
	Name string
	// setup brings the tunnel up; it returns the address side a sends to
	// and the PIDs whose CPU time counts as tunnel cost.
	setup func(l *lab) (target string, pids []int, err error)
	// skip, when set, says why this backend cannot run on this machine.
	skip string
}

func plainBackend() backend {
	return backend{ID: "B0", Name: "plain veth (ceiling)", setup: func(l *lab) (string, []int, error) {
		return underlayB, nil, nil
	}}
}

// wireguardGoBackend runs a stand-alone wireguard-go binary on both sides,
// configured with wg(8) exactly as an operator would.
func wireguardGoBackend(id, name, bin string) backend {
	b := backend{ID: id, Name: name}
	if _, err := os.Stat(bin); err != nil {
		b.skip = fmt.Sprintf("%s not found: %v", bin, err)
		return b
	}
	if _, err := exec.LookPath("wg"); err != nil {
		b.skip = "wg (wireguard-tools) not installed"
		return b
	}
	b.setup = func(l *lab) (string, []int, error) {
		keys := map[string][2]string{}
		for _, side := range []string{"a", "b"} {
			priv, err := output(ctxBG(), "wg", "genkey")
			if err != nil {
				return "", nil, err
			}
			priv = strings.TrimSpace(priv)
			pub, err := pipe(priv, "wg", "pubkey")
			if err != nil {
				return "", nil, err
			}
			keyFile := filepath.Join(l.dir, side+".key")
			if err := os.WriteFile(keyFile, []byte(priv+"\n"), 0o600); err != nil {
				return "", nil, err
			}
			keys[side] = [2]string{keyFile, strings.TrimSpace(pub)}
		}
		var pids []int
		for _, side := range []string{"a", "b"} {
			ifc := l.ifName(side)
			c, err := l.start(side, []string{"WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"}, bin, "-f", ifc)
			if err != nil {
				return "", nil, err
			}
			pids = append(pids, c.Process.Pid)
			if err := waitLink(l.ns(side), ifc, 10*time.Second); err != nil {
				return "", nil, err
			}
			other, otherUnder, own, peerCIDR := "b", underlayB, innerA, podCIDRB
			if side == "b" {
				other, otherUnder, own, peerCIDR = "a", underlayA, innerB, podCIDRA
			}
			steps := [][]string{
				{"ip", "netns", "exec", l.ns(side), "wg", "set", ifc, "private-key", keys[side][0], "listen-port", fmt.Sprint(wgPort),
					"peer", keys[other][1], "endpoint", fmt.Sprintf("%s:%d", otherUnder, wgPort), "allowed-ips", peerCIDR},
				{"ip", "-n", l.ns(side), "addr", "add", own + "/32", "dev", ifc},
				{"ip", "-n", l.ns(side), "link", "set", ifc, "mtu", fmt.Sprint(tunnelMTU), "up"},
				{"ip", "-n", l.ns(side), "route", "add", peerCIDR, "dev", ifc, "src", own},
			}
			for _, s := range steps {
				if err := run(s...); err != nil {
					return "", nil, err
				}
			}
		}
		return innerB, pids, l.waitPing(innerB, 20*time.Second)
	}
	return b
}

// wgmeshBackend runs the real agent on both sides in peers-file mode: the
// same binary, flags and code path an operator runs on a bare host.
func wgmeshBackend(id, name, bin string, extra ...string) backend {
	return wgmeshVariant(id, name, bin, variant{}, extra...)
}

// variant is a tuning experiment on the agent: environment variables of
// the agent processes (GOMAXPROCS, GOGC, …) and commands run in each
// namespace once the tunnel is up ({ns} and {if} are substituted).
type variant struct {
	env   []string
	after [][]string
}

func wgmeshVariant(id, name, bin string, v variant, extra ...string) backend {
	b := backend{ID: id, Name: name}
	if _, err := os.Stat(bin); err != nil {
		b.skip = fmt.Sprintf("wgmesh binary %s not found (run make build): %v", bin, err)
		return b
	}
	b.setup = func(l *lab) (string, []int, error) {
		pub := map[string]string{}
		for _, side := range []string{"a", "b"} {
			out, err := output(ctxBG(), bin, "keygen", "--key-file", filepath.Join(l.dir, side, "private.key"))
			if err != nil {
				return "", nil, err
			}
			pub[side] = strings.TrimSpace(out)
		}
		peers := fmt.Sprintf(`nodes:
  - name: bench-a
    publicKey: %q
    endpoint: "%s:%d"
    podCIDRs: [%q]
  - name: bench-b
    publicKey: %q
    endpoint: "%s:%d"
    podCIDRs: [%q]
`, pub["a"], underlayA, wgPort, podCIDRA, pub["b"], underlayB, wgPort, podCIDRB)
		peersFile := filepath.Join(l.dir, "peers.yaml")
		if err := os.WriteFile(peersFile, []byte(peers), 0o644); err != nil {
			return "", nil, err
		}
		var pids []int
		for _, side := range []string{"a", "b"} {
			own := innerA
			if side == "b" {
				own = innerB
			}
			args := append([]string{bin, "agent", "--node-name", "bench-" + side, "--peers-file", peersFile,
				"--key-file", filepath.Join(l.dir, side, "private.key"), "--interface", l.ifName(side),
				"--backend", "userspace", "--mtu", fmt.Sprint(tunnelMTU), "--tunnel-address", own,
				"--metrics-addr", "127.0.0.1:9587", "--ipv6=false", "--listen-port", fmt.Sprint(wgPort)}, extra...)
			c, err := l.start(side, v.env, args...)
			if err != nil {
				return "", nil, err
			}
			pids = append(pids, c.Process.Pid)
		}
		if err := l.waitPing(innerB, 30*time.Second); err != nil {
			return "", nil, err
		}
		for _, side := range []string{"a", "b"} {
			for _, cmd := range v.after {
				args := make([]string, len(cmd))
				for i, a := range cmd {
					args[i] = strings.NewReplacer("{ns}", l.ns(side), "{if}", l.ifName(side)).Replace(a)
				}
				if err := run(args...); err != nil {
					return "", nil, err
				}
			}
		}
		return innerB, pids, nil
	}
	return b
}

func waitLink(ns, ifc string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for exec.Command("ip", "-n", ns, "link", "show", ifc).Run() != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("interface %s did not appear in %s within %s", ifc, ns, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func pipe(stdin string, args ...string) (string, error) {
	c := exec.Command(args[0], args[1:]...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// noKernelWireGuard says why this host cannot run kernel WireGuard ("" when
// it can): it tries to create a wireguard link in a scratch namespace.
func noKernelWireGuard() string {
	ns := netnslab.Base(labPrefix, "kprobe") + "-probe"
	if err := netnslab.Add(context.Background(), ns); err != nil {
		return fmt.Sprintf("cannot create a namespace to probe for kernel WireGuard: %v", err)
	}
	defer netnslab.Remove(ns)
	if out, err := exec.Command("ip", "-n", ns, "link", "add", "wgprobe", "type", "wireguard").CombinedOutput(); err != nil {
		return fmt.Sprintf("this host's kernel has no WireGuard module (ip link add type wireguard: %s); "+
			"kernel WireGuard in the e2e lab's UML guests runs at UML speed (about 0.35 Gbit/s), so it is not compared here",
			strings.TrimSpace(string(out)))
	}
	return ""
}
