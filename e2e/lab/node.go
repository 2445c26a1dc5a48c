package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Node is one node namespace: a host with an underlay address, a pod bridge
// and the pods behind it.
type Node struct {
	lab *Lab
	// Index counts nodes from 1; it appears in every address of the node.
	Index int
	// Name is the node's name in peers files and `--node-name` ("node1").
	Name string
	// NS is the network namespace.
	NS string
	// Underlay is the node's address on the switch (198.18.0.(10+Index)).
	Underlay netip.Addr
	// LinkLocal is the node's fixed IPv6 link-local address on the switch.
	LinkLocal netip.Addr
	// Underlay6 is the node's IPv6 underlay address (2001:2::(10+Index),
	// hexadecimal), valid only with Options.IPv6Underlay.
	Underlay6 netip.Addr
	// PodCIDR4 and PodCIDR6 are what the node routes for.
	PodCIDR4, PodCIDR6 netip.Prefix
	// Gateway4 and Gateway6 are the pods' default gateways (on cni0).
	Gateway4, Gateway6 netip.Addr
	// Interface is the WireGuard interface name the lab gives the agent;
	// unique per lab because wireguard-go's UAPI sockets share one directory.
	Interface string
	// ListenPort is the agent's UDP port.
	ListenPort int
	// Dir holds the node's key, peers file and agent log (0700).
	Dir string
	// KeyFile is the agent's private key file.
	KeyFile string
	// PeersFile is the peers file this node's agent reads.
	PeersFile string
	// PublicKey is filled by Keygen (base64, the `wg pubkey` format).
	PublicKey string
	// Pods are the pod namespaces behind this node.
	Pods []*Pod
}

// Pod is one pod namespace behind a node.
type Pod struct {
	Node *Node
	// Name is "nodeK-podP".
	Name string
	// NS is the network namespace.
	NS string
	// Addr4 and Addr6 are the pod's addresses from its node's pod CIDRs.
	Addr4, Addr6 netip.Addr
}

// Endpoint is where the node's agent listens: on the IPv6 underlay address
// when the lab has one, else on the IPv4 one.
func (n *Node) Endpoint() netip.AddrPort {
	if n.Underlay6.IsValid() {
		return netip.AddrPortFrom(n.Underlay6, uint16(n.ListenPort))
	}
	return netip.AddrPortFrom(n.Underlay, uint16(n.ListenPort))
}

// Exec runs cmd inside the node's namespace and returns its combined output.
func (n *Node) Exec(ctx context.Context, cmd ...string) (string, error) {
	return execIn(ctx, n.NS, cmd...)
}

// Exec runs cmd inside the pod's namespace and returns its combined output.
func (p *Pod) Exec(ctx context.Context, cmd ...string) (string, error) {
	return execIn(ctx, p.NS, cmd...)
}

// Addr returns the pod's address of the requested family (6 or 4).
func (p *Pod) Addr(family int) netip.Addr {
	if family == 6 {
		return p.Addr6
	}
	return p.Addr4
}

// Wgmesh runs the lab's wgmesh binary with args inside the node's namespace.
func (n *Node) Wgmesh(ctx context.Context, args ...string) (string, error) {
	if n.lab.opts.Wgmesh == "" {
		return "", fmt.Errorf("lab: node %s: no wgmesh binary configured (Options.Wgmesh)", n.Name)
	}
	return n.Exec(ctx, append([]string{n.lab.opts.Wgmesh}, args...)...)
}

// Keygen creates the node's private key (if absent) with `wgmesh keygen` and
// records its public key in PublicKey.
func (n *Node) Keygen(ctx context.Context) (string, error) {
	out, err := n.Wgmesh(ctx, "keygen", "--key-file", n.KeyFile)
	if err != nil {
		return "", err
	}
	key, err := lastField(out)
	if err != nil {
		return "", fmt.Errorf("lab: node %s: wgmesh keygen: %w", n.Name, err)
	}
	n.PublicKey = key
	return key, nil
}

// RotateKey runs `wgmesh rotate-key` on the node's key file and records the new
// public key. The running agent picks the key up on its own.
func (n *Node) RotateKey(ctx context.Context) (string, error) {
	out, err := n.Wgmesh(ctx, "rotate-key", "--key-file", n.KeyFile)
	if err != nil {
		return "", err
	}
	if key, err := lastField(out); err == nil && len(key) == 44 {
		n.PublicKey = key
		return key, nil
	}
	// rotate-key may print only a message; ask for the public key.
	out, err = n.Wgmesh(ctx, "pubkey", "--key-file", n.KeyFile)
	if err != nil {
		return "", err
	}
	key, err := lastField(out)
	if err != nil {
		return "", fmt.Errorf("lab: node %s: wgmesh pubkey: %w", n.Name, err)
	}
	n.PublicKey = key
	return key, nil
}

// lastField picks the public key out of a command's output: the last
// whitespace-separated word that is 44 characters of base64.
func lastField(out string) (string, error) {
	f := strings.Fields(out)
	for i := len(f) - 1; i >= 0; i-- {
		if len(f[i]) == 44 && strings.HasSuffix(f[i], "=") {
			return f[i], nil
		}
	}
	return "", fmt.Errorf("no public key in output %q", strings.TrimSpace(out))
}

