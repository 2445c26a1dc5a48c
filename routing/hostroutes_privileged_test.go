package routing

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

// hostRoutesLabDesired is labDesired with node-1's pod sources and node-2's
// address (its endpoint) as a host route, as Derive makes it.
func hostRoutesLabDesired() mesh.Desired {
	p := netip.MustParsePrefix
	d := labDesired()
	d.PodSources = []netip.Prefix{p("10.244.1.0/24"), p("fd00:10:244:1::/64")}
	d.HostRoutes = []mesh.Route{{Dst: p("198.18.0.2/32"), Kind: mesh.ViaTunnel, Node: "node-2"}}
	return d
}

// TestPrivilegedHostRoutes applies host routes in a namespace: the kernel
// reads back as the fake renders (the `fwmark 0/M` rule included, or every
// resync would churn it), a second Apply changes nothing, and the kernel's
// lookups send only pod-sourced, unmarked packets to node-2's address into
// the tunnel.
func TestPrivilegedHostRoutes(t *testing.T) {
	l := newLab(t)
	o := DefaultOptions()
	r, k := l.router(o)
	ctx := context.Background()
	d := hostRoutesLabDesired()
	if err := r.Apply(ctx, d); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	got, err := k.observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fake := NewFake(o)
	fake.SetLink("eth0", 1400)
	if err := fake.Apply(ctx, d); err != nil {
		t.Fatalf("fake Apply: %v", err)
	}
	want := fake.sys.observe(o)
	t.Logf("kernel state:\n%s", got.Ours.render(o.Interface))
	if diff := cmp.Diff(want.Ours.render(o.Interface), got.Ours.render(o.Interface)); diff != "" {
		t.Errorf("kernel state differs from the fake's (-fake +kernel):\n%s", diff)
	}
	checkDumpOrder(t, got.Ours.Routes, want.Ours.Routes)
	tw, _ := o.target(d, got)
	if ops := plan(o.Interface, got.Ours, tw); len(ops) != 0 {
		t.Errorf("a second Apply would change %v", ops)
	}
	// A pod interface to look forwarded packets up from.
	l.run("ip", "netns", "exec", l.ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.ip("link", "add", "pod0", "type", "veth", "peer", "name", "pod1")
	l.ip("link", "set", "pod0", "up")
	l.ip("link", "set", "pod1", "up")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"198.18.0.2", "from", "10.244.1.7", "iif", "pod0"}, "dev wgmesh0"},
		{[]string{"198.18.0.2", "from", "10.244.1.7", "iif", "pod0", "mark", "0x2000"}, "dev ul0"},
		{[]string{"198.18.0.2"}, "dev ul0"},
		{[]string{"198.18.0.2", "from", "198.18.0.1"}, "dev ul0"},
		{[]string{"10.244.2.5", "from", "198.18.0.1"}, "dev wgmesh0"},
	} {
		out, ok := l.routeGet(c.args...)
		if !ok || !strings.Contains(out, c.want) {
			t.Errorf("ip route get %s = %q (ok %v), want %q", strings.Join(c.args, " "), out, ok, c.want)
		}
	}
	if err := r.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if rules := l.ip("rule"); strings.Contains(rules, "51821") {
		t.Errorf("cleanup left the host rule:\n%s", rules)
	}
	if routes := l.ip("route", "show", "table", "51821"); strings.TrimSpace(routes) != "" {
		t.Errorf("cleanup left host routes:\n%s", routes)
	}
}
