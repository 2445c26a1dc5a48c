package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestAliasRoundTrip(t *testing.T) {
	p := Params{Table: 51820, HostTable: 51821, Priority: 99, FwMark: 0x2000, ListenPort: 51820}
	a := p.Alias()
	if a != "wgmesh table=51820 hosttable=51821 pref=99 mark=0x2000 port=51820" {
		t.Fatalf("Alias() = %q", a)
	}
	q, ours := ParseAlias(a)
	if !ours || q != p {
		t.Fatalf("ParseAlias(%q) = %+v, %v; want %+v, true", a, q, ours, p)
	}
}

func TestParseAlias(t *testing.T) {
	for _, c := range []struct {
		alias string
		want  Params
		ours  bool
	}{
		{"wgmesh", Params{}, true}, // written by versions before instances
		{"  wgmesh  ", Params{}, true},
		{"", Params{}, false},
		{"wgmesh0", Params{}, false},
		{"flannel wgmesh table=1", Params{}, false},
		{"wgmesh table=51821 pref=98 mark=0x40000 port=51821", Params{Table: 51821, Priority: 98, FwMark: 0x40000, ListenPort: 51821}, true},
		{"wgmesh port=51820 future=yes table=7 junk", Params{Table: 7, ListenPort: 51820}, true},
		{"wgmesh table=254 pref=0 port=70000 mark=zz", Params{}, true},
		{"wgmesh table=5 table=x", Params{}, true}, // the last occurrence wins, even when invalid
		{"wgmesh mark=131072", Params{FwMark: 0x20000}, true},
		{"wgmesh hosttable=51831 hosttable=255", Params{}, true},
		{"wgmesh table=51830 hosttable=51831", Params{Table: 51830, HostTable: 51831}, true},
	} {
		got, ours := ParseAlias(c.alias)
		if got != c.want || ours != c.ours {
			t.Errorf("ParseAlias(%q) = %+v, %v; want %+v, %v", c.alias, got, ours, c.want, c.ours)
		}
	}
}

func FuzzParseAlias(f *testing.F) {
	for _, s := range []string{"wgmesh", "wgmesh table=51820 pref=99 mark=0x20000 port=51820", "wgmesh table=-1 port=0x10", "x", "wgmesh =  = a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, ours := ParseAlias(s)
		if !ours {
			if p != (Params{}) {
				t.Fatalf("not ours but params %+v", p)
			}
			return
		}
		if p.Table < 0 || (p.Table >= 253 && p.Table <= 255) || p.Priority < 0 || p.Priority > 32765 || p.ListenPort < 0 || p.ListenPort > 65535 {
			t.Fatalf("ParseAlias(%q) = %+v: out of range", s, p)
		}
		// What is known survives a round trip through Alias.
		q, ours := ParseAlias(p.Alias())
		if !ours || q != p {
			t.Fatalf("round trip of %+v via %q = %+v, %v", p, p.Alias(), q, ours)
		}
	})
}

// fakeHost is a host with the given links and live WireGuard ports.
func fakeHost(links []linkInfo, ports map[string]int, running map[string]int) host {
	return host{
		links: func() ([]linkInfo, error) { return links, nil },
		wgPort: func(name string) (int, bool) {
			p, ok := ports[name]
			return p, ok
		},
		holder: func(iface string) (int, bool) {
			pid, ok := running[iface]
			return pid, ok
		},
	}
}