// Keygen creates keys for every node.
func (l *Lab) Keygen(ctx context.Context) error {
	for _, n := range l.Nodes {
		if _, err := n.Keygen(ctx); err != nil {
			return err
		}
	}
	return nil
}

// PeerEntry is one node of a peers file.
type PeerEntry struct {
	Name      string
	PublicKey string // empty: the node has no agent
	Endpoint  netip.AddrPort
	PodCIDRs  []netip.Prefix
	HostIPs   []netip.Addr
}

// Entry describes the node for a peers file, with its current public key.
func (n *Node) Entry() PeerEntry {
	return PeerEntry{
		Name:      n.Name,
		PublicKey: n.PublicKey,
		Endpoint:  n.Endpoint(),
		PodCIDRs:  []netip.Prefix{n.PodCIDR4, n.PodCIDR6},
		HostIPs:   n.HostIPs(),
	}
}

// HostIPs are the node's underlay addresses.
func (n *Node) HostIPs() []netip.Addr {
	if n.Underlay6.IsValid() {
		return []netip.Addr{n.Underlay, n.Underlay6}
	}
	return []netip.Addr{n.Underlay}
}

// Entries describes every node of the lab, for a peers file.
func (l *Lab) Entries() []PeerEntry {
	var es []PeerEntry
	for _, n := range l.Nodes {
		es = append(es, n.Entry())
	}
	return es
}

// RenderPeersFile renders entries in the peers-file format of DESIGN.md.
func RenderPeersFile(entries []PeerEntry) []byte {
	var b strings.Builder
	b.WriteString("# written by the wgmesh lab\nnodes:\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "  - name: %s\n", e.Name)
		if e.PublicKey != "" {
			fmt.Fprintf(&b, "    publicKey: %q\n", e.PublicKey)
		}
		if e.Endpoint.IsValid() {
			fmt.Fprintf(&b, "    endpoint: %q\n", e.Endpoint.String())
		}
		b.WriteString("    podCIDRs: [")
		for i, p := range e.PodCIDRs {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", p.String())
		}
		b.WriteString("]\n")
		b.WriteString("    hostIPs: [")
		for i, a := range e.HostIPs {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", a.String())
		}
		b.WriteString("]\n")
	}
	return []byte(b.String())
}

// WritePeersFile replaces the node's peers file atomically (write, then
// rename), so the agent never reads half a file.
func (n *Node) WritePeersFile(entries []PeerEntry) error {
	data := RenderPeersFile(entries)
	tmp := filepath.Join(n.Dir, ".peers.yaml.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("lab: node %s: write peers file: %w", n.Name, err)
	}
	if err := os.Rename(tmp, n.PeersFile); err != nil {
		return fmt.Errorf("lab: node %s: replace peers file: %w", n.Name, err)
	}
	return nil
}

// WritePeersFiles gives every node the same peers file.
func (l *Lab) WritePeersFiles(entries []PeerEntry) error {
	for _, n := range l.Nodes {
		if err := n.WritePeersFile(entries); err != nil {
			return err
		}
	}
	return nil
}

// WGPeer is one peer as `wg show` reports it.
type WGPeer struct {
	PublicKey     string
	Endpoint      string
	AllowedIPs    []string
	LastHandshake time.Time // zero: never
}

// WGPeers reads the peers of the node's WireGuard interface with `wg show`,
// sorted by public key. The private key is never read.
func (n *Node) WGPeers(ctx context.Context) ([]WGPeer, error) {
	var outs [3]string
	for i, what := range []string{"allowed-ips", "latest-handshakes", "endpoints"} {
		out, err := n.Exec(ctx, "wg", "show", n.Interface, what)
		if err != nil {
			return nil, err
		}
		outs[i] = out
	}
	return parseWGPeers(outs[0], outs[1], outs[2]), nil
}

// ParseWGPeers parses the outputs of `wg show IFACE allowed-ips`,
// `latest-handshakes` and `endpoints` (for interfaces the lab reads some
// other way, such as inside a UML guest).
func ParseWGPeers(allowed, handshakes, endpoints string) []WGPeer {
	return parseWGPeers(allowed, handshakes, endpoints)
}

// parseWGPeers combines the outputs of `wg show IFACE allowed-ips`,
// `latest-handshakes` and `endpoints` (one peer per line, public key first).
// Lines it does not understand are skipped; peers are sorted by public key.
func parseWGPeers(allowed, handshakes, endpoints string) []WGPeer {
	peers := map[string]*WGPeer{}
	for _, line := range strings.Split(allowed, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		p := &WGPeer{PublicKey: f[0]}
		for _, ip := range f[1:] {
			if ip != "(none)" {
				p.AllowedIPs = append(p.AllowedIPs, ip)
			}
		}
		sort.Strings(p.AllowedIPs)
		peers[f[0]] = p
	}
	for _, line := range strings.Split(handshakes, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || peers[f[0]] == nil {
			continue
		}
		if sec, err := strconv.ParseInt(f[1], 10, 64); err == nil && sec > 0 {
			peers[f[0]].LastHandshake = time.Unix(sec, 0)
		}
	}
	for _, line := range strings.Split(endpoints, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && peers[f[0]] != nil && f[1] != "(none)" {
			peers[f[0]].Endpoint = f[1]
		}
	}
	out := make([]WGPeer, 0, len(peers))
	for _, p := range peers {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PublicKey < out[j].PublicKey })
	return out
}

