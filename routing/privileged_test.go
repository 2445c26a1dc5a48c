package routing

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"

	"github.com/wgmesh/wgmesh/internal/netnslab"
	"github.com/wgmesh/wgmesh/mesh"
)

// lab is a network namespace holding a "wgmesh0" (one end of a veth pair,
// standing in for the WireGuard interface) and a veth underlay ul0 (198.18.0.1/24, MTU 1400,
// default route via the peer), plus a peer namespace on the other end of
// the veth (ul1, 198.18.0.2/24) that can send packets from a remote pod
// address (10.244.2.5).
type lab struct {
	t        testing.TB
	ns, peer string
	h        netns.NsHandle
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
}

func newLab(t testing.TB) *lab {
	requireRoot(t)
	nl := netnslab.New(t, "wgrt", "host", "peer")
	l := &lab{t: t, ns: nl.NS[0], peer: nl.NS[1]}
	// New namespaces inherit the host's net.ipv4.conf.{all,default}: make
	// src_valid_mark start at 0 whatever the host has, so the tests can
	// tell that the router leaves it alone.
	l.run("ip", "netns", "exec", l.ns, "sysctl", "-q", "-w",
		"net.ipv4.conf.all.src_valid_mark=0", "net.ipv4.conf.default.src_valid_mark=0")
	// No dummy module on every machine: a veth pair stands in for the tunnel.
	l.ip("link", "add", DefaultInterface, "type", "veth", "peer", "name", "wgpeer")
	l.ip("link", "set", "wgpeer", "up")
	l.ip("link", "set", DefaultInterface, "up")
	l.ip("link", "add", "ul0", "mtu", "1400", "type", "veth", "peer", "name", "ul1", "netns", l.peer)
	l.ip("addr", "add", "198.18.0.1/24", "dev", "ul0")
	l.ip("link", "set", "ul0", "up")
	l.ip("route", "add", "default", "via", "198.18.0.2", "dev", "ul0")
	l.peerIP("addr", "add", "198.18.0.2/24", "dev", "ul1")
	l.peerIP("addr", "add", "10.244.2.5/32", "dev", "ul1")
	l.peerIP("link", "set", "ul1", "up")
	h, err := netns.GetFromName(l.ns)
	if err != nil {
		t.Fatalf("open namespace %s: %v", l.ns, err)
	}
	t.Cleanup(func() { h.Close() })
	l.h = h
	return l
}

