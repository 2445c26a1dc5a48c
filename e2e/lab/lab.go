// Package lab builds a small cluster out of Linux network namespaces so the
// wgmesh agent can be tested on a real data path without virtual machines.
//
// A lab is a "switch" namespace holding a bridge (the underlay wire), N node
// namespaces plugged into that bridge, and in every node one or more "pod"
// namespaces behind a node-local bridge, the way flannel's host-gw mode wires
// a Kubernetes node. Without agents the nodes route each other's pod CIDRs in
// plaintext through their main routing tables, exactly the traffic wgmesh
// must divert into WireGuard. A tcpdump on the switch records everything that
// crosses the wire, and CountPcap tells how much of it was plaintext pod
// traffic — the one number every scenario must keep at zero.
//
// Addressing (node k counts from 1):
//
//	underlay       198.18.0.(10+k)/15 on the node's eth0, fe80::(10+k) link-local,
//	               optionally 2001:2::(10+k)/64 (Options.IPv6Underlay)
//	control plane  198.18.0.2/15 (optional namespace for the API server)
//	pod CIDRs      10.244.k.0/24 and fd00:10:244:k::/64, gateway .1 / ::1 on the node
//	pod p (from 1) 10.244.k.(1+p) and fd00:10:244:k::(1+p)
//
// Every name the lab creates carries its prefix, the creating process's pid and
// a random id, so labs of parallel tests never collide and a lab left behind by
// a crashed process can be found and removed (RemoveStale). Close removes
// everything and may be called any number of times.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// DefaultPrefix starts the names of labs whose Options leave Prefix empty.
const DefaultPrefix = "wgmlab"

// wireguardRunDir is where wireguard-go puts its UAPI sockets; the directory is
// shared by all namespaces, which is why every lab node gets its own interface
// name.
const wireguardRunDir = "/var/run/wireguard"

// Options describe a lab. The zero value is a 3-node lab with one pod per node.
type Options struct {
	// Prefix starts every namespace name; DefaultPrefix when empty. It must be
	// short (names are prefix-pid-id-role) and must not contain '-'.
	Prefix string
	// Nodes is the number of node namespaces; 3 when zero, at most 200.
	Nodes int
	// PodsPerNode is the number of pod namespaces per node; 1 when zero.
	PodsPerNode int
	// PodMTU is the MTU of the pods' interfaces, as a CNI would set it from
	// `wgmesh status`; 1420 when zero (fits WireGuard over IPv4 and IPv6).
	PodMTU int
	// ControlPlane adds a namespace at 198.18.0.2 for an API server.
	ControlPlane bool
	// IPv6Underlay also gives every node an IPv6 underlay address from
	// 2001:2::/48 (the IPv6 benchmarking range, RFC 5180) and makes the
	// agents' endpoints IPv6.
	IPv6Underlay bool
	// NoPods creates no pod namespaces and no cni0 bridge: a real CNI (the
	// cluster lab's containerd) creates both once the node has a pod CIDR.
	// PodsPerNode is then ignored.
	NoPods bool
	// NoPlainRoutes leaves the nodes' main tables without routes to the other
	// nodes' pod CIDRs. By default they are there (host-gw style) so a missing
	// or broken agent shows up as plaintext on the wire instead of as silence.
	NoPlainRoutes bool
	// Dir holds keys, peers files, agent logs and the capture. When empty a
	// temporary directory is created and removed by Close.
	Dir string
	// Wgmesh is the path of the wgmesh binary, needed for keys and agents.
	Wgmesh string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Lab is a running set of namespaces. Create it with New; always Close it.
type Lab struct {
	// Switch is the namespace holding the bridge that joins all nodes.
	Switch string
	// Bridge is the bridge device inside Switch; the capture listens on it.
	Bridge string
	// Nodes in index order (node1 first).
	Nodes []*Node
	// CP is the control-plane namespace; nil unless Options.ControlPlane.
	CP *ControlPlane

	opts   Options
	id     string // random hex, unique per lab
	base   string // prefix-pid-id, the start of every namespace name
	dir    string
	ownDir bool

	mu      sync.Mutex
	nsList  []string // every namespace created, in creation order
	agents  []*Agent
	capture *Capture
	closed  bool
}

// ControlPlane is the optional namespace for the Kubernetes API server.
type ControlPlane struct {
	NS   string
	Addr netip.Addr
}

// ControlPlaneAddr is the underlay address of the control-plane namespace.
var ControlPlaneAddr = netip.MustParseAddr("198.18.0.2")

// New builds a lab. On error everything created so far is removed again.
func New(ctx context.Context, o Options) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: network namespaces need root; run as root")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.Contains(o.Prefix, "-") || len(o.Prefix) > 16 {
		return nil, fmt.Errorf("lab: prefix %q: must be at most 16 characters without '-'", o.Prefix)
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 1 || o.Nodes > 200 {
		return nil, fmt.Errorf("lab: %d nodes: want 1..200", o.Nodes)
	}
	if o.PodsPerNode == 0 {
		o.PodsPerNode = 1
	}
	if o.PodsPerNode < 1 || o.PodsPerNode > 100 {
		return nil, fmt.Errorf("lab: %d pods per node: want 1..100", o.PodsPerNode)
	}
	if o.PodMTU == 0 {
		o.PodMTU = 1420
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("lab: random id: %w", err)
	}
	l := &Lab{opts: o, id: hex.EncodeToString(rnd[:])}
	l.base = netnslab.Base(o.Prefix, l.id)
	l.Switch = l.base + "-sw"
	l.Bridge = "br0"
	if o.Dir == "" {
		d, err := os.MkdirTemp("", l.base+"-")
		if err != nil {
			return nil, fmt.Errorf("lab: temporary directory: %w", err)
		}
		l.dir, l.ownDir = d, true
	} else {
		l.dir = o.Dir
	}
	// Keys live here: only root may look inside.
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: directory %s: %w", l.dir, err)
	}
	if err := os.Chmod(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: directory %s: %w", l.dir, err)
	}
	if err := l.build(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// ID is the lab's random id; it appears in every namespace and interface name.
func (l *Lab) ID() string { return l.id }

// Dir is the directory holding keys, peers files, logs and the capture.
func (l *Lab) Dir() string { return l.dir }

// Namespaces lists every namespace of the lab.
func (l *Lab) Namespaces() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.nsList...)
}

