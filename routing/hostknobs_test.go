package routing

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wgmesh/wgmesh/mesh"
)

// logTo returns options logging into buf.
func logTo(buf *bytes.Buffer) Options {
	o := DefaultOptions()
	o.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return o
}

// recorder is a system that remembers every op it is asked to carry out.
type recorder struct {
	system
	ops []op
}

func (r *recorder) do(ctx context.Context, o op) error {
	r.ops = append(r.ops, o)
	return r.system.do(ctx, o)
}

// TestNoHostWideKnobs: whatever the configuration, from a fresh host or
// after any other, through Apply and Cleanup, the router only changes the
// tunnel interface, its own rules and routes and its nftables table: no op
// names another interface, and the rendered host holds no sysctl. (The
// kernel system has no op that writes one either.)
func TestNoHostWideKnobs(t *testing.T) {
	ctx := context.Background()
	h := testHost(DefaultInterface)
	var prev Options
	for _, c := range configs() {
		if c.o.Interface != DefaultInterface {
			continue
		}
		if prev.Table != 0 && (prev.Table != c.o.Table || prev.HostTable != c.o.HostTable) {
			// Other tables are another instance's: the operator removes
			// the previous run's entries with its options.
			if err := newRouter(prev, fakeView{h, prev}).Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
		}
		prev = c.o
		rec := &recorder{system: fakeView{h, c.o}}
		r := newRouter(c.o, rec)
		if err := r.Apply(ctx, c.d); err != nil {
			t.Fatalf("%s: Apply: %v", c.name, err)
		}
		if c.name == "dual" {
			if err := r.Cleanup(ctx); err != nil {
				t.Fatalf("%s: Cleanup: %v", c.name, err)
			}
		}
		for _, o := range rec.ops {
			switch o.kind {
			case opSetMTU, opAddAddr, opDelAddr:
				if o.iface != DefaultInterface {
					t.Errorf("%s: %s changes interface %s, not the tunnel", c.name, o, o.iface)
				}
			case opReplaceRoute, opDelRoute:
				if o.route.Protocol != RouteProtocol || (o.route.Dev != "" && o.route.Dev != DefaultInterface) {
					t.Errorf("%s: %s is not a route of ours through the tunnel", c.name, o)
				}
			case opAddRule, opDelRule:
				if !c.o.ownsRule(o.rule) {
					t.Errorf("%s: %s is not a rule of ours", c.name, o)
				}
			case opPutFilter, opUpdateSet, opDelFilter:
			default:
				t.Errorf("%s: unexpected op %s", c.name, o)
			}
		}
		if strings.Contains(h.render(), "sysctl") {
			t.Errorf("%s: the host renders a sysctl:\n%s", c.name, h.render())
		}
		if w := r.Status().Warnings; len(w) != 0 {
			t.Errorf("%s: Status().Warnings = %q, want none", c.name, w)
		}
	}
}

// TestAutoMTUFloor: an automatic MTU below the floor is raised to it, on
// either underlay family, with one warning in Status and the log that says
// how much, why and what to do; with IPv6 off the IPv4 floor applies.
func TestAutoMTUFloor(t *testing.T) {
	for _, c := range []struct {
		name     string
		underlay int
		o        func(*Options)
		want     int
		warn     string
	}{
		{"ipv4-underlay", 1300, nil, 1280,
			"tunnel MTU 1240 (underlay eth0 MTU 1300 − 60) < 1280 needed for IPv6: using 1280, outer packets fragment; raise the underlay MTU or run with --ipv6=false"},
		{"ipv6-underlay", 1300, func(o *Options) { o.UnderlayAddr = addr("2001:db8::1") }, 1280,
			"tunnel MTU 1220 (underlay eth0 MTU 1300 − 80) < 1280 needed for IPv6"},
		{"exactly-1280", 1340, nil, 1280, ""},
		{"ipv6-off", 1300, func(o *Options) { o.IPv6 = false }, 1240, ""},
		{"ipv6-off-tiny", 600, func(o *Options) { o.IPv6 = false }, 576,
			"tunnel MTU 540 (underlay eth0 MTU 600 − 60) < 576 the IPv4 minimum: using 576, outer packets fragment; raise the underlay MTU"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			o := logTo(&logs)
			if c.o != nil {
				c.o(&o)
			}
			f := NewFake(o)
			f.SetLink("eth0", c.underlay)
			for range 3 {
				if err := f.Apply(context.Background(), dual()); err != nil {
					t.Fatalf("Apply: %v", err)
				}
			}
			st := f.Status()
			if st.LinkMTU != c.want || st.PodMTU != c.want || f.sys.link(DefaultInterface).MTU != c.want {
				t.Errorf("LinkMTU %d, PodMTU %d, interface MTU %d; want %d", st.LinkMTU, st.PodMTU, f.sys.link(DefaultInterface).MTU, c.want)
			}
			if c.warn == "" {
				if len(st.Warnings) != 0 {
					t.Errorf("Warnings = %q, want none", st.Warnings)
				}
				return
			}
			if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], c.warn) {
				t.Errorf("Warnings = %q, want one containing %q", st.Warnings, c.warn)
			}
			if n := strings.Count(logs.String(), "< "+fmt.Sprint(c.want)); n != 1 {
				t.Errorf("the warning was logged %d times over 3 Applies, want 1:\n%s", n, logs.String())
			}
			// The cause goes, the warning goes.
			f.SetLink("eth0", 1500)
			if err := f.Apply(context.Background(), dual()); err != nil {
				t.Fatal(err)
			}
			if w := f.Status().Warnings; len(w) != 0 {
				t.Errorf("after raising the underlay MTU, Warnings = %q", w)
			}
		})
	}
}

