package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// egressForeignMark is the bit the neighbour of TestPrivilegedCoexistEgressGuard
// ORs into the mark of node1's pod traffic: wgmesh's --fwmark, so that the
// pod traffic skips the wgmesh table (the old default, set explicitly so
// the scenario is the same whatever the binary's default).
const egressForeignMark = "0x20000"

// TestPrivilegedCoexistEgressGuard (issue #11, scenario 1): another
// component on node1 marks node1's pod traffic with wgmesh's mark bit, so
// the `not fwmark` rule lets it skip the wgmesh table and the main table's
// plaintext routes would carry it. No pod packet may cross the wire in
// plaintext: the egress guard drops and counts them, and the agent names
// the foreign rule.
func TestPrivilegedCoexistEgressGuard(t *testing.T) {
	m := startCoexist(t, labMeshOptions{
		AgentArgs: []string{"--fwmark", egressForeignMark},
		Neighbour: func(ctx context.Context, l *lab.Lab) error {
			n1 := l.Nodes[0]
			_, err := sh(ctx, n1.NS, fmt.Sprintf(`
nft add table inet neighbour
nft add chain inet neighbour pre '{ type filter hook prerouting priority mangle; }'
nft add rule inet neighbour pre ip saddr %s meta mark set meta mark or %s
nft add rule inet neighbour pre ip6 saddr %s meta mark set meta mark or %s`,
				n1.PodCIDR4, egressForeignMark, n1.PodCIDR6, egressForeignMark))
			return err
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]

	// pod2 -> pod1 goes into the tunnel on node2; pod1's answers and
	// pod1 -> pod2 are marked on node1.
	for _, fam := range families {
		for _, pair := range [][2]*lab.Pod{{p2, p1}, {p1, p2}} {
			lost, err := pingLoss(ctx, pair[0], pair[1].Addr(fam), 20, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("measured: ping %s -> %s (IPv%d): %d of 20 lost", pair[0].Name, pair[1].Addr(fam), fam, lost)
		}
	}

	st := nodeStatusJSON(t, ctx, n1)
	dropped, _ := st["egressDroppedPackets"].(float64)
	t.Logf("measured: node1 egressDroppedPackets = %v", st["egressDroppedPackets"])
	if dropped == 0 {
		t.Errorf("node1 status: egressDroppedPackets = %v, want > 0 (the guard dropped nothing, or status lacks the field)", st["egressDroppedPackets"])
	}
	var named bool
	warnings, _ := st["routingWarnings"].([]any)
	for _, w := range warnings {
		s, _ := w.(string)
		t.Logf("node1 routing warning: %s", s)
		if strings.Contains(s, "inet neighbour") && strings.Contains(s, "chain pre") && strings.Contains(s, "handle") && strings.Contains(s, egressForeignMark) {
			named = true
		}
	}
	if !named {
		t.Errorf("node1 status: no routing warning names the foreign rule (table inet neighbour, chain pre, its handle, bit %s): %v", egressForeignMark, warnings)
	}
	// The next reconcile (SIGHUP re-reads the peers file and applies)
	// logs the drops once, with the likely cause.
	a := m.agents[n1.Name]
	if err := a.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var line string
	err := lab.Poll(withTimeout(ctx, 30*time.Second), 300*time.Millisecond, func(context.Context) (bool, error) {
		for _, l := range strings.Split(a.Log(), "\n") {
			if strings.Contains(l, "egress guard dropped") {
				line = l
				return true, nil
			}
		}
		return false, nil
	})
	t.Logf("measured: node1 log: %s", line)
	if err != nil || !strings.Contains(line, "inet neighbour") {
		t.Errorf("node1 logged no egress-guard line naming the foreign rule (%v):\n%s", err, a.LogTail(10))
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedCoexistEgressDefaultMark is scenario 1 as the issue found
// it: agents with default flags next to a component that ORs 0x20000 into
// node1's pod traffic (Calico's "pass" bit with its default mask, in
// Tailscale's range). With a default mark outside every common
// neighbour's bits, pods talk encrypted as if the neighbour were not there:
// nothing is dropped, nothing is plaintext, no warning.
func TestPrivilegedCoexistEgressDefaultMark(t *testing.T) {
	m := startCoexist(t, labMeshOptions{
		Neighbour: func(ctx context.Context, l *lab.Lab) error {
			n1 := l.Nodes[0]
			_, err := sh(ctx, n1.NS, fmt.Sprintf(`
nft add table inet neighbour
nft add chain inet neighbour pre '{ type filter hook prerouting priority mangle; }'
nft add rule inet neighbour pre ip saddr %s meta mark set meta mark or 0x20000
nft add rule inet neighbour pre ip6 saddr %s meta mark set meta mark or 0x20000`, n1.PodCIDR4, n1.PodCIDR6))
			return err
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]
	for _, fam := range families {
		for _, pair := range [][2]*lab.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[0], n1.Pods[0]}} {
			if err := waitPing(withTimeout(ctx, 20*time.Second), pair[0], pair[1].Addr(fam)); err != nil {
				t.Errorf("%s -> %s: %v", pair[0].Name, pair[1].Addr(fam), err)
			}
			lost, err := pingLoss(ctx, pair[0], pair[1].Addr(fam), 20, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("measured: ping %s -> %s (IPv%d): %d of 20 lost", pair[0].Name, pair[1].Addr(fam), fam, lost)
			if lost > 0 {
				t.Errorf("%s -> %s: %d of 20 pings lost", pair[0].Name, pair[1].Addr(fam), lost)
			}
		}
	}
	st := nodeStatusJSON(t, ctx, n1)
	t.Logf("measured: node1 egressDroppedPackets = %v, routingWarnings = %v", st["egressDroppedPackets"], st["routingWarnings"])
	if d, _ := st["egressDroppedPackets"].(float64); d != 0 {
		t.Errorf("node1 egress guard dropped %v packets, want 0", d)
	}
	if w, _ := st["routingWarnings"].([]any); len(w) != 0 {
		t.Errorf("node1 routing warnings %v, want none", w)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedCoexistMSSClamp (issue #11, scenario 5): pods with MTU 1500
// (a CNI that ignores the Pod MTU), a client outside the mesh (node3, no
// agent) that drops ICMP "fragmentation needed", and node1 forwarding a
// NodePort to pod2 (DNAT + masquerade, as kube-proxy does). Uploads and
// downloads of a few MiB must complete: the SYNs through the tunnel carry
// an MSS that fits it.
func TestPrivilegedCoexistMSSClamp(t *testing.T) {
	const (
		nodePort = 30080
		podPort  = 8080
		size     = 4 << 20
	)
	o := labMeshOptions{Without: []string{"node3"}}
	o.Nodes = 3
	o.PodMTU = 1500
	o.Neighbour = func(ctx context.Context, l *lab.Lab) error {
		n1, pod2, client := l.Nodes[0], l.Nodes[1].Pods[0], l.Nodes[2]
		if _, err := sh(ctx, n1.NS, fmt.Sprintf(`
nft add table ip nodeport
nft add chain ip nodeport pre '{ type nat hook prerouting priority dstnat; }'
nft add chain ip nodeport post '{ type nat hook postrouting priority srcnat; }'
nft add rule ip nodeport pre ip daddr %s tcp dport %d dnat to %s:%d
nft add rule ip nodeport post ip daddr %s tcp dport %d masquerade`,
			n1.Underlay, nodePort, pod2.Addr4, podPort, pod2.Addr4, podPort)); err != nil {
			return err
		}
		_, err := sh(ctx, client.NS, `
nft add table inet noicmp
nft add chain inet noicmp in '{ type filter hook input priority filter; }'
nft add rule inet noicmp in icmp type destination-unreachable icmp code frag-needed counter drop`)
		return err
	}
	m := startCoexist(t, o)
	n1, pod2, client := m.Nodes[0], m.Nodes[1].Pods[0], m.Nodes[2]
	dial := netip.AddrPortFrom(n1.Underlay, nodePort)
	listen := netip.AddrPortFrom(pod2.Addr4, podPort)
	for _, download := range []bool{false, true} {
		dir := map[bool]string{false: "upload", true: "download"}[download]
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		r, err := lab.TransferVia(ctx, client.NS, dial, pod2.NS, listen, size, download)
		cancel()
		if err != nil {
			t.Errorf("%s of %d bytes from %s through NodePort %s to %s: %v", dir, size, client.Name, dial, pod2.Name, err)
		} else {
			t.Logf("measured: %s %s", dir, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := sh(ctx, client.NS, "nft list table inet noicmp | grep -o 'packets [0-9]*'"); err == nil {
		t.Logf("measured: ICMP fragmentation-needed dropped at the client: %s", strings.TrimSpace(out))
	}
	requireNoPlaintext(t, m.stopCapture(t))
}