// Pods lists all pods of all nodes, node by node.
func (l *Lab) Pods() []*Pod {
	var ps []*Pod
	for _, n := range l.Nodes {
		ps = append(ps, n.Pods...)
	}
	return ps
}

// Node returns the node with the given name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (l *Lab) logf(format string, args ...any) { l.opts.Logf(format, args...) }

// addNS creates one namespace with its loopback up and records it for Close.
func (l *Lab) addNS(ctx context.Context, name string) error {
	if err := netnslab.Add(ctx, name); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.mu.Lock()
	l.nsList = append(l.nsList, name)
	l.mu.Unlock()
	// No duplicate address detection: every address in the lab is unique by
	// construction, and DAD would leave link-local addresses unusable for
	// the first second or two, making the first IPv6 packets fail.
	return sysctl(ctx, name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
}

func (l *Lab) build(ctx context.Context) error {
	// The switch: a bridge and nothing else. IPv6 is off so the capture holds
	// only what the nodes send, not the bridge's own router solicitations.
	if err := l.addNS(ctx, l.Switch); err != nil {
		return err
	}
	if err := sysctl(ctx, l.Switch, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		return err
	}
	if err := ipn(ctx, l.Switch, "link", "add", "name", l.Bridge, "type", "bridge"); err != nil {
		return err
	}
	if err := ipn(ctx, l.Switch, "link", "set", l.Bridge, "up"); err != nil {
		return err
	}
	if l.opts.ControlPlane {
		cp := &ControlPlane{NS: l.base + "-cp", Addr: ControlPlaneAddr}
		if err := l.addNS(ctx, cp.NS); err != nil {
			return err
		}
		if err := l.plug(ctx, "cp", cp.NS, netip.PrefixFrom(cp.Addr, 15), netip.Addr{}); err != nil {
			return err
		}
		l.CP = cp
	}
	for k := 1; k <= l.opts.Nodes; k++ {
		n := l.newNode(k)
		if err := l.addNS(ctx, n.NS); err != nil {
			return err
		}
		if err := l.plug(ctx, n.Name, n.NS, netip.PrefixFrom(n.Underlay, 15), n.LinkLocal); err != nil {
			return err
		}
		if l.opts.IPv6Underlay {
			n.Underlay6 = netip.MustParseAddr(fmt.Sprintf("2001:2::%x", 0x10+k))
			if err := ipn(ctx, n.NS, "addr", "add", netip.PrefixFrom(n.Underlay6, 64).String(), "dev", "eth0", "nodad"); err != nil {
				return err
			}
		}
		if err := l.buildPods(ctx, n); err != nil {
			return err
		}
		l.Nodes = append(l.Nodes, n)
	}
	if !l.opts.NoPlainRoutes {
		for _, n := range l.Nodes {
			for _, m := range l.Nodes {
				if m == n {
					continue
				}
				if err := ipn(ctx, n.NS, "route", "add", m.PodCIDR4.String(), "via", m.Underlay.String(), "dev", "eth0"); err != nil {
					return err
				}
				// Linux cannot route IPv6 via an IPv4 gateway, so the IPv6 pod
				// routes use the peer's fixed link-local address.
				if err := ipn(ctx, n.NS, "-6", "route", "add", m.PodCIDR6.String(), "via", m.LinkLocal.String(), "dev", "eth0"); err != nil {
					return err
				}
			}
		}
	}
	pods := l.opts.PodsPerNode
	if l.opts.NoPods {
		pods = 0
	}
	l.logf("lab %s: %d nodes, %d pods each, switch %s", l.id, len(l.Nodes), pods, l.Switch)
	return nil
}

func (l *Lab) newNode(k int) *Node {
	n := &Node{
		lab:       l,
		Index:     k,
		Name:      fmt.Sprintf("node%d", k),
		NS:        fmt.Sprintf("%s-n%d", l.base, k),
		Underlay:  netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + k)}),
		LinkLocal: netip.MustParseAddr(fmt.Sprintf("fe80::%x", 0x10+k)),
		PodCIDR4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(k), 0}), 24),
		PodCIDR6:  netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", k)),
		// "wg" + 6 hex + "n" + index: unique across labs, at most 12 bytes,
		// well inside the kernel's 15-byte limit.
		Interface:  fmt.Sprintf("wg%sn%d", l.id, k),
		ListenPort: 51820,
		Dir:        filepath.Join(l.dir, fmt.Sprintf("node%d", k)),
	}
	n.KeyFile = filepath.Join(n.Dir, "private.key")
	n.PeersFile = filepath.Join(n.Dir, "peers.yaml")
	n.Gateway4 = n.PodCIDR4.Addr().Next()
	n.Gateway6 = n.PodCIDR6.Addr().Next()
	return n
}

