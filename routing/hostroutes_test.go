package routing

import (
	"context"
	"strings"
	"testing"
)

// TestHostRoutesLookup: with host routes, only packets from the own pod
// CIDRs reach the peers' host IPs through the tunnel. The host's own
// packets (unbound, or from its node address: the agent's way to the API
// server and to the peers' endpoints) and the encrypted ones leave through
// the main table, so the agent can always re-learn keys.
func TestHostRoutesLookup(t *testing.T) {
	f := newTestFake(opts(nil))
	if err := f.Apply(context.Background(), hostRoutes()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what, src, dst string
		mark           uint32
		want           string
	}{
		{"pod to a peer's endpoint address", "10.244.1.5", "198.18.0.2", 0, "198.18.0.2/32 dev wgmesh0 table 51821"},
		{"pod to a peer's other host IP", "10.244.1.5", "198.18.0.12", 0, "198.18.0.12/32 dev wgmesh0 table 51821"},
		{"pod to a peer's IPv6 host IP", "fd00:10:244:1::5", "2001:db8::2", 0, "2001:db8::2/128 dev wgmesh0 table 51821"},
		{"pod, with a foreign mark bit", "10.244.1.5", "198.18.0.2", 0x4000, "198.18.0.2/32 dev wgmesh0 table 51821"},
		{"pod to a remote pod", "10.244.1.5", "10.244.2.7", 0, "10.244.2.0/24 dev wgmesh0 table 51820"},
		{"pod to a host that is no peer", "10.244.1.5", "192.0.2.9", 0, "0.0.0.0/0 via 198.18.0.254 dev eth0 table main"},
		{"encrypted packet from a pod address", "10.244.1.5", "198.18.0.2", DefaultFwMark, "198.18.0.0/15 dev eth0 table main"},
		{"host, unbound", "", "198.18.0.2", 0, "198.18.0.0/15 dev eth0 table main"},
		{"host, from its node address", "198.18.0.1", "198.18.0.2", 0, "198.18.0.0/15 dev eth0 table main"},
		{"host, IPv6", "2001:db8::1", "2001:db8::2", 0, "2001:db8::/64 dev eth0 table main"},
		{"host to a remote pod", "198.18.0.1", "10.244.2.7", 0, "10.244.2.0/24 dev wgmesh0 table 51820"},
	} {
		got := f.Lookup(addr(c.dst), c.mark)
		if c.src != "" {
			got = f.LookupFrom(addr(c.src), addr(c.dst), c.mark)
		}
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%s: LookupFrom(%s, %s, %#x) = %q, want prefix %q", c.what, c.src, c.dst, c.mark, got, c.want)
		}
	}
}

// TestHostRoutesRepairAndCleanup: a host rule or route deleted by hand
// comes back; cleanup removes both tables' entries and nothing else.
func TestHostRoutesRepairAndCleanup(t *testing.T) {
	ctx := context.Background()
	f := newTestFake(opts(nil))
	if err := f.Apply(ctx, hostRoutes()); err != nil {
		t.Fatal(err)
	}
	want := f.Render()
	for _, line := range []string{
		"ip rule add pref 98 from 10.244.1.0/24 fwmark 0x0/0x2000 lookup 51821 proto 0x57",
		"ip -6 route add 2001:db8::2/128 dev wgmesh0 table 51821 proto 0x57",
	} {
		if !f.Delete(line) {
			t.Fatalf("Delete(%q) matched nothing in:\n%s", line, want)
		}
	}
	if err := f.Apply(ctx, hostRoutes()); err != nil {
		t.Fatal(err)
	}
	if got := f.Render(); got != want {
		t.Errorf("Apply did not repair the host table:\n%s", got)
	}
	if err := f.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	got := f.Render()
	if strings.Contains(got, "51821") || strings.Contains(got, "table 51820 proto 0x57") || strings.Contains(got, "lookup 51820") {
		t.Errorf("Cleanup left host-table entries:\n%s", got)
	}
	for _, l := range foreignLines() {
		if !strings.HasPrefix(l, "nft") && !strings.Contains(got, l+"\n") {
			t.Errorf("Cleanup removed the foreign %q", l)
		}
	}
}

// TestHostTableOptions: the host table must be a table of its own, and the
// main rule must leave room for the host rules' priority before it.
func TestHostTableOptions(t *testing.T) {
	for _, c := range []struct {
		f    func(*Options)
		want string
	}{
		{func(o *Options) { o.HostTable = o.Table }, "must differ from the route table"},
		{func(o *Options) { o.HostTable = 254 }, "HostTable 254"},
		{func(o *Options) { o.HostTable = 0 }, "HostTable 0"},
		{func(o *Options) { o.Priority = 1 }, "Priority 1: want 2-32765"},
	} {
		err := opts(c.f).Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate: %v, want an error containing %q", err, c.want)
		}
	}
}
