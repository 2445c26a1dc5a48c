package e2e_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/e2e/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// TestPrivilegedK8sKeyRotation is scenario 4 in Kubernetes mode: node2's
// key is rotated with `wgmesh rotate-key` while streams and probes run in
// both directions between node1's and node2's pods. node2's agent takes the
// new key and re-publishes it on its Node by itself, the other agents switch
// their peer for node2 to it, traffic resumes and the streams arrive
// intact, and nothing crosses the wire in plaintext. Reports the
// interruption and how long publishing and re-peering took.
func TestPrivilegedK8sKeyRotation(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n1, n2 := k.Nodes[0], k.Nodes[1]
	p1, p2 := n1.Pods[0], n2.Pods[0]
	for _, p := range [][2]*lab.Pod{{p1, p2}, {p2, p1}} {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Fatalf("IPv%d %s -> %s before the rotation: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}

	// A stream and a probe each way, one family each, so both directions
	// and both families see the rotation. The rate leaves CPU for the
	// agents on a small machine.
	type flow struct {
		stream *lab.Stream
		probe  *lab.Probe
		desc   string
	}
	var flows []flow
	for _, f := range []struct {
		from, to *lab.Pod
		sfam     int
	}{{p1, p2, 4}, {p2, p1, 6}} {
		s, err := lab.StartStream(ctx, f.from, f.to, f.to.Addr(f.sfam), lab.StreamOptions{Rate: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		pfam := 10 - f.sfam
		pr, err := lab.StartProbe(f.from, f.to, f.to.Addr(pfam), 20*time.Millisecond)
		if err != nil {
			s.Stop()
			t.Fatal(err)
		}
		defer pr.Stop()
		defer s.Stop()
		flows = append(flows, flow{s, pr, fmt.Sprintf("%s -> %s (stream IPv%d, probe IPv%d)", f.from.Name, f.to.Name, f.sfam, pfam)})
	}
	for _, f := range flows {
		if err := waitStreamFlowing(withTimeout(ctx, 20*time.Second), f.stream); err != nil {
			t.Fatalf("%s before the rotation: %v", f.desc, err)
		}
	}
	time.Sleep(time.Second)

	oldKey := n2.PublicKey
	t0 := time.Now()
	newKey, err := n2.RotateKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newKey == oldKey {
		t.Fatalf("wgmesh rotate-key on %s kept the public key %s", n2.Name, oldKey)
	}

	// Nobody but the agent publishes the new key, and nobody but the
	// agents' watches carries it to the others.
	var published, applied time.Duration
	peered := map[string]time.Duration{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		var last string
		err := lab.Poll(withTimeout(ctx, 60*time.Second), 50*time.Millisecond, func(ctx context.Context) (bool, error) {
			obj, err := k.admin.CoreV1().Nodes().Get(ctx, n2.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			last = obj.Annotations[kube.AnnotationPublicKey]
			return last == newKey, nil
		})
		published = time.Since(t0)
		if err != nil {
			t.Errorf("Node %s annotation %s is %q, not the rotated key %s: %v\n%s", n2.Name, kube.AnnotationPublicKey, last, newKey, err, k.agent(n2.Name).LogTail(20))
		}
	})
	wg.Go(func() {
		err := lab.Poll(withTimeout(ctx, 60*time.Second), 50*time.Millisecond, func(ctx context.Context) (bool, error) {
			out, err := n2.Exec(ctx, "wg", "show", n2.Interface, "public-key")
			return strings.TrimSpace(out) == newKey, err
		})
		applied = time.Since(t0)
		if err != nil {
			t.Errorf("agent on %s did not put the rotated key on %s: %v\n%s", n2.Name, n2.Interface, err, k.agent(n2.Name).LogTail(20))
		}
	})
	for _, n := range k8sOthers(k.Nodes, n2) {
		wg.Go(func() {
			err := lab.Poll(withTimeout(ctx, 60*time.Second), 50*time.Millisecond, func(ctx context.Context) (bool, error) {
				return k8sPeerHasKey(ctx, n, n2, oldKey, newKey)
			})
			mu.Lock()
			peered[n.Name] = time.Since(t0)
			mu.Unlock()
			if err != nil {
				t.Errorf("agent on %s did not switch its peer for %s to the rotated key: %v\n%s", n.Name, n2.Name, err, k.agent(n.Name).LogTail(20))
			}
		})
	}
	wg.Wait()
	var peerTimes []time.Duration
	for _, n := range k8sOthers(k.Nodes, n2) {
		peerTimes = append(peerTimes, peered[n.Name])
	}
	_, peerMax := k8sPercentiles(peerTimes)
	t.Logf("measured: rotate-key on %s: own interface switched after %s, annotation %s updated after %s, every other agent's peer switched after %s (each: %s)",
		n2.Name, applied.Round(time.Millisecond), kube.AnnotationPublicKey, published.Round(time.Millisecond), peerMax.Round(time.Millisecond), k8sDurations(peerTimes))

	// Traffic resumes on the same connections, and the echoes come back.
	for _, f := range flows {
		if err := waitStreamFlowing(withTimeout(ctx, 60*time.Second), f.stream); err != nil {
			t.Errorf("%s after the rotation: %v", f.desc, err)
		}
	}
	for _, p := range [][2]*lab.Pod{{p1, p2}, {p2, p1}, {k.Nodes[2].Pods[0], p2}} {
		for _, fam := range families {
			if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam)); err != nil {
				t.Errorf("IPv%d %s -> %s after the rotation: %v", fam, p[0].Name, p[1].Name, err)
			}
		}
	}
	resumed := time.Since(t0)
	for _, f := range flows {
		f.stream.Stop()
		res, err := f.stream.Wait(withTimeout(ctx, 60*time.Second))
		if err != nil {
			t.Errorf("%s: %v", f.desc, err)
		}
		pr := f.probe.Stop()
		if pr.Received == 0 {
			t.Errorf("%s: the probe got no echo at all: %s", f.desc, pr)
		}
		t.Logf("measured: key rotation %s: stream %s; probe %s", f.desc, res, pr)
		t.Logf("measured: key rotation interruption %s: stream longest gap %s, probe longest gap %s",
			f.desc, res.LongestGap.Round(time.Millisecond), pr.LongestGap.Round(time.Millisecond))
	}
	t.Logf("measured: traffic checked resumed %s after rotate-key", resumed.Round(time.Millisecond))
	requireNoPlaintext(t, k.stopCapture(t))
}

// k8sPeerHasKey reports whether n has m as a peer under newKey (with m's
// pod CIDRs as allowed IPs) and no peer under oldKey.
func k8sPeerHasKey(ctx context.Context, n, m *lab.Node, oldKey, newKey string) (bool, error) {
	peers, err := n.WGPeers(ctx)
	if err != nil {
		return false, err
	}
	// A peer's AllowedIPs are its pod CIDRs and its node addresses (so
	// replies from them through the tunnel are accepted).
	want := []string{m.PodCIDR4.String(), m.PodCIDR6.String()}
	for _, a := range m.HostIPs() {
		want = append(want, netip.PrefixFrom(a, a.BitLen()).String())
	}
	sort.Strings(want)
	var found bool
	for _, p := range peers {
		switch p.PublicKey {
		case oldKey:
			return false, fmt.Errorf("node %s still has %s's old key %s as a peer", n.Name, m.Name, oldKey)
		case newKey:
			if !slices.Equal(p.AllowedIPs, want) {
				return false, fmt.Errorf("node %s: peer %s (%s) allows %v, want %v", n.Name, newKey, m.Name, p.AllowedIPs, want)
			}
			found = true
		}
	}
	if !found {
		return false, fmt.Errorf("node %s has no peer with %s's new key %s", n.Name, m.Name, newKey)
	}
	return true, nil
}

// k8sChurnOps is how many joins and leaves TestPrivilegedK8sAgentChurn
// makes.
const k8sChurnOps = 50

// TestPrivilegedK8sAgentChurn is scenario 11 with real agents: next to a
// three-node mesh, 50 joins and leaves of agent-less Nodes that publish a
// key and an endpoint (so they are peers) happen as fast as the API server
// accepts them, some leaving, some coming back under the same name with a
// new key and pod CIDR. Afterwards every agent's WireGuard peers and its
// wgmesh routing table must match exactly what Derive computes from the
// live Node set: no stale peer, key or route. Reports how long that took.
func TestPrivilegedK8sAgentChurn(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, n := range k.Nodes {
		if _, _, err := k8sMatchesDerive(ctx, k, n); err != nil {
			t.Fatalf("before the churn: %v", err)
		}
	}

	// Every join gets a fresh pod CIDR pair (10.244.100.0/24 upward and
	// the IPv6 twin) and a fresh underlay address, so no two live Nodes
	// ever overlap or share an endpoint. The underlay addresses are in the
	// lab's 198.18.0.0/15 but outside its switch subnet: nothing answers
	// there, and nothing outside the lab is ever addressed.
	live := map[string]string{} // extra Node name -> its public key
	seq := 0
	create := func(name string) error {
		if seq >= 150 {
			return fmt.Errorf("churn: out of pod CIDRs after %d joins", seq)
		}
		c4 := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", 100+seq))
		c6 := netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", 100+seq))
		ip := netip.AddrFrom4([4]byte{198, 18, 1, byte(1 + seq)})
		seq++
		key := k8sTestKey(t).PublicKey().String()
		k8sCreateNode(t, ctx, k.admin, k8sNode{
			Name:       name,
			PodCIDRs:   []string{c4.String(), c6.String()},
			InternalIP: ip.String(),
			Annotations: map[string]string{
				kube.AnnotationPublicKey: key,
				kube.AnnotationEndpoint:  netip.AddrPortFrom(ip, 51820).String(),
			},
		})
		live[name] = key
		return nil
	}
	remove := func(name string) error {
		if err := k.admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete Node %s: %w", name, err)
		}
		delete(live, name)
		return nil
	}

	// The first 20 operations are joins; then a fixed walk over the 20
	// names cycles through a leave, a re-create (a leave and a join again
	// under the same name with a new key and CIDR) and a join of a name
	// that is gone (or a leave if it is there).
	const pool = 20
	names := make([]string, pool)
	for i := range names {
		names[i] = fmt.Sprintf("churn-%s-%02d", k.ID(), i)
	}
	var joins, leaves, recreates int
	t0 := time.Now()
	for step := 0; joins+leaves < k8sChurnOps; step++ {
		name := names[step%pool]
		if step >= pool {
			name = names[(step*7)%pool]
		}
		_, isLive := live[name]
		var err error
		switch {
		case !isLive:
			err = create(name)
			joins++
		case step%3 == 1 && joins+leaves+2 <= k8sChurnOps:
			if err = remove(name); err == nil {
				err = create(name)
			}
			leaves++
			joins++
			recreates++
		default:
			err = remove(name)
			leaves++
		}
		if err != nil {
			t.Fatalf("churn step %d: %v", step, err)
		}
	}
	churned := time.Since(t0)
	t.Logf("measured: churn of %d operations (%d joins, %d leaves, %d of them re-creates with a new key and CIDR) took %s against the API server; %d extra Nodes remain",
		joins+leaves, joins, leaves, recreates, churned.Round(time.Millisecond), len(live))

	// Every agent converges on exactly the live Node set.
	conv := make([]time.Duration, len(k.Nodes))
	var wg sync.WaitGroup
	for i, n := range k.Nodes {
		wg.Go(func() {
			var last error
			err := lab.Poll(withTimeout(ctx, 60*time.Second), 200*time.Millisecond, func(ctx context.Context) (bool, error) {
				_, _, last = k8sMatchesDerive(ctx, k, n)
				return last == nil, nil
			})
			conv[i] = time.Since(t0)
			if err != nil {
				t.Errorf("agent on %s did not converge on the live Nodes after the churn: %v (%v)\n%s", n.Name, last, err, k.agent(n.Name).LogTail(20))
			}
		})
	}
	wg.Wait()
	p50, maxD := k8sPercentiles(conv)
	t.Logf("measured: after the churn every agent's peers and table %d match Derive over the live Nodes: p50 %s max %s after the first operation (%s after the last; each: %s)",
		k8sRouteTable, p50.Round(time.Millisecond), maxD.Round(time.Millisecond), (maxD - churned).Round(time.Millisecond), k8sDurations(conv))
	if t.Failed() {
		t.FailNow()
	}

	// The Node set the test believes in is the live one, and the result
	// holds: a resync must not bring anything stale back.
	list, err := k.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	for _, obj := range list.Items {
		if k.Node(obj.Name) == nil {
			extra = append(extra, obj.Name)
			if key, ok := live[obj.Name]; !ok || obj.Annotations[kube.AnnotationPublicKey] != key {
				t.Errorf("Node %s in the API server is not the one the test created last", obj.Name)
			}
		}
	}
	if want := slices.Sorted(maps.Keys(live)); !slices.Equal(slices.Sorted(slices.Values(extra)), want) {
		t.Errorf("extra Nodes in the API server %v, want %v", extra, want)
	}
	time.Sleep(2 * time.Second)
	for _, n := range k.Nodes {
		peers, routes, err := k8sMatchesDerive(ctx, k, n)
		if err != nil {
			t.Errorf("after settling: %v", err)
			continue
		}
		t.Logf("measured: %s after the churn: %d peers and %d routes, exactly as derived", n.Name, peers, routes)
		if peers != len(k.Nodes)-1+len(live) {
			t.Errorf("%s has %d peers, want the other %d agents and the %d extra Nodes", n.Name, peers, len(k.Nodes)-1, len(live))
		}
	}
	// The mesh itself keeps working between the agents.
	for _, p := range labPairs(k.Lab) {
		if err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr4); err != nil {
			t.Errorf("%s -> %s after the churn: %v", p[0].Name, p[1].Name, err)
		}
	}
	// Leave only the lab's own Nodes behind for the agents' shutdown.
	for name := range live {
		if err := k.admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("clean up Node %s: %v", name, err)
		}
	}
	requireNoPlaintext(t, k.stopCapture(t))
}