// plug connects namespace ns to the switch with a veth named eth0 on its side
// and gives it its underlay addresses.
func (l *Lab) plug(ctx context.Context, port, ns string, addr netip.Prefix, linkLocal netip.Addr) error {
	if err := netnslab.Veth(ctx, port, l.Switch, "eth0", ns); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := ipn(ctx, l.Switch, "link", "set", port, "master", l.Bridge, "up"); err != nil {
		return err
	}
	if err := ipn(ctx, ns, "addr", "add", addr.String(), "dev", "eth0"); err != nil {
		return err
	}
	if linkLocal.IsValid() {
		if err := ipn(ctx, ns, "addr", "add", linkLocal.String()+"/64", "dev", "eth0", "nodad"); err != nil {
			return err
		}
	}
	return ipn(ctx, ns, "link", "set", "eth0", "up")
}

func (l *Lab) buildPods(ctx context.Context, n *Node) error {
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return fmt.Errorf("lab: node %s: directory: %w", n.Name, err)
	}
	if err := sysctl(ctx, n.NS, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	if l.opts.NoPods {
		return nil
	}
	// cni0 is the node's pod bridge; it owns the pod gateway addresses.
	if err := ipn(ctx, n.NS, "link", "add", "name", "cni0", "type", "bridge"); err != nil {
		return err
	}
	if err := ipn(ctx, n.NS, "addr", "add", netip.PrefixFrom(n.Gateway4, 24).String(), "dev", "cni0"); err != nil {
		return err
	}
	if err := ipn(ctx, n.NS, "addr", "add", netip.PrefixFrom(n.Gateway6, 64).String(), "dev", "cni0", "nodad"); err != nil {
		return err
	}
	if err := ipn(ctx, n.NS, "link", "set", "cni0", "mtu", strconv.Itoa(l.opts.PodMTU), "up"); err != nil {
		return err
	}
	addr4, addr6 := n.Gateway4, n.Gateway6
	for p := 1; p <= l.opts.PodsPerNode; p++ {
		addr4, addr6 = addr4.Next(), addr6.Next()
		pod := &Pod{Node: n, Name: fmt.Sprintf("%s-pod%d", n.Name, p), NS: fmt.Sprintf("%s-p%d", n.NS, p), Addr4: addr4, Addr6: addr6}
		if err := l.addNS(ctx, pod.NS); err != nil {
			return err
		}
		port := fmt.Sprintf("veth%d", p)
		mtu := strconv.Itoa(l.opts.PodMTU)
		steps := [][]string{
			{n.NS, "link", "add", "name", port, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns", pod.NS},
			{n.NS, "link", "set", port, "master", "cni0", "up"},
			{pod.NS, "addr", "add", netip.PrefixFrom(addr4, 24).String(), "dev", "eth0"},
			{pod.NS, "addr", "add", netip.PrefixFrom(addr6, 64).String(), "dev", "eth0", "nodad"},
			{pod.NS, "link", "set", "eth0", "up"},
			{pod.NS, "route", "add", "default", "via", n.Gateway4.String()},
			{pod.NS, "-6", "route", "add", "default", "via", n.Gateway6.String()},
		}
		for _, s := range steps {
			if err := ipn(ctx, s[0], s[1:]...); err != nil {
				return err
			}
		}
		n.Pods = append(n.Pods, pod)
	}
	return nil
}

// Close stops agents and the capture, kills whatever still runs in the lab's
// namespaces, removes the namespaces, the agents' UAPI sockets and (if the lab
// created it) the directory. It is safe to call more than once; it returns
// every failure joined.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	agents := append([]*Agent(nil), l.agents...)
	capture := l.capture
	nsList := append([]string(nil), l.nsList...)
	l.mu.Unlock()

	var errs []error
	for _, a := range agents {
		a.kill()
	}
	if capture != nil {
		if _, err := capture.Stop(); err != nil && !errors.Is(err, ErrCaptureStopped) {
			errs = append(errs, err)
		}
	}
	// The deepest namespaces (pods) go first, the switch last.
	if err := netnslab.RemoveAll(nsList); err != nil {
		errs = append(errs, err)
	}
	for _, n := range l.Nodes {
		removeUAPISocket(n.Interface)
	}
	if l.ownDir {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("lab: remove %s: %w", l.dir, err))
		}
	}
	return errors.Join(errs...)
}