func (l *lab) run(name string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ip runs `ip -n <lab ns> args...`.
func (l *lab) ip(args ...string) string {
	l.t.Helper()
	return l.run("ip", append([]string{"-n", l.ns}, args...)...)
}

func (l *lab) peerIP(args ...string) string {
	l.t.Helper()
	return l.run("ip", append([]string{"-n", l.peer}, args...)...)
}

// routeGet returns `ip route get` output and whether it succeeded.
func (l *lab) routeGet(args ...string) (string, bool) {
	out, err := exec.Command("ip", append([]string{"-n", l.ns, "route", "get"}, args...)...).CombinedOutput()
	return string(out), err == nil
}

// router returns a kernel router inside the lab namespace.
func (l *lab) router(o Options) (*router, *kernel) {
	l.t.Helper()
	if err := o.Validate(); err != nil {
		l.t.Fatal(err)
	}
	k, err := newKernel(o, l.h)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(k.close)
	return newRouter(o, k), k
}

// labDesired is a dual-stack mesh seen from node-1 (10.244.1.0/24): node-2
// is encrypted, node-3 is keyless (strict: unreachable).
func labDesired() mesh.Desired {
	p := netip.MustParsePrefix
	return mesh.Desired{
		Routes: []mesh.Route{
			{Dst: p("10.244.1.0/24"), Kind: mesh.Throw, Node: "node-1"},
			{Dst: p("10.244.2.0/24"), Kind: mesh.ViaTunnel, Node: "node-2"},
			{Dst: p("10.244.3.0/24"), Kind: mesh.Unreachable, Node: "node-3"},
			{Dst: p("fd00:10:244:1::/64"), Kind: mesh.Throw, Node: "node-1"},
			{Dst: p("fd00:10:244:2::/64"), Kind: mesh.ViaTunnel, Node: "node-2"},
			{Dst: p("fd00:10:244:3::/64"), Kind: mesh.Unreachable, Node: "node-3"},
		},
		Addresses:     []netip.Prefix{p("10.244.1.0/32"), p("fd00:10:244:1::/128")},
		StrictSources: []netip.Prefix{p("10.244.2.0/24"), p("fd00:10:244:2::/64")},
		EncryptOnly:   []netip.Prefix{p("10.244.2.0/24"), p("fd00:10:244:2::/64")},
	}
}

// TestPrivilegedApply applies a dual-stack Desired in a namespace, reads the
// kernel back through the same model and compares it with what the fake
// renders for the same input; then checks the kernel's own route lookups.
func TestPrivilegedApply(t *testing.T) {
	l := newLab(t)
	o := DefaultOptions()
	r, k := l.router(o)
	ctx := context.Background()
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	got, err := k.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fake := NewFake(o)
	fake.SetLink("eth0", 1400)
	if err := fake.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("fake Apply: %v", err)
	}
	want := fake.sys.observe(o)
	t.Logf("kernel state:\n%s", got.Ours.render(o.Interface))
	if diff := cmp.Diff(want.Ours.render(o.Interface), got.Ours.render(o.Interface)); diff != "" {
		t.Errorf("kernel state differs from the fake's (-fake +kernel):\n%s", diff)
	}
	checkDumpOrder(t, got.Ours.Routes, want.Ours.Routes)
	if st := r.Status(); st.LinkMTU != 1340 || st.PodMTU != 1340 {
		t.Errorf("Status() = %+v, want LinkMTU and PodMTU 1340 (veth 1400 - 60)", st)
	}

	rules := l.ip("rule")
	if !strings.Contains(rules, "99:\tnot from all fwmark 0x2000/0x2000 lookup 51820 proto 0x57") &&
		!strings.Contains(rules, "99:\tnot from all fwmark 0x2000/0x2000 lookup 51820 proto 87") {
		t.Errorf("ip rule lacks the wgmesh rule:\n%s", rules)
	}
	if rules6 := l.ip("-6", "rule"); !strings.Contains(rules6, "not from all fwmark 0x2000/0x2000 lookup 51820") {
		t.Errorf("ip -6 rule lacks the wgmesh rule:\n%s", rules6)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"10.244.2.5"}, "dev wgmesh0 table 51820 src 10.244.1.0"},
		{[]string{"fd00:10:244:2::5"}, "dev wgmesh0"},
		{[]string{"10.244.1.7"}, "dev ul0"},                   // own CIDR: throw → main
		{[]string{"10.244.2.5", "mark", "0x2000"}, "dev ul0"}, // encrypted packets skip the table
		{[]string{"198.18.0.2"}, "dev ul0"},
	} {
		out, ok := l.routeGet(c.args...)
		if !ok || !strings.Contains(out, c.want) {
			t.Errorf("ip route get %s = %q (ok %v), want %q", strings.Join(c.args, " "), out, ok, c.want)
		}
	}
	for _, dst := range []string{"10.244.3.5", "fd00:10:244:3::5"} {
		if out, ok := l.routeGet(dst); ok {
			t.Errorf("ip route get %s (keyless node, strict) = %q, want unreachable", dst, out)
		}
	}
	if out := l.ip("-6", "route", "show", "table", "51820"); !strings.Contains(out, "fd00:10:244:2::/64 dev wgmesh0 proto 87 src fd00:10:244:1::") {
		t.Errorf("ip -6 route show table 51820:\n%s", out)
	}
	nft := l.run("ip", "netns", "exec", l.ns, "nft", "list", "table", "inet", "wgmesh_wgmesh0")
	for _, want := range []string{"10.244.2.0/24", "fd00:10:244:2::/64", `iifname != "wgmesh0"`, "priority raw"} {
		if !strings.Contains(nft, want) {
			t.Errorf("nft list table inet wgmesh_wgmesh0 lacks %q:\n%s", want, nft)
		}
	}
	// No sysctl is written: src_valid_mark stays 0 everywhere.
	for _, dev := range []string{"all", "default", "ul0", DefaultInterface} {
		svm := l.run("ip", "netns", "exec", l.ns, "cat", "/proc/sys/net/ipv4/conf/"+dev+"/src_valid_mark")
		if strings.TrimSpace(svm) != "0" {
			t.Errorf("net.ipv4.conf.%s.src_valid_mark = %q, want 0 (untouched)", dev, svm)
		}
	}
	// A second Apply of the same input changes nothing.
	again, _ := k.observe(ctx)
	if ops := plan(o.Interface, again.Ours, mustTarget(t, o, labDesired(), again)); len(ops) != 0 {
		t.Errorf("after Apply, plan still has %d ops: %v", len(ops), ops)
	}
}