// k8sMatchesDerive compares n's WireGuard peers (public keys and allowed
// IPs) and its wgmesh routing table with what Derive computes for n from
// the Node objects the API server holds now, as the agent's flags set it
// up (both families, the API server kept outside the tunnel). On an exact
// match it returns how many peers and routes matched; otherwise an error
// listing the differences.
func k8sMatchesDerive(ctx context.Context, k *k8sLab, n *lab.Node) (peerCount, routeCount int, err error) {
	list, err := k.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, 0, fmt.Errorf("list Nodes: %w", err)
	}
	var nodes []mesh.Node
	var self mesh.Node
	var found bool
	for i := range list.Items {
		mn := kube.NodeFromObject(&list.Items[i])
		nodes = append(nodes, mn)
		if mn.Name == n.Name {
			self, found = mn, true
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("node %s has no Node object", n.Name)
	}
	want := mesh.Derive(self, nodes, mesh.DeriveOptions{IPv4: true, IPv6: true, KeepOutside: []netip.Addr{k.CP.Addr}})

	wantPeers := map[string]string{}
	for _, p := range want.Peers {
		var ips []string
		for _, a := range p.AllowedIPs {
			ips = append(ips, a.String())
		}
		sort.Strings(ips)
		wantPeers[p.PublicKey.String()] = strings.Join(ips, ",")
	}
	// `wg show IFACE allowed-ips` carries what `dump` has on keys and
	// allowed IPs without printing the interface's private key.
	peers, err := n.WGPeers(ctx)
	if err != nil {
		return 0, 0, err
	}
	gotPeers := map[string]string{}
	for _, p := range peers {
		gotPeers[p.PublicKey] = strings.Join(p.AllowedIPs, ",")
	}

	wantRoutes := map[string]string{}
	for _, r := range want.Routes {
		wantRoutes[r.Dst.String()] = r.Kind.String()
	}
	lines, err := n.Routes(ctx, k8sRouteTable)
	if err != nil {
		return 0, 0, err
	}
	gotRoutes := map[string]string{}
	for _, l := range lines {
		dst, kind := k8sParseRoute(l, n.Interface)
		if prev, dup := gotRoutes[dst]; dup {
			kind = prev + "+" + kind
		}
		gotRoutes[dst] = kind
	}

	var diffs []string
	diffs = append(diffs, k8sMapDiff("peer", wantPeers, gotPeers)...)
	diffs = append(diffs, k8sMapDiff("route", wantRoutes, gotRoutes)...)
	if len(diffs) > 0 {
		const show = 8
		more := ""
		if len(diffs) > show {
			more = fmt.Sprintf(" (and %d more)", len(diffs)-show)
			diffs = diffs[:show]
		}
		return 0, 0, fmt.Errorf("node %s differs from Derive over %d Nodes (%d peers, %d routes expected): %s%s",
			n.Name, len(nodes), len(wantPeers), len(wantRoutes), strings.Join(diffs, "; "), more)
	}
	return len(wantPeers), len(wantRoutes), nil
}