// podHost returns a Fake whose node runs pods the ways CNIs wire them: a
// bridge cni0 holding the pod gateway addresses with two veths enslaved,
// Calico-style cali* interfaces with /32 routes, and interfaces that do not
// face the local pods (a VXLAN device routing the whole cluster range, a
// second NIC, a veth of another bridge).
func podHost(o Options, mtus map[string]int) *Fake {
	f := NewFake(o)
	h := f.sys
	for _, l := range []link{
		{Name: "cni0", Addrs: []netip.Prefix{pfx("10.244.1.1/24"), pfx("fd00:10:244:1::1/64")}},
		{Name: "veth1", Master: "cni0"},
		{Name: "veth2", Master: "cni0"},
		{Name: "cali1", Addrs: []netip.Prefix{pfx("fe80::ecee:eeff:feee:eeee/64")}},
		{Name: "cali2"},
		{Name: "flannel.1", Addrs: []netip.Prefix{pfx("10.244.1.0/32")}},
		{Name: "eth1", Addrs: []netip.Prefix{pfx("192.168.7.1/24")}},
		{Name: "docker0", Addrs: []netip.Prefix{pfx("172.17.0.1/16")}},
		{Name: "vethd", Master: "docker0"},
	} {
		l.MTU = mtus[l.Name]
		if l.MTU == 0 {
			l.MTU = 1280
		}
		h.links = append(h.links, l)
	}
	main := func(dst, dev string) route {
		r := route{Table: unix.RT_TABLE_MAIN, Dst: pfx(dst), Type: typeUnicast, Dev: dev, Protocol: unix.RTPROT_BOOT}
		if r.family() == v6 {
			r.Metric = 1024
		}
		return r
	}
	h.addRoutes(
		main("10.244.1.0/24", "cni0"), main("fd00:10:244:1::/64", "cni0"),
		main("10.244.1.7/32", "cali1"), main("fd00:10:244:1::7/128", "cali2"),
		main("10.244.0.0/16", "flannel.1"), main("192.168.7.0/24", "eth1"), main("172.17.0.0/16", "docker0"),
	)
	return f
}

// withPods is dual() with the local node's own pod CIDRs, as Derive
// fills them.
func withPods() mesh.Desired {
	d := dual()
	d.PodSources = []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}
	return d
}

// TestPodMTUWarning: interfaces facing the local pods (bridge, its veths,
// interfaces routed a part of an own pod CIDR) whose MTU exceeds the Pod
// MTU are named with their MTUs in one warning; others are not, however
// large their MTU; the warning goes when they fit.
func TestPodMTUWarning(t *testing.T) {
	ctx := context.Background()
	o := DefaultOptions() // eth0 1500: Pod MTU 1440
	big := map[string]int{"cni0": 1500, "veth1": 1500, "veth2": 1440, "cali1": 1450, "cali2": 9000,
		"flannel.1": 9000, "eth1": 9000, "docker0": 9000, "vethd": 9000}
	f := podHost(o, big)
	if got := o.podInterfaces(withPods().PodSources, f.sys.observe(o)); fmt.Sprint(got) != "[cali1 cali2 cni0 veth1 veth2]" {
		t.Errorf("pod interfaces = %v, want [cali1 cali2 cni0 veth1 veth2]", got)
	}
	if err := f.Apply(ctx, withPods()); err != nil {
		t.Fatal(err)
	}
	w := f.Status().Warnings
	want := "pod interface MTU above Pod MTU 1440: cali1 (MTU 1450), cali2 (MTU 9000), cni0 (MTU 1500), veth1 (MTU 1500) " +
		"carry the pod CIDRs 10.244.1.0/24, fd00:10:244:1::/64; pods' full-sized packets to other nodes do not fit the tunnel " +
		"and are lost where ICMP is filtered (TCP stalls); set the CNI's MTU to 1440 or less"
	if len(w) != 1 || w[0] != want {
		t.Errorf("Warnings = %q,\nwant [%q]", w, want)
	}
	// Without own pod CIDRs (a node missing from its source) nothing is
	// known to face pods.
	if err := f.Apply(ctx, dual()); err != nil {
		t.Fatal(err)
	}
	if w := f.Status().Warnings; len(w) != 0 {
		t.Errorf("without own pod CIDRs, Warnings = %q", w)
	}
	// The CNI's MTU fixed: no warning.
	for _, n := range []string{"cni0", "veth1", "cali1", "cali2"} {
		f.SetLink(n, 1440)
	}
	if err := f.Apply(ctx, withPods()); err != nil {
		t.Fatal(err)
	}
	if w := f.Status().Warnings; len(w) != 0 {
		t.Errorf("with every pod interface at Pod MTU, Warnings = %q", w)
	}
}

// TestPodMTUWarningMany: a node with many pods gets one warning naming a
// few interfaces and counting the rest.
func TestPodMTUWarningMany(t *testing.T) {
	o := DefaultOptions()
	f := podHost(o, map[string]int{"cni0": 1500})
	for i := range 20 {
		f.sys.links = append(f.sys.links, link{Name: fmt.Sprintf("vethp%02d", i), MTU: 1500, Master: "cni0"})
	}
	if err := f.Apply(context.Background(), withPods()); err != nil {
		t.Fatal(err)
	}
	w := f.Status().Warnings
	if len(w) != 1 || !strings.Contains(w[0], "cni0 (MTU 1500), vethp00 (MTU 1500)") || !strings.Contains(w[0], "and 13 more") {
		t.Errorf("Warnings = %q, want one naming cni0, vethp00... and 13 more", w)
	}
}
