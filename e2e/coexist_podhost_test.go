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

	"github.com/wgmesh/wgmesh/e2e/apiserver"
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

// TestPrivilegedCoexistPodToHostAPIServerOnNode is scenario 3 in Kubernetes
// mode with the API server on node1's node address, as on a cluster whose
// control plane is a node. Pods on node2 reach the API server (the
// `kubernetes` Service's endpoint) through the tunnel, and the agents never
// route their own way to it through the tunnel: node2's key is rotated, so
// node1 drops node2's tunnel packets until it learns the new key — which
// node2's agent can only publish through the API server on node1. If that
// path went through the tunnel, the mesh would deadlock.
func TestPrivilegedCoexistPodToHostAPIServerOnNode(t *testing.T) {
	labRequireRoot(t)
	coexistRemoveStaleOnce(t)
	bin := labWgmeshBinary(t)
	bctx, bcancel := context.WithTimeout(context.Background(), k8sBuildTimeout)
	binDir, err := apiserver.Build(bctx)
	bcancel()
	if err != nil {
		t.Fatalf("build kube-apiserver: %v", err)
	}
	l := newTestLab(t, lab.Options{Prefix: "wgmcx", Nodes: 2, Wgmesh: bin})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2 := l.Nodes[0], l.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]
	k := &k8sLab{Lab: l, wgmesh: bin, agents: map[string]*lab.Agent{}, kubeconfigs: map[string]string{}}
	k.server, err = apiserver.Start(ctx, apiserver.Options{Dir: t.TempDir(), BinDir: binDir, NetNS: n1.NS, BindAddress: n1.Underlay})
	if err != nil {
		t.Fatalf("start kube-apiserver in %s on %s: %v", n1.NS, n1.Underlay, err)
	}
	// After the API server, as startK8sLab explains.
	if k.capture, err = l.StartCapture(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.server.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	t.Cleanup(k.stopAgents)
	k.admin = k8sClient(t, k.server, apiserver.Admin)
	k8sApplyDeploy(t, ctx, k.server)
	for _, n := range l.Nodes {
		k.register(t, ctx, n)
	}
	k8sWaitPolicyActive(t, ctx, k8sAgentClient(t, k.server, n1.Name), n2.Name)
	for _, n := range l.Nodes {
		if _, err := n.Keygen(ctx); err != nil {
			t.Fatal(err)
		}
		k.startAgent(t, n)
	}
	k.waitMesh(t, ctx, l.Nodes)
	apiURL := k.server.URL()
	t.Logf("measured: API server on %s's node address at %s; agents ready", n1.Name, apiURL)

	// podToAPI connects from pod2 to the API server and reports the HTTP
	// status (any status means the connection worked).
	podToAPI := func(ctx context.Context) (string, error) {
		return sh(ctx, p2.NS, fmt.Sprintf("curl -sk -o /dev/null -w '%%{http_code}' --connect-timeout 3 --max-time 5 %s/version", apiURL))
	}
	for _, fam := range families {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p2, p1.Addr(fam)); err != nil {
			t.Fatalf("pod to pod IPv%d %s -> %s: %v", fam, p2.Name, p1.Name, err)
		}
	}
	if code, err := podToAPI(ctx); err != nil {
		t.Errorf("%s -> API server on %s's node address: %v", p2.Name, n1.Name, err)
	} else {
		t.Logf("measured: %s -> API server on %s's node address: HTTP %s", p2.Name, n1.Name, code)
	}

	// The agents' own way to the API server stays outside the tunnel.
	for _, args := range []string{n1.Underlay.String(), n1.Underlay.String() + " from " + n2.Underlay.String()} {
		if out := mustSh(t, ctx, n2.NS, "ip route get "+args); !strings.Contains(out, " dev eth0 ") {
			t.Errorf("%s: ip route get %s = %q, want the underlay eth0: the agent's way to the API server must stay outside the tunnel", n2.Name, args, strings.TrimSpace(out))
		}
	}

	// Rotate node2's key: node1 drops node2's tunnel packets until node2's
	// agent has published the key through the API server on node1.
	rotated := time.Now()
	if _, err := n2.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitPeers(withTimeout(ctx, 60*time.Second), n2); err != nil {
		t.Fatalf("%s did not learn %s's rotated key through the API server on %s's address (bootstrap deadlock?): %v\n%s",
			n1.Name, n2.Name, n1.Name, err, k.agent(n2.Name).LogTail(30))
	}
	for _, fam := range families {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p2, p1.Addr(fam)); err != nil {
			t.Errorf("after the rotation, pod to pod IPv%d %s -> %s: %v", fam, p2.Name, p1.Name, err)
		}
	}
	t.Logf("measured: %s's rotated key published through the API server on %s and the tunnel back after %s",
		n2.Name, n1.Name, time.Since(rotated).Round(time.Millisecond))
	err = lab.Poll(withTimeout(ctx, 30*time.Second), 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := podToAPI(ctx)
		return err == nil, err
	})
	if err != nil {
		t.Errorf("after the rotation, %s -> API server on %s's node address: %v", p2.Name, n1.Name, err)
	}
	r := k.stopCapture(t)
	requireNoPlaintext(t, r)
}