func mustTarget(t *testing.T, o Options, d mesh.Desired, w observed) ours {
	t.Helper()
	want, notes := o.target(d, w)
	if len(notes) > 0 {
		t.Fatalf("target notes: %v", notes)
	}
	return want
}

// TestPrivilegedIngressDrop sends plaintext pings from a remote pod address
// (10.244.2.5, in node-2's strict CIDR) over the underlay: the filter drops
// and counts them, while pings from the peer's underlay address still pass.
func TestPrivilegedIngressDrop(t *testing.T) {
	l := newLab(t)
	r, _ := l.router(DefaultOptions())
	if err := r.Apply(context.Background(), labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Logf("nft list table inet wgmesh_wgmesh0:\n%s", l.run("ip", "netns", "exec", l.ns, "nft", "list", "table", "inet", "wgmesh_wgmesh0"))
	ping := func(src string) error {
		return exec.Command("ip", "netns", "exec", l.peer, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", src, "198.18.0.1").Run()
	}
	if err := ping("198.18.0.2"); err != nil {
		t.Fatalf("ping from the peer's underlay address failed: %v (the lab is broken)", err)
	}
	if n := r.Status().IngressDropped; n != 0 {
		t.Errorf("IngressDropped = %d after underlay pings, want 0", n)
	}
	if err := ping("10.244.2.5"); err == nil {
		t.Errorf("ping from remote pod address 10.244.2.5 over the underlay got answers; want dropped")
	}
	if n := r.Status().IngressDropped; n < 3 {
		t.Errorf("IngressDropped = %d, want >= 3", n)
	}

	// With the filter disabled the table goes and the same packets pass.
	o := DefaultOptions()
	o.DisableIngressFilter = true
	r2, _ := l.router(o)
	if err := r2.Apply(context.Background(), labDesired()); err != nil {
		t.Fatalf("Apply without ingress filter: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", l.ns, "nft", "list", "table", "inet", "wgmesh_wgmesh0").CombinedOutput(); err == nil {
		t.Errorf("table inet wgmesh_wgmesh0 still present with DisableIngressFilter:\n%s", out)
	}
	l.peerIP("route", "add", "10.244.1.0/24", "via", "198.18.0.1")
	l.ip("route", "add", "10.244.2.0/24", "via", "198.18.0.2")
	// The router namespace answers from its main table only for marked
	// traffic; unmarked replies to 10.244.2.5 go into "wgmesh0". What
	// matters here is that the request arrives: count it with a rule.
	l.run("ip", "netns", "exec", l.ns, "nft", "add", "table", "inet", "probe")
	l.run("ip", "netns", "exec", l.ns, "nft", "add", "chain", "inet", "probe", "c", "{ type filter hook input priority 0; }")
	l.run("ip", "netns", "exec", l.ns, "nft", "add", "rule", "inet", "probe", "c", "ip", "saddr", "10.244.2.5", "counter")
	_ = ping("10.244.2.5")
	if out := l.run("ip", "netns", "exec", l.ns, "nft", "list", "chain", "inet", "probe", "c"); strings.Contains(out, "packets 0 ") {
		t.Errorf("with the filter disabled the packets did not arrive:\n%s", out)
	}
}

// TestPrivilegedHostEncryption: with host encryption the peers' host IPs go
// through the tunnel, but their endpoints and the API server stay outside.
func TestPrivilegedHostEncryption(t *testing.T) {
	l := newLab(t)
	r, _ := l.router(DefaultOptions())
	p := netip.MustParsePrefix
	d := labDesired()
	d.Routes = append(d.Routes,
		mesh.Route{Dst: p("198.18.0.0/24"), Kind: mesh.ViaTunnel, Node: "node-2"}, // peer host range
		mesh.Route{Dst: p("198.18.0.2/32"), Kind: mesh.Throw, Node: "node-2"},     // its endpoint
		mesh.Route{Dst: p("198.18.0.9/32"), Kind: mesh.Throw},                     // the API server
	)
	if err := r.Apply(context.Background(), d); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for dst, want := range map[string]string{
		"198.18.0.3": "dev wgmesh0",
		"198.18.0.2": "dev ul0",
		"198.18.0.9": "dev ul0",
	} {
		if out, ok := l.routeGet(dst); !ok || !strings.Contains(out, want) {
			t.Errorf("ip route get %s = %q, want %q", dst, out, want)
		}
	}
	if err := exec.Command("ip", "netns", "exec", l.ns, "ping", "-n", "-q", "-c", "1", "-W", "2", "198.18.0.2").Run(); err != nil {
		t.Errorf("the peer's endpoint is not reachable with host encryption on: %v", err)
	}
}

// TestPrivilegedRepair deletes a route, a rule, an address and the nft table
// by hand; the next Apply puts them all back.
func TestPrivilegedRepair(t *testing.T) {
	l := newLab(t)
	o := DefaultOptions()
	r, k := l.router(o)
	ctx := context.Background()
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	before, _ := k.observe(ctx)
	l.ip("route", "del", "10.244.2.0/24", "table", "51820")
	l.ip("-6", "route", "del", "fd00:10:244:3::/64", "table", "51820")
	l.ip("rule", "del", "pref", "99")
	l.ip("addr", "del", "10.244.1.0/32", "dev", DefaultInterface)
	l.run("ip", "netns", "exec", l.ns, "nft", "delete", "element", "inet", "wgmesh_wgmesh0", "strict6", "{ fd00:10:244:2::/64 }")
	mid, _ := k.observe(ctx)
	if mid.Ours.render(o.Interface) == before.Ours.render(o.Interface) {
		t.Fatal("deleting by hand changed nothing; the test is broken")
	}
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("re-Apply: %v", err)
	}
	after, _ := k.observe(ctx)
	if diff := cmp.Diff(before.Ours.render(o.Interface), after.Ours.render(o.Interface)); diff != "" {
		t.Errorf("re-Apply did not repair (-before +after):\n%s", diff)
	}
	l.run("ip", "netns", "exec", l.ns, "nft", "delete", "table", "inet", "wgmesh_wgmesh0")
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("re-Apply: %v", err)
	}
	after, _ = k.observe(ctx)
	if diff := cmp.Diff(before.Ours.render(o.Interface), after.Ours.render(o.Interface)); diff != "" {
		t.Errorf("re-Apply did not recreate the nft table (-before +after):\n%s", diff)
	}
}

// TestPrivilegedCleanup installs foreign entries (a route in wgmesh's own
// table, a rule, another table, another nft table), applies, changes options
// and cleans up twice: the namespace's rules, routes, addresses and ruleset
// are exactly as before (the link MTU aside: Cleanup leaves it) and nothing
// of wgmesh's is left.
func TestPrivilegedCleanup(t *testing.T) {
	l := newLab(t)
	l.ip("route", "add", "10.99.0.0/16", "via", "198.18.0.2", "table", "51820")
	l.ip("rule", "add", "pref", "200", "from", "10.98.0.0/16", "lookup", "100")
	l.ip("route", "add", "10.97.0.0/16", "via", "198.18.0.2", "table", "100")
	l.run("ip", "netns", "exec", l.ns, "nft", "add", "table", "inet", "other")
	l.run("ip", "netns", "exec", l.ns, "nft", "add", "chain", "inet", "other", "c", "{ type filter hook prerouting priority raw; }")
	snapshot := func() string {
		return l.ip("rule") + l.ip("-6", "rule") + l.ip("route", "show", "table", "all") + l.ip("-6", "route", "show", "table", "all") +
			l.ip("-br", "addr") + l.run("ip", "netns", "exec", l.ns, "nft", "list", "ruleset")
	}
	// The veths' IPv6 link-local addresses get their local routes only
	// when duplicate address detection ends (about a second after the
	// links came up): wait for it, or the snapshot misses them and the
	// comparison below fails on a loaded machine.
	deadline := time.Now().Add(30 * time.Second)
	for l.ip("-6", "addr", "show", "tentative") != "" {
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 addresses still tentative after 30s:\n%s", l.ip("-6", "addr", "show", "tentative"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := snapshot()

	ctx := context.Background()
	r, _ := l.router(DefaultOptions())
	if err := r.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	// A second run with other table, priority and mark is another
	// instance as far as rules and routes go: it leaves the first run's
	// alone (they are removed by a cleanup with the first run's options).
	o := DefaultOptions()
	o.Table, o.Priority, o.FwMark = 1234, 98, 0x40000
	r2, k2 := l.router(o)
	if err := r2.Apply(ctx, labDesired()); err != nil {
		t.Fatalf("Apply with other options: %v", err)
	}
	if rules := l.ip("rule"); !strings.Contains(rules, "lookup 51820") || !strings.Contains(rules, "lookup 1234") {
		t.Errorf("after a run with table 1234, ip rule shows:\n%s", rules)
	}
	if routes := l.ip("route", "show", "table", "51820"); !strings.Contains(routes, "10.244.2.0/24") || !strings.Contains(routes, "10.99.0.0/16") {
		t.Errorf("after a run with table 1234, table 51820 holds:\n%s", routes)
	}
	if err := cleanupTwice(ctx, r); err != nil {
		t.Fatalf("Cleanup with the first run's options: %v", err)
	}
	if rules := l.ip("rule"); strings.Contains(rules, "lookup 51820") || !strings.Contains(rules, "lookup 1234") {
		t.Errorf("after the first run's cleanup, ip rule shows:\n%s", rules)
	}
	if err := cleanupTwice(ctx, r2); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	w, err := k2.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Ours.LinkMTU = 0
	if got := w.Ours.render(o.Interface); got != "\n" {
		t.Errorf("after Cleanup, wgmesh entries remain:\n%s", got)
	}
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("Cleanup did not restore the namespace (-before +after):\n%s", diff)
	}
}

// cleanupTwice runs the Router's Cleanup twice; the second must succeed as
// a no-op.
func cleanupTwice(ctx context.Context, r Router) error {
	if err := r.Cleanup(ctx); err != nil {
		return err
	}
	return r.Cleanup(ctx)
}

// TestPrivilegedTransitions replays the golden configurations in a seeded
// random order against the kernel and the fake side by side: after every
// step the kernel's wgmesh state, read back through the model, renders
// exactly like the fake's. This pins the fake to the kernel for routes
// changing kind, options changing (table, priority, mark), families
// switching, the filter coming and going and set elements merging.
func TestPrivilegedTransitions(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	host := testHost(DefaultInterface)
	host.link("eth0").MTU = 1400 // as the lab's underlay
	var cs []config
	for _, c := range configs() {
		// The fake's underlay holds 2001:db8::1, the lab's does not.
		if c.name != "mtu-auto-ipv6-underlay" {
			cs = append(cs, c)
		}
	}
	rng := rand.New(rand.NewPCG(7, 7))
	order := append(slices.Clone(cs), cs...)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i, c := range order {
		r, k := l.router(c.o)
		if err := r.Apply(ctx, c.d); err != nil {
			t.Fatalf("step %d %s: kernel Apply: %v", i, c.name, err)
		}
		applyOn(t, host, c)
		got, err := k.observe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := host.observe(c.o)
		if diff := cmp.Diff(want.Ours.render(c.o.Interface), got.Ours.render(c.o.Interface)); diff != "" {
			t.Fatalf("step %d %s: kernel differs from fake (-fake +kernel):\n%s", i, c.name, diff)
		}
	}
}

// TestPrivilegedLargeMesh programs a 5000-node dual-stack mesh (10 000
// routes, 10 000 set ranges), then a resync, and checks the kernel holds
// exactly what the fake does. The durations are logged, not asserted.
func TestPrivilegedLargeMesh(t *testing.T) {
	l := newLab(t)
	o := DefaultOptions()
	r, k := l.router(o)
	ctx := context.Background()
	d := bigMesh(5000)
	start := time.Now()
	if err := r.Apply(ctx, d); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	first := time.Since(start)
	start = time.Now()
	if err := r.Apply(ctx, d); err != nil {
		t.Fatalf("resync Apply: %v", err)
	}
	t.Logf("measured: first Apply of 5000 nodes %v, resync %v", first, time.Since(start))
	// Change a tenth of the mesh: set updates rather than a rebuild.
	d2 := bigMesh(4500)
	if err := r.Apply(ctx, d2); err != nil {
		t.Fatalf("shrinking Apply: %v", err)
	}
	got, err := k.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fake := NewFake(o)
	fake.SetLink("eth0", 1400)
	if err := fake.Apply(ctx, d2); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fake.sys.observe(o).Ours.render(o.Interface), got.Ours.render(o.Interface)); diff != "" {
		t.Errorf("kernel differs from fake (-fake +kernel):\n%s", diff)
	}
	checkDumpOrder(t, got.Ours.Routes, fake.sys.observe(o).Ours.Routes)
}