// k8sParseRoute reads one line of `ip route show table T` into its
// destination (a prefix, host routes as /32 or /128) and its kind in the
// names of mesh.RouteKind: "tunnel" for a route through iface, the route
// type otherwise ("throw", "unreachable"), or the whole line when it is
// neither.
func k8sParseRoute(line, iface string) (dst, kind string) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return "", line
	}
	switch f[0] {
	case "throw", "unreachable", "blackhole", "prohibit", "local", "broadcast":
		kind, f = f[0], f[1:]
	}
	if len(f) == 0 {
		return "", line
	}
	dst = f[0]
	if p, err := netip.ParsePrefix(dst); err == nil {
		dst = p.String()
	} else if a, err := netip.ParseAddr(dst); err == nil {
		dst = netip.PrefixFrom(a, a.BitLen()).String()
	}
	if kind != "" {
		return dst, kind
	}
	if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) && f[i+1] == iface {
		return dst, "tunnel"
	}
	return dst, line
}

// k8sMapDiff describes how got differs from want, one entry per key.
func k8sMapDiff(what string, want, got map[string]string) []string {
	var out []string
	for _, key := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[key]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("missing %s %s (%s)", what, key, want[key]))
		case g != want[key]:
			out = append(out, fmt.Sprintf("%s %s is %q, want %q", what, key, g, want[key]))
		}
	}
	for _, key := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[key]; !ok {
			out = append(out, fmt.Sprintf("stale %s %s (%s)", what, key, got[key]))
		}
	}
	return out
}

