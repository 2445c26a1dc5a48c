package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// TestPrivilegedCoexistPodToHost is issue #11's scenario 3: pods reach
// host-network endpoints on other nodes, and hosts reach remote pods from
// their node address, without masquerade (as with Cilium's BPF masquerading,
// ip-masq-agent's RFC 1918 non-masquerade ranges or the bridge CNI with
// ipMasq false; the lab's pods are never masqueraded).
//
//   - A: a listener on node1's node address (like the API server, a kubelet
//     or a hostNetwork pod); pod2 connects to it.
//   - B: on node1, a socket bound to node1's node address (`curl
//     --interface`) connects to pod2.
//
// Both must work, for every family of node addresses the lab has, with zero
// plaintext pod packets on the wire, while host-sourced traffic to the
// other node (the agent's way to the API server and to peer endpoints) stays
// outside the tunnel: no bootstrap deadlock. `wgmesh status` must say that
// pod traffic to remote node addresses is encrypted.
func TestPrivilegedCoexistPodToHost(t *testing.T) {
	labRequireRoot(t)
	for _, tc := range []struct {
		name string
		o    lab.Options
	}{
		// Node addresses are IPv4 only; node1's address is its endpoint.
		{"ipv4-underlay", lab.Options{}},
		// Node addresses of both families; the endpoints are IPv6.
		{"dual-stack-underlay", lab.Options{IPv6Underlay: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startCoexist(t, labMeshOptions{Options: tc.o})
			podHostScenario(t, m)
		})
	}
}

// echoBytes is what each echo exchange moves each way: several windows'
// worth, so that a path that only lets the handshake through fails.
const echoBytes = 256 << 10

func podHostScenario(t *testing.T, m *labMesh) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]

	// The pod-to-pod tunnel works (handshake done), so what follows
	// measures the node addresses, not a cold start.
	for _, fam := range families {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p2, p1.Addr(fam)); err != nil {
			t.Fatalf("pod to pod IPv%d %s -> %s does not work, nothing else can: %v", fam, p2.Name, p1.Name, err)
		}
	}

	var failedA, failedB, lost, sent int
	for _, h := range n1.HostIPs() {
		fam := podHostFamily(h)
		// A: pod2 -> listener on node1's node address.
		res, err := lab.TCPEcho(withTimeout(ctx, 8*time.Second), p2.NS, netip.Addr{}, n1.NS, h, echoBytes)
		if err != nil {
			failedA++
			t.Errorf("A: IPv%d %s -> listener on %s's node address %s: %v", fam, p2.Name, n1.Name, h, err)
		} else {
			t.Logf("measured: A: IPv%d %s -> %s:%s: %s", fam, p2.Name, n1.Name, h, res)
			if res.Local.Addr() != p2.Addr(fam) {
				t.Errorf("A: %s saw the connection from %s, want the pod's own address %s (no masquerade in the lab)", n1.Name, res.Local, p2.Addr(fam))
			}
		}
		r, err := p2.Ping(ctx, h, 10, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		lost += r.Sent - r.Received
		sent += r.Sent
		t.Logf("measured: A: ping IPv%d %s -> %s's node address %s: %s", fam, p2.Name, n1.Name, h, r)
		if r.Received != r.Sent {
			t.Errorf("A: ping %s -> %s: %s", p2.Name, h, r)
		}

		// B: node1, bound to its node address -> pod2.
		res, err = lab.TCPEcho(withTimeout(ctx, 8*time.Second), n1.NS, h, p2.NS, p2.Addr(fam), echoBytes)
		if err != nil {
			failedB++
			t.Errorf("B: IPv%d %s bound to its node address %s -> %s: %v", fam, n1.Name, h, p2.Name, err)
		} else {
			t.Logf("measured: B: IPv%d %s from %s -> %s: %s", fam, n1.Name, h, p2.Name, res)
			if res.Local.Addr() != h {
				t.Errorf("B: %s saw the connection from %s, want %s's node address %s", p2.Name, res.Local, n1.Name, h)
			}
		}
	}
	t.Logf("measured: A failed %d, B failed %d of %d node addresses; %d of %d pings to node addresses lost",
		failedA, failedB, len(n1.HostIPs()), lost, sent)

	// No bootstrap deadlock: what the host itself sends to the other node
	// (the agent to the API server or a peer's endpoint, the kubelet) and
	// the encrypted packets leave through the underlay, never the tunnel;
	// only pod-sourced packets to node addresses take the tunnel.
	mark := podHostMark(t, ctx, n2)
	for _, h := range n1.HostIPs() {
		own := n2.Underlay
		if h.Is6() {
			own = n2.Underlay6
		}
		for _, q := range []struct{ what, args string }{
			{"host, unbound", h.String()},
			{"host, from its node address", h.String() + " from " + own.String()},
			{"encrypted (marked) packets", h.String() + " mark " + mark},
		} {
			out := mustSh(t, ctx, n2.NS, "ip route get "+q.args)
			if !strings.Contains(out, " dev eth0 ") {
				t.Errorf("%s: on %s, %s to %s's node address leaves through %q, want the underlay eth0 (outside the tunnel)", n2.Name, n2.Name, q.what, n1.Name, strings.TrimSpace(out))
			}
		}
		out := mustSh(t, ctx, n2.NS, fmt.Sprintf("ip route get %s from %s iif cni0", h, p2.Addr(podHostFamily(h))))
		if !strings.Contains(out, " dev "+n2.Interface+" ") {
			t.Errorf("%s: pod traffic to %s's node address %s leaves through %q, want the tunnel %s", n2.Name, n1.Name, h, strings.TrimSpace(out), n2.Interface)
		}
	}

	// node2 accepts node1's node addresses from the tunnel (replies in A,
	// connections in B).
	peers, err := n2.WGPeers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey != n1.PublicKey {
			continue
		}
		for _, h := range n1.HostIPs() {
			if !slices.Contains(p.AllowedIPs, netip.PrefixFrom(h, h.BitLen()).String()) {
				t.Errorf("%s: peer %s allowed IPs %v lack its node address %s", n2.Name, n1.Name, p.AllowedIPs, h)
			}
		}
	}

	// status explains what is covered.
	doc := nodeStatusJSON(t, ctx, n2)
	if !podHostCovered(doc, "pods", "remote node addresses") {
		t.Errorf("%s: wgmesh status does not report pod traffic to remote node addresses as encrypted: coverage %v", n2.Name, doc["coverage"])
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// podHostMark reads the agent's fwmark from its policy rule, so the check
// follows whatever default the agent has.
func podHostMark(t *testing.T, ctx context.Context, n *lab.Node) string {
	t.Helper()
	out := mustSh(t, ctx, n.NS, "ip rule show")
	m := regexp.MustCompile(`not from all fwmark (0x[0-9a-f]+)/0x[0-9a-f]+ lookup 51820`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no wgmesh rule for table 51820 in:\n%s", n.Name, out)
	}
	return m[1]
}

// podHostCovered reports whether the status document lists traffic from
// from to to as encrypted.
func podHostCovered(doc map[string]any, from, to string) bool {
	cov, _ := doc["coverage"].([]any)
	for _, c := range cov {
		e, _ := c.(map[string]any)
		if e["from"] == from && e["to"] == to && e["encrypted"] == true {
			return true
		}
	}
	return false
}

// podHostFamily is 4 or 6, as the lab's Pod.Addr wants it.
func podHostFamily(a netip.Addr) int {
	if a.Is6() {
		return 6
	}
	return 4
}