// checkDumpOrder checks that the kernel dumped wgmesh's routes in
// compareRoutes' order and that the Fake reports them in the same order:
// the Fake's resyncs then take the kernel's path through plan (its
// equal-lists shortcut), and its benchmarks measure what a host does.
func checkDumpOrder(t *testing.T, kernel, fake []route) {
	t.Helper()
	for i := 1; i < len(kernel); i++ {
		if a, b := kernel[i-1], kernel[i]; compareRoutes(a, b) >= 0 {
			t.Fatalf("the kernel dumped route %d (%s) before route %d (%s): not compareRoutes' order", i-1, a, i, b)
		}
	}
	if !slices.Equal(kernel, fake) {
		t.Errorf("the Fake does not report the kernel's routes in the kernel's order:\nkernel %v\nfake   %v", kernel, fake)
	}
}

// TestPrivilegedIngressDropPerRuleCounters runs the strict filter the way a
// kernel without CONFIG_NFT_OBJREF gets it (forced here: this kernel has
// objref): the guard rules count per rule, still drop, the drop count comes
// from those counters, Status warns, and a second Apply finds the table
// current (no rebuild: the rule handles stay).
func TestPrivilegedIngressDropPerRuleCounters(t *testing.T) {
	l := newLab(t)
	r, k := l.router(DefaultOptions())
	k.noObjref.Store(true)
	if err := r.Apply(context.Background(), labDesired()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	list := func() string {
		return l.run("ip", "netns", "exec", l.ns, "nft", "-a", "list", "chain", "inet", "wgmesh_wgmesh0", nftChainIngress)
	}
	before := list()
	if strings.Contains(before, "counter name") || !strings.Contains(before, "counter packets 0") || strings.Count(before, " drop") < 2 {
		t.Fatalf("want guard rules with per-rule counters that drop:\n%s", before)
	}
	if err := exec.Command("ip", "netns", "exec", l.peer, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.2.5", "198.18.0.1").Run(); err == nil {
		t.Errorf("ping from remote pod address 10.244.2.5 over the underlay got answers; want dropped")
	}
	st := r.Status()
	if st.IngressDropped < 3 {
		t.Errorf("IngressDropped = %d, want >= 3 (from the per-rule counters)", st.IngressDropped)
	}
	if err := r.Apply(context.Background(), labDesired()); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	st = r.Status()
	if !strings.Contains(strings.Join(st.Warnings, "\n"), "CONFIG_NFT_OBJREF") {
		t.Errorf("Status warnings do not name CONFIG_NFT_OBJREF: %q", st.Warnings)
	}
	if after := list(); counterValues(after) != counterValues(before) {
		t.Errorf("the second Apply rebuilt the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// counterValues blanks counter values, so listings compare by structure and
// handles.
func counterValues(s string) string {
	return regexp.MustCompile(`packets \d+ bytes \d+`).ReplaceAllString(s, "")
}