func TestK8sParseRoute(t *testing.T) {
	const iface = "wgm-1a2b3c-1"
	for _, c := range []struct{ line, dst, kind string }{
		{"throw 10.244.1.0/24 proto 51820", "10.244.1.0/24", "throw"},
		{"10.244.2.0/24 dev wgm-1a2b3c-1 proto 51820 scope link", "10.244.2.0/24", "tunnel"},
		{"fd00:10:244:2::/64 dev wgm-1a2b3c-1 proto 51820 metric 1024 pref medium", "fd00:10:244:2::/64", "tunnel"},
		{"unreachable fd00:10:244:3::/64 dev lo proto 51820 metric 1024 error -113 pref medium", "fd00:10:244:3::/64", "unreachable"},
		{"throw 198.18.1.5 proto 51820", "198.18.1.5/32", "throw"},
		{"10.244.4.0/24 dev eth0 proto static", "10.244.4.0/24", "10.244.4.0/24 dev eth0 proto static"},
		{"10.244.5.0/24 dev", "10.244.5.0/24", "10.244.5.0/24 dev"},
		{"throw", "", "throw"},
	} {
		if dst, kind := k8sParseRoute(c.line, iface); dst != c.dst || kind != c.kind {
			t.Errorf("k8sParseRoute(%q) = %q, %q; want %q, %q", c.line, dst, kind, c.dst, c.kind)
		}
	}
}