func TestCheck(t *testing.T) {
	me := Params{Interface: "wgmesh1", Table: 51821, Priority: 98, FwMark: 0x40000, ListenPort: 51821}
	other := Params{Table: 51820, Priority: 99, FwMark: 0x20000, ListenPort: 51820}
	otherHost := Params{Table: 51830, HostTable: 51831, ListenPort: 51830}
	links := []linkInfo{
		{Name: "lo", Kind: "device"},
		{Name: "eth0", Kind: "veth"},
		{Name: "wgmesh0", Kind: "tuntap", Alias: other.Alias()},
		{Name: "wgmesh1", Kind: "tuntap", Alias: "wgmesh table=51821 port=51821"}, // our own, from a previous run
		{Name: "dummy0", Kind: "dummy", Alias: "wgmesh table=51821 port=51821"},   // not a WireGuard kind
	}
	for _, c := range []struct {
		name    string
		p       Params
		links   []linkInfo
		ports   map[string]int
		running map[string]int
		want    []string // substrings of the error; none: no clash
	}{
		{name: "different table and port", p: me, links: links, ports: map[string]int{"wgmesh0": 51820}},
		// The agent's default port (cmd/wgmesh defaultListenPort) next to
		// Flannel's or Calico's WireGuard on 51820 (IPv4) and 51821 (IPv6).
		{name: "default port next to the CNIs' 51820 and 51821", p: Params{Interface: "wgmesh0", Table: 51820, ListenPort: 51822},
			links: []linkInfo{{Name: "flannel-wg", Kind: "wireguard"}, {Name: "flannel-wg-v6", Kind: "wireguard"}},
			ports: map[string]int{"flannel-wg": 51820, "flannel-wg-v6": 51821}},
		{name: "default port taken", p: Params{Interface: "wgmesh0", Table: 51820, ListenPort: 51822},
			links: []linkInfo{{Name: "wg0", Kind: "wireguard"}}, ports: map[string]int{"wg0": 51822},
			want: []string{"listen port 51822 is used by WireGuard interface wg0 (not wgmesh's): pick another --listen-port"}},
		{name: "same table", p: Params{Interface: "wgmesh1", Table: 51820, ListenPort: 51821}, links: links,
			running: map[string]int{"wgmesh0": 4242},
			want:    []string{"route table 51820 is used by wgmesh instance wgmesh0 (agent pid 4242): pick another --route-table"}},
		{name: "same port, agent stopped", p: Params{Interface: "wgmesh1", Table: 51821, ListenPort: 51820}, links: links,
			want: []string{"listen port 51820 is used by wgmesh instance wgmesh0 (no agent running; `wgmesh cleanup --interface wgmesh0` with its flags removes it): pick another --listen-port"}},
		{name: "live port wins over the alias", p: me, links: links, ports: map[string]int{"wgmesh0": 51821},
			want: []string{"listen port 51821 is used by wgmesh instance wgmesh0"}},
		{name: "foreign kernel WireGuard", p: Params{Interface: "wgmesh0", Table: 51820, ListenPort: 51820},
			links: []linkInfo{{Name: "flannel-wg", Kind: "wireguard"}, {Name: "wgmesh0", Kind: "wireguard", Alias: "wgmesh"}},
			ports: map[string]int{"flannel-wg": 51820, "wgmesh0": 51820},
			want:  []string{"listen port 51820 is used by WireGuard interface flannel-wg (not wgmesh's): pick another --listen-port"}},
		{name: "foreign userspace WireGuard", p: Params{Interface: "wgmesh0", Table: 51820, ListenPort: 51820},
			links: []linkInfo{{Name: "wg0", Kind: "tuntap"}}, ports: map[string]int{"wg0": 51820},
			want: []string{"WireGuard interface wg0 (not wgmesh's)"}},
		{name: "foreign TUN that is no WireGuard", p: Params{Interface: "wgmesh0", Table: 51820, ListenPort: 51820},
			links: []linkInfo{{Name: "tun0", Kind: "tuntap", Alias: "openvpn"}}},
		{name: "old alias, port read live", p: Params{Interface: "wgmesh1", Table: 51820, ListenPort: 51820},
			links: []linkInfo{{Name: "wgmesh0", Kind: "tuntap", Alias: "wgmesh"}}, ports: map[string]int{"wgmesh0": 51820},
			want: []string{"listen port 51820 is used by wgmesh instance wgmesh0"}},
		{name: "our route table is another's host table", p: Params{Interface: "wgmesh1", Table: 51831, HostTable: 51840, ListenPort: 51821},
			links: []linkInfo{{Name: "wgmesh2", Kind: "tuntap", Alias: otherHost.Alias()}},
			want:  []string{"route table 51831 is used by wgmesh instance wgmesh2", "pick another --route-table"}},
		{name: "our host table is another's route table", p: Params{Interface: "wgmesh1", Table: 51829, HostTable: 51830, ListenPort: 51821},
			links: []linkInfo{{Name: "wgmesh2", Kind: "tuntap", Alias: otherHost.Alias()}},
			want:  []string{"route table 51830 is used by wgmesh instance wgmesh2", "pick another --host-route-table"}},
		{name: "both", p: Params{Interface: "wgmesh1", Table: 51820, ListenPort: 51820}, links: links,
			want: []string{"route table 51820", "listen port 51820"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := fakeHost(c.links, c.ports, c.running).check(c.p)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("check: %v, want no clash", err)
				}
				return
			}
			if !errors.Is(err, ErrClash) {
				t.Fatalf("check: %v, want a clash", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("check: %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCheckListError(t *testing.T) {
	h := host{links: func() ([]linkInfo, error) { return nil, errors.New("netlink says no") }}
	if err := h.check(Params{Interface: "x"}); err == nil || !strings.Contains(err.Error(), "netlink says no") {
		t.Fatalf("check = %v, want the list error", err)
	}
}

// The lock lives in the test process's network namespace; the name is
// unique per test run.
func TestLock(t *testing.T) {
	iface := fmt.Sprintf("t%d", os.Getpid()%1000000)
	if _, ok := Holder(iface); ok {
		t.Fatalf("lock %s held before the test", iface)
	}
	l, err := Acquire(iface)
	if err != nil {
		t.Fatal(err)
	}
	pid, ok := Holder(iface)
	if !ok || pid != os.Getpid() {
		t.Fatalf("Holder = %d, %v; want %d, true", pid, ok, os.Getpid())
	}
	_, err = Acquire(iface)
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second Acquire = %v, want ErrHeld naming pid %d", err, os.Getpid())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, ok := Holder(iface); ok {
		t.Fatal("lock still held after Close")
	}
	l, err = Acquire(iface)
	if err != nil {
		t.Fatalf("Acquire after Close: %v", err)
	}
	l.Close()
}

func TestStartLockWaits(t *testing.T) {
	a, err := acquireStart(context.Background(), startWait)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := acquireStart(ctx, startWait); err == nil {
		t.Fatal("second start lock taken while the first is held")
	}
	a.Close()
	b, err := acquireStart(context.Background(), startWait)
	if err != nil {
		t.Fatalf("start lock after release: %v", err)
	}
	b.Close()
}