// Routes returns `ip route show table T` for both families, one route per
// line, IPv4 first.
func (n *Node) Routes(ctx context.Context, table int) ([]string, error) {
	var lines []string
	for _, fam := range []string{"-4", "-6"} {
		out, err := n.Exec(ctx, "ip", fam, "route", "show", "table", strconv.Itoa(table))
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	return lines, nil
}

// Poll calls cond every interval until it returns true or ctx ends; the last
// error from cond explains a timeout.
func Poll(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error)) error {
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		// An error caused by the deadline itself explains nothing; keep
		// the one from the attempt before.
		if err != nil && (ctx.Err() == nil || last == nil) {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// WaitPeers waits until the node's interface has exactly the given public
// keys as peers, each with its expected allowed IPs present.
func (n *Node) WaitPeers(ctx context.Context, want ...*Node) error {
	wantKeys := map[string]*Node{}
	for _, m := range want {
		wantKeys[m.PublicKey] = m
	}
	return Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		peers, err := n.WGPeers(ctx)
		if err != nil {
			return false, err
		}
		if len(peers) != len(want) {
			return false, fmt.Errorf("node %s: %d peers, want %d", n.Name, len(peers), len(want))
		}
		for _, p := range peers {
			m := wantKeys[p.PublicKey]
			if m == nil {
				return false, fmt.Errorf("node %s: unexpected peer %s", n.Name, p.PublicKey)
			}
			if !slices.Contains(p.AllowedIPs, m.PodCIDR4.String()) || !slices.Contains(p.AllowedIPs, m.PodCIDR6.String()) {
				return false, fmt.Errorf("node %s: peer %s allowed IPs %v lack %s pod CIDRs", n.Name, m.Name, p.AllowedIPs, m.Name)
			}
		}
		return true, nil
	})
}

// WaitHandshakes waits until every peer of the node has completed a handshake
// after since.
func (n *Node) WaitHandshakes(ctx context.Context, since time.Time) error {
	return Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		peers, err := n.WGPeers(ctx)
		if err != nil {
			return false, err
		}
		if len(peers) == 0 {
			return false, fmt.Errorf("node %s: no peers yet", n.Name)
		}
		for _, p := range peers {
			// wg reports whole seconds; allow for the truncation.
			if p.LastHandshake.IsZero() || p.LastHandshake.Before(since.Truncate(time.Second)) {
				return false, fmt.Errorf("node %s: peer %s has no handshake since %s", n.Name, p.PublicKey, since.Format(time.TimeOnly))
			}
		}
		return true, nil
	})
}

// AgentStatus is the part of `wgmesh status -o json` the lab checks.
type AgentStatus struct {
	Node          string `json:"node"`
	Interface     string `json:"interface"`
	Backend       string `json:"backend"`
	PublicKey     string `json:"publicKey"`
	LinkMTU       int    `json:"linkMTU"`
	PodMTU        int    `json:"podMTU"`
	Strict        bool   `json:"strict"`
	Ready         bool   `json:"ready"`
	AgentRunning  bool   `json:"agentRunning"`
	LastReconcile *struct {
		Error string `json:"error"`
	} `json:"lastReconcile"`
	Unencrypted []string          `json:"unencryptedNodes"`
	Problems    []json.RawMessage `json:"problems"`
}

// ReconcileError is the last reconcile's error ("" when it applied cleanly).
func (s AgentStatus) ReconcileError() string {
	if s.LastReconcile == nil {
		return ""
	}
	return s.LastReconcile.Error
}

// Status asks the node's agent for its status (`wgmesh status -o json`).
func (n *Node) Status(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	out, err := n.Wgmesh(ctx, "status", "--interface", n.Interface, "-o", "json")
	if err != nil {
		return st, err
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return st, fmt.Errorf("lab: node %s: wgmesh status -o json printed no JSON: %q", n.Name, lastLines(out, 3))
	}
	if err := json.Unmarshal([]byte(out[i:]), &st); err != nil {
		return st, fmt.Errorf("lab: node %s: wgmesh status -o json: %w", n.Name, err)
	}
	return st, nil
}

// WaitReady waits until the node's agent reports ready: device up, source
// synced, last reconcile applied cleanly.
func (n *Node) WaitReady(ctx context.Context) error {
	return Poll(ctx, 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		st, err := n.Status(ctx)
		if err != nil {
			return false, err
		}
		if !st.Ready || !st.AgentRunning {
			return false, fmt.Errorf("node %s: agent not ready (running %v, last reconcile error %q)", n.Name, st.AgentRunning, st.ReconcileError())
		}
		return true, nil
	})
}