func FuzzK8sParseRoute(f *testing.F) {
	f.Add("throw 10.244.1.0/24 proto 51820", "wg0")
	f.Add("10.244.2.0/24 dev wg0 proto 51820 scope link", "wg0")
	f.Add("unreachable fd00:10:244:3::/64 dev lo metric 1024 error -113 pref medium", "wg0")
	f.Add("default dev", "")
	f.Fuzz(func(t *testing.T, line, iface string) {
		dst, kind := k8sParseRoute(line, iface)
		if kind == "" {
			t.Errorf("k8sParseRoute(%q, %q) gave no kind", line, iface)
		}
		if kind == "tunnel" && !strings.Contains(line, iface) {
			t.Errorf("k8sParseRoute(%q, %q) says tunnel for a line without the interface", line, iface)
		}
		if dst != "" && !strings.Contains(line, strings.Split(dst, "/")[0]) {
			if _, err := netip.ParsePrefix(dst); err != nil {
				t.Errorf("k8sParseRoute(%q) = dst %q, neither from the line nor a prefix", line, dst)
			}
		}
	})
}

func TestK8sMapDiff(t *testing.T) {
	got := k8sMapDiff("peer", map[string]string{"a": "1", "b": "2"}, map[string]string{"b": "3", "c": "4"})
	want := []string{`missing peer a (1)`, `peer b is "3", want "2"`, `stale peer c (4)`}
	if !slices.Equal(got, want) {
		t.Errorf("k8sMapDiff = %q, want %q", got, want)
	}
	if d := k8sMapDiff("route", map[string]string{"x": "tunnel"}, map[string]string{"x": "tunnel"}); len(d) != 0 {
		t.Errorf("k8sMapDiff of equal maps = %q", d)
	}
}