func removeUAPISocket(iface string) {
	if iface == "" || strings.ContainsAny(iface, "/.") {
		return
	}
	_ = os.Remove(filepath.Join(wireguardRunDir, iface+".sock"))
	_ = os.Remove(filepath.Join(wireguardRunDir, iface+".name"))
}

// RemoveStale removes labs with the given prefix (DefaultPrefix when empty)
// whose creating process no longer runs: their namespaces, the processes in
// them (netnslab.RemoveStale) and their agents' UAPI sockets. It returns the
// namespaces removed. Labs of live processes, including this one, are left
// alone.
func RemoveStale(prefix string) ([]string, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	stale, err := netnslab.RemoveStale(prefix)
	for _, ns := range stale {
		// A node namespace "...-nK" had an agent on interface wg<id>nK
		// whose UAPI socket may have outlived it.
		if _, id, ok := netnslab.ParseName(prefix, ns); ok {
			if k, found := strings.CutPrefix(ns[strings.LastIndex(ns, "-")+1:], "n"); found {
				if _, err := strconv.Atoi(k); err == nil {
					removeUAPISocket("wg" + id + "n" + k)
				}
			}
		}
	}
	return stale, err
}

// AddHost adds a namespace on the switch at addr (a /15 in 198.18.0.0/15,
// outside every node's and the control plane's address) that is neither a
// node nor a pod: a client outside the cluster. role names it
// ("<lab>-<role>"); Close removes it with the rest of the lab.
func (l *Lab) AddHost(ctx context.Context, role string, addr netip.Addr) (string, error) {
	ns := l.base + "-" + role
	if err := l.addNS(ctx, ns); err != nil {
		return "", err
	}
	if err := l.plug(ctx, role, ns, netip.PrefixFrom(addr, 15), netip.Addr{}); err != nil {
		return "", err
	}
	return ns, nil
}
