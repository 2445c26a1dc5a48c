package device

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// testKey returns a distinct, deterministic key for n.
func testKey(n byte) mesh.Key {
	var k mesh.Key
	for i := range k {
		k[i] = n
	}
	return k
}

var (
	privA   = testKey(1)
	privB   = testKey(2)
	peerX   = testKey(10)
	peerY   = testKey(11)
	peerZ   = testKey(12)
	epX     = netip.MustParseAddrPort("198.18.0.10:51820")
	epY     = netip.MustParseAddrPort("198.18.0.11:51820")
	epY2    = netip.MustParseAddrPort("198.18.0.99:51820")
	keep25  = 25 * time.Second
	dur25   = 25 * time.Second
	durZero = time.Duration(0)
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func nets(ss ...string) []net.IPNet { return ipNets(pfx(ss...)) }

func wgk(k mesh.Key) wgtypes.Key { return wgtypes.Key(k) }

func ptr[T any](v T) *T { return &v }

// curPeer builds a peer as wgctrl reports it.
func curPeer(k mesh.Key, ep netip.AddrPort, ka time.Duration, allowed ...string) wgtypes.Peer {
	p := wgtypes.Peer{PublicKey: wgk(k), PersistentKeepaliveInterval: ka, AllowedIPs: nets(allowed...)}
	if ep.IsValid() {
		p.Endpoint = udpAddr(ep)
	}
	return p
}

func wantPeerOf(node string, k mesh.Key, ep netip.AddrPort, ka time.Duration, allowed ...string) mesh.Peer {
	return mesh.Peer{Node: node, PublicKey: k, Endpoint: ep, Keepalive: ka, AllowedIPs: pfx(allowed...)}
}

// baseDevice is a configured device with peers X and Y.
func baseDevice() *wgtypes.Device {
	return &wgtypes.Device{
		PrivateKey:   wgk(privA),
		ListenPort:   51820,
		FirewallMark: 0x20000,
		Peers: []wgtypes.Peer{
			curPeer(peerX, epX, 0, "10.244.1.0/24", "fd00:10:244:1::/64"),
			curPeer(peerY, epY, keep25, "10.244.2.0/24"),
		},
	}
}

func baseConfig() mesh.DeviceConfig {
	return mesh.DeviceConfig{
		PrivateKey: privA,
		ListenPort: 51820,
		FwMark:     0x20000,
		Peers: []mesh.Peer{
			wantPeerOf("x", peerX, epX, 0, "10.244.1.0/24", "fd00:10:244:1::/64"),
			wantPeerOf("y", peerY, epY, keep25, "10.244.2.0/24"),
		},
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name   string
		cur    func() *wgtypes.Device
		want   func() mesh.DeviceConfig
		sent   map[wgtypes.Key]netip.AddrPort
		expect plan
	}{
		{
			name: "roamed endpoint is kept when the desired one was already written",
			cur: func() *wgtypes.Device {
				d := baseDevice()
				d.Peers[1].Endpoint = udpAddr(epY2) // roamed behind NAT
				return d
			},
			want:   baseConfig,
			sent:   map[wgtypes.Key]netip.AddrPort{wgk(peerY): epY},
			expect: plan{Summary: summary{Unchanged: 2}},
		},
		{
			name: "roamed endpoint is replaced when the desired one changes",
			cur: func() *wgtypes.Device {
				d := baseDevice()
				d.Peers[1].Endpoint = udpAddr(epY2)
				return d
			},
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[1].Endpoint = epX
				return c
			},
			sent: map[wgtypes.Key]netip.AddrPort{wgk(peerY): epY},
			expect: plan{
				Grant:   &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), UpdateOnly: true, Endpoint: udpAddr(epX)}}},
				Summary: summary{Updated: 1, Unchanged: 1},
			},
		},
		{
			name:   "unchanged configuration sends nothing",
			cur:    baseDevice,
			want:   baseConfig,
			expect: plan{Summary: summary{Unchanged: 2}},
		},
		{
			name: "unchanged in another representation sends nothing",
			cur: func() *wgtypes.Device {
				d := baseDevice()
				// wgctrl may report IPv4 in 16-byte form, peers and
				// prefixes in any order, endpoints as IPv4-mapped.
				d.Peers[0], d.Peers[1] = d.Peers[1], d.Peers[0]
				d.Peers[1].AllowedIPs = []net.IPNet{
					{IP: net.ParseIP("fd00:10:244:1::"), Mask: net.CIDRMask(64, 128)},
					{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(24, 32)},
				}
				d.Peers[1].Endpoint = &net.UDPAddr{IP: net.ParseIP("198.18.0.10"), Port: 51820}
				return d
			},
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[0], c.Peers[1] = c.Peers[1], c.Peers[0]
				c.Peers[1].AllowedIPs = pfx("fd00:10:244:1::/64", "10.244.1.0/24")
				return c
			},
			expect: plan{Summary: summary{Unchanged: 2}},
		},
		{
			name: "empty device gets everything",
			cur:  func() *wgtypes.Device { return &wgtypes.Device{} },
			want: baseConfig,
			expect: plan{
				Grant: &wgtypes.Config{
					PrivateKey:   ptr(wgk(privA)),
					ListenPort:   ptr(51820),
					FirewallMark: ptr(0x20000),
					Peers: []wgtypes.PeerConfig{
						{PublicKey: wgk(peerX), Endpoint: udpAddr(epX), ReplaceAllowedIPs: true, AllowedIPs: nets("10.244.1.0/24", "fd00:10:244:1::/64")},
						{PublicKey: wgk(peerY), Endpoint: udpAddr(epY), PersistentKeepaliveInterval: &dur25, ReplaceAllowedIPs: true, AllowedIPs: nets("10.244.2.0/24")},
					},
				},
				Summary: summary{Added: 2, PrivateKey: true, ListenPort: true, FwMark: true},
			},
		},
		{
			name: "nil current state is an empty device",
			cur:  func() *wgtypes.Device { return nil },
			want: func() mesh.DeviceConfig { return mesh.DeviceConfig{PrivateKey: privA} },
			expect: plan{
				Grant:   &wgtypes.Config{PrivateKey: ptr(wgk(privA))},
				Summary: summary{PrivateKey: true},
			},
		},
		{
			name:   "listen port 0 keeps the current port",
			cur:    baseDevice,
			want:   func() mesh.DeviceConfig { c := baseConfig(); c.ListenPort = 0; return c },
			expect: plan{Summary: summary{Unchanged: 2}},
		},
		{
			name: "only the fwmark changes",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.FwMark = 0; return c },
			expect: plan{
				Grant:   &wgtypes.Config{FirewallMark: ptr(0)},
				Summary: summary{Unchanged: 2, FwMark: true},
			},
		},
		{
			name: "key rotation sends only the key",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.PrivateKey = privB; return c },
			expect: plan{
				Grant:   &wgtypes.Config{PrivateKey: ptr(wgk(privB))},
				Summary: summary{Unchanged: 2, PrivateKey: true},
			},
		},
		{
			name: "removed peer is withdrawn",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.Peers = c.Peers[:1]; return c },
			expect: plan{
				Withdraw: &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), Remove: true}}},
				Summary:  summary{Removed: 1, Unchanged: 1},
			},
		},
		{
			name: "endpoint change touches only that field",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.Peers[1].Endpoint = epY2; return c },
			expect: plan{
				Grant:   &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), UpdateOnly: true, Endpoint: udpAddr(epY2)}}},
				Summary: summary{Updated: 1, Unchanged: 1},
			},
		},
		{
			name:   "no desired endpoint keeps the roamed one",
			cur:    baseDevice,
			want:   func() mesh.DeviceConfig { c := baseConfig(); c.Peers[1].Endpoint = netip.AddrPort{}; return c },
			expect: plan{Summary: summary{Unchanged: 2}},
		},
		{
			name: "keepalive switched off",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.Peers[1].Keepalive = 0; return c },
			expect: plan{
				Grant:   &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), UpdateOnly: true, PersistentKeepaliveInterval: &durZero}}},
				Summary: summary{Updated: 1, Unchanged: 1},
			},
		},
		{
			name: "gained prefix is added without replacing",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[1].AllowedIPs = pfx("10.244.2.0/24", "10.244.3.0/24")
				return c
			},
			expect: plan{
				Grant:   &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), UpdateOnly: true, AllowedIPs: nets("10.244.3.0/24")}}},
				Summary: summary{Updated: 1, Unchanged: 1},
			},
		},
		{
			name: "lost prefix is withdrawn with the kept set",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig { c := baseConfig(); c.Peers[0].AllowedIPs = pfx("10.244.1.0/24"); return c },
			expect: plan{
				Withdraw: &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerX), UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: nets("10.244.1.0/24")}}},
				Summary:  summary{Updated: 1, Unchanged: 1},
			},
		},
		{
			name: "prefix moves: withdrawn from old owner, then granted to new",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[0].AllowedIPs = pfx("fd00:10:244:1::/64")
				c.Peers[1].AllowedIPs = pfx("10.244.1.0/24", "10.244.2.0/24")
				return c
			},
			expect: plan{
				Withdraw: &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerX), UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: nets("fd00:10:244:1::/64")}}},
				Grant:    &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), UpdateOnly: true, AllowedIPs: nets("10.244.1.0/24")}}},
				Summary:  summary{Updated: 2},
			},
		},
		{
			name: "prefix moves from a removed peer to a new one",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[1] = wantPeerOf("z", peerZ, epY, 0, "10.244.2.0/24")
				return c
			},
			expect: plan{
				Withdraw: &wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgk(peerY), Remove: true}}},
				Grant: &wgtypes.Config{Peers: []wgtypes.PeerConfig{
					{PublicKey: wgk(peerZ), Endpoint: udpAddr(epY), ReplaceAllowedIPs: true, AllowedIPs: nets("10.244.2.0/24")},
				}},
				Summary: summary{Added: 1, Removed: 1, Unchanged: 1},
			},
		},
		{
			name: "swap between two peers",
			cur:  baseDevice,
			want: func() mesh.DeviceConfig {
				c := baseConfig()
				c.Peers[0].AllowedIPs = pfx("10.244.2.0/24", "fd00:10:244:1::/64")
				c.Peers[1].AllowedIPs = pfx("10.244.1.0/24")
				return c
			},
			expect: plan{
				Withdraw: &wgtypes.Config{Peers: []wgtypes.PeerConfig{
					{PublicKey: wgk(peerX), UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: nets("fd00:10:244:1::/64")},
					{PublicKey: wgk(peerY), UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{}},
				}},
				Grant: &wgtypes.Config{Peers: []wgtypes.PeerConfig{
					{PublicKey: wgk(peerX), UpdateOnly: true, AllowedIPs: nets("10.244.2.0/24")},
					{PublicKey: wgk(peerY), UpdateOnly: true, AllowedIPs: nets("10.244.1.0/24")},
				}},
				Summary: summary{Updated: 2},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := diff(tc.cur(), tc.want(), tc.sent)
			if err != nil {
				t.Fatalf("diff: %v", err)
			}
			if d := cmp.Diff(tc.expect, got, cmp.Comparer(func(a, b net.IPNet) bool { return a.String() == b.String() })); d != "" {
				t.Errorf("plan mismatch (-want +got):\n%s", d)
			}
			if tc.sent != nil {
				return // the expected state then keeps the roamed endpoint
			}
			// Applying the plan must reach the desired state.
			state := simFromDevice(tc.cur())
			state.apply(got.Withdraw, nil)
			state.apply(got.Grant, nil)
			if d := cmp.Diff(expectedState(tc.cur(), tc.want()), state); d != "" {
				t.Errorf("state after plan differs from desired (-want +got):\n%s", d)
			}
		})
	}
}

func TestDiffRejects(t *testing.T) {
	own := privA.PublicKey()
	tests := []struct {
		name string
		edit func(*mesh.DeviceConfig)
		want string
	}{
		{"no private key", func(c *mesh.DeviceConfig) { c.PrivateKey = mesh.Key{} }, "private key is empty"},
		{"bad port", func(c *mesh.DeviceConfig) { c.ListenPort = 70000 }, "listen port 70000"},
		{"zero peer key", func(c *mesh.DeviceConfig) { c.Peers[0].PublicKey = mesh.Key{} }, "peer x: public key is empty"},
		{"own key as peer", func(c *mesh.DeviceConfig) { c.Peers[0].PublicKey = own }, "own public key"},
		{"duplicate peer", func(c *mesh.DeviceConfig) { c.Peers[1].PublicKey = peerX }, "peers x and y have the same public key"},
		{"prefix claimed twice", func(c *mesh.DeviceConfig) { c.Peers[1].AllowedIPs = pfx("10.244.1.7/24") }, "10.244.1.0/24 is claimed by peers x and y"},
		{"invalid prefix", func(c *mesh.DeviceConfig) { c.Peers[1].AllowedIPs = []netip.Prefix{{}} }, "invalid allowed IP"},
		{"keepalive too long", func(c *mesh.DeviceConfig) { c.Peers[1].Keepalive = 70000 * time.Second }, "keepalive"},
		{"endpoint without port", func(c *mesh.DeviceConfig) {
			c.Peers[1].Endpoint = netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), 0)
		}, "port 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig()
			tc.edit(&c)
			_, err := diff(baseDevice(), c, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("diff error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), privA.String()) {
				t.Fatalf("error leaks the private key: %v", err)
			}
		})
	}
}

func TestPrefixFromIPNet(t *testing.T) {
	tests := []struct {
		in   net.IPNet
		want string
		ok   bool
	}{
		{net.IPNet{IP: net.IP{10, 244, 1, 0}, Mask: net.CIDRMask(24, 32)}, "10.244.1.0/24", true},
		{net.IPNet{IP: net.ParseIP("10.244.1.9"), Mask: net.CIDRMask(24, 32)}, "10.244.1.0/24", true},
		{net.IPNet{IP: net.ParseIP("::ffff:10.244.1.0"), Mask: net.CIDRMask(120, 128)}, "10.244.1.0/24", true},
		{net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(64, 128)}, "fd00::/64", true},
		{net.IPNet{IP: net.IP{10, 0, 0, 1}, Mask: net.CIDRMask(64, 128)}, "", false},
		{net.IPNet{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(24, 32)}, "", false},
		{net.IPNet{IP: net.IP{10, 0, 0, 1}, Mask: net.IPMask{255, 0, 255, 0}}, "", false},
	}
	for _, tc := range tests {
		got, ok := prefixFromIPNet(tc.in)
		if ok != tc.ok || (ok && got.String() != tc.want) {
			t.Errorf("prefixFromIPNet(%v) = %v, %v; want %s, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// sim models the WireGuard state a plan acts on, with the semantics both
// implementations share: one allowed-IPs table mapping each prefix to one
// peer, where adding a prefix to a peer takes it from its previous owner.
type sim struct {
	Key    wgtypes.Key
	Port   int
	Mark   int
	Peers  map[wgtypes.Key]simPeer
	Routes map[netip.Prefix]wgtypes.Key
}

type simPeer struct {
	Endpoint  string
	Keepalive time.Duration
}

func simFromDevice(d *wgtypes.Device) *sim {
	s := &sim{Peers: map[wgtypes.Key]simPeer{}, Routes: map[netip.Prefix]wgtypes.Key{}}
	if d == nil {
		return s
	}
	s.Key, s.Port, s.Mark = d.PrivateKey, d.ListenPort, d.FirewallMark
	for _, p := range d.Peers {
		sp := simPeer{Keepalive: p.PersistentKeepaliveInterval}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			sp.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		}
		s.Peers[p.PublicKey] = sp
		for _, n := range p.AllowedIPs {
			q, _ := prefixFromIPNet(n)
			s.Routes[q] = p.PublicKey
		}
	}
	return s
}

func simFromConfig(c mesh.DeviceConfig) *sim {
	s := &sim{Key: wgtypes.Key(c.PrivateKey), Port: c.ListenPort, Mark: int(c.FwMark),
		Peers: map[wgtypes.Key]simPeer{}, Routes: map[netip.Prefix]wgtypes.Key{}}
	for _, p := range c.Peers {
		sp := simPeer{Keepalive: p.Keepalive}
		if p.Endpoint.IsValid() {
			sp.Endpoint = p.Endpoint.String()
		}
		s.Peers[wgtypes.Key(p.PublicKey)] = sp
		for _, q := range p.AllowedIPs {
			s.Routes[normPrefix(q)] = wgtypes.Key(p.PublicKey)
		}
	}
	return s
}

// apply executes cfg item by item, calling step after every change to the
// allowed-IPs table, as traffic would observe it.
func (s *sim) apply(cfg *wgtypes.Config, step func()) {
	if cfg == nil {
		return
	}
	if step == nil {
		step = func() {}
	}
	if cfg.PrivateKey != nil {
		s.Key = *cfg.PrivateKey
	}
	if cfg.ListenPort != nil {
		s.Port = *cfg.ListenPort
	}
	if cfg.FirewallMark != nil {
		s.Mark = *cfg.FirewallMark
	}
	for _, pc := range cfg.Peers {
		removeRoutes := func() {
			for q, k := range s.Routes {
				if k == pc.PublicKey {
					delete(s.Routes, q)
					step()
				}
			}
		}
		p, exists := s.Peers[pc.PublicKey]
		if pc.Remove {
			delete(s.Peers, pc.PublicKey)
			removeRoutes()
			continue
		}
		if !exists && pc.UpdateOnly {
			continue
		}
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint.AddrPort().String()
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.Keepalive = *pc.PersistentKeepaliveInterval
		}
		s.Peers[pc.PublicKey] = p
		if pc.ReplaceAllowedIPs {
			removeRoutes()
		}
		for _, n := range pc.AllowedIPs {
			q, _ := prefixFromIPNet(n)
			s.Routes[q] = pc.PublicKey
			step()
		}
	}
}

// checkTransition applies p to from and verifies the ordering promise at
// every intermediate state: during withdraw the table only shrinks within
// the old one; after it, the table is within old ∩ new; during grant every
// entry is one of the new configuration. It returns the final state.
func checkTransition(t testing.TB, from *wgtypes.Device, to mesh.DeviceConfig, p plan) *sim {
	t.Helper()
	old := simFromDevice(from)
	want := simFromConfig(to)
	s := simFromDevice(from)
	inOld := func(q netip.Prefix, k wgtypes.Key) bool { o, ok := old.Routes[q]; return ok && o == k }
	inNew := func(q netip.Prefix, k wgtypes.Key) bool { n, ok := want.Routes[q]; return ok && n == k }
	s.apply(p.Withdraw, func() {
		for q, k := range s.Routes {
			if !inOld(q, k) {
				t.Fatalf("withdraw phase routes %v to %v, which the old state did not", q, k)
			}
		}
	})
	for q, k := range s.Routes {
		if !inOld(q, k) || !inNew(q, k) {
			t.Fatalf("after withdraw %v routes to %v, which is not in old ∩ new", q, k)
		}
	}
	s.apply(p.Grant, func() {
		for q, k := range s.Routes {
			if !inNew(q, k) {
				t.Fatalf("grant phase routes %v to %v, which the new state does not", q, k)
			}
		}
	})
	return s
}

// randomScenario derives a current device and a desired configuration from
// r: a handful of peers and prefixes shuffled between them.
func randomScenario(r *rand.Rand) (*wgtypes.Device, mesh.DeviceConfig) {
	prefixes := pfx("10.244.0.0/24", "10.244.1.0/24", "10.244.1.0/25", "10.244.2.0/24",
		"10.244.3.0/24", "fd00:10:244:1::/64", "fd00:10:244:2::/64", "198.18.0.5/32")
	keys := []mesh.Key{testKey(10), testKey(11), testKey(12), testKey(13), testKey(14)}
	eps := []netip.AddrPort{{}, epX, epY, epY2}
	kas := []time.Duration{0, keep25}
	assign := func() map[mesh.Key][]netip.Prefix {
		m := map[mesh.Key][]netip.Prefix{}
		for _, k := range keys {
			if r.IntN(4) > 0 {
				m[k] = nil
			}
		}
		for _, q := range prefixes {
			if len(m) == 0 || r.IntN(5) == 0 {
				continue
			}
			owner := keys[r.IntN(len(keys))]
			if _, ok := m[owner]; ok {
				m[owner] = append(m[owner], q)
			}
		}
		return m
	}
	cur := &wgtypes.Device{PrivateKey: wgk(privA), ListenPort: 51820, FirewallMark: r.IntN(2)}
	for k, qs := range assign() {
		p := wgtypes.Peer{PublicKey: wgk(k), PersistentKeepaliveInterval: kas[r.IntN(2)], AllowedIPs: ipNets(qs)}
		if ep := eps[r.IntN(len(eps))]; ep.IsValid() {
			p.Endpoint = udpAddr(ep)
		}
		cur.Peers = append(cur.Peers, p)
	}
	want := mesh.DeviceConfig{PrivateKey: []mesh.Key{privA, privB}[r.IntN(2)], ListenPort: []int{0, 51820, 51821}[r.IntN(3)], FwMark: uint32(r.IntN(2))}
	for k, qs := range assign() {
		// A desired peer always names an endpoint here so the final
		// state is fully determined (an empty one keeps the current).
		want.Peers = append(want.Peers, mesh.Peer{Node: fmt.Sprint(k[0]), PublicKey: k, Endpoint: eps[1+r.IntN(3)], Keepalive: kas[r.IntN(2)], AllowedIPs: qs})
	}
	return cur, want
}

func checkScenario(t testing.TB, cur *wgtypes.Device, want mesh.DeviceConfig) {
	t.Helper()
	p, err := diff(cur, want, nil)
	if err != nil {
		t.Fatalf("diff: %v", err)
	}
	final := checkTransition(t, cur, want, p)
	expect := expectedState(cur, want)
	if d := cmp.Diff(expect, final); d != "" {
		t.Fatalf("final state differs (-want +got):\n%s", d)
	}
	// Unchanged peers must not be mentioned at all.
	old := simFromDevice(cur)
	for _, cfg := range []*wgtypes.Config{p.Withdraw, p.Grant} {
		if cfg == nil {
			continue
		}
		for _, pc := range cfg.Peers {
			op, inOld := old.Peers[pc.PublicKey]
			np, inNew := expect.Peers[pc.PublicKey]
			if inOld && inNew && op == np && samePeerRoutes(old, expect, pc.PublicKey) {
				t.Fatalf("unchanged peer %v was sent", pc.PublicKey)
			}
		}
	}
	// A second diff against the result is empty.
	again, err := diff(deviceFromSim(final), want, nil)
	if err != nil || !again.empty() {
		t.Fatalf("second diff not empty: %+v, %v", again, err)
	}
}

// expectedState is the state want describes on top of cur: listen port 0
// and an empty endpoint keep what the device has.
func expectedState(cur *wgtypes.Device, want mesh.DeviceConfig) *sim {
	old := simFromDevice(cur)
	s := simFromConfig(want)
	if want.ListenPort == 0 {
		s.Port = old.Port
	}
	for k, p := range s.Peers {
		if p.Endpoint == "" {
			p.Endpoint = old.Peers[k].Endpoint
			s.Peers[k] = p
		}
	}
	return s
}

func samePeerRoutes(a, b *sim, k wgtypes.Key) bool {
	for q, o := range a.Routes {
		if (o == k) != (b.Routes[q] == k) {
			return false
		}
	}
	for q, o := range b.Routes {
		if (o == k) != (a.Routes[q] == k) {
			return false
		}
	}
	return true
}

func deviceFromSim(s *sim) *wgtypes.Device {
	d := &wgtypes.Device{PrivateKey: s.Key, ListenPort: s.Port, FirewallMark: s.Mark}
	for k, p := range s.Peers {
		wp := wgtypes.Peer{PublicKey: k, PersistentKeepaliveInterval: p.Keepalive}
		if p.Endpoint != "" {
			wp.Endpoint = udpAddr(netip.MustParseAddrPort(p.Endpoint))
		}
		for q, o := range s.Routes {
			if o == k {
				wp.AllowedIPs = append(wp.AllowedIPs, ipNets([]netip.Prefix{q})...)
			}
		}
		d.Peers = append(d.Peers, wp)
	}
	return d
}

// TestDiffTransitions replays many random reconfigurations and checks the
// ordering promise, convergence and idempotence for each.
func TestDiffTransitions(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		cur, want := randomScenario(r)
		checkScenario(t, cur, want)
	}
}

// FuzzDiff drives the same checks from fuzzer-chosen seeds.
func FuzzDiff(f *testing.F) {
	for _, s := range []uint64{0, 1, 42, 1 << 40} {
		f.Add(s, s^0xdead)
	}
	f.Fuzz(func(t *testing.T, a, b uint64) {
		cur, want := randomScenario(rand.New(rand.NewPCG(a, b)))
		checkScenario(t, cur, want)
	})
}

// An agent restart: the first configure of the new process finds peer Y
// roamed (behind NAT) with a fresh handshake and keeps that endpoint; a peer
// whose session is dead, or that never handshook, gets its published one.
func TestAdoptedRoams(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	roamed := func(handshake time.Time) *wgtypes.Device {
		d := baseDevice()
		d.Peers[1].Endpoint = udpAddr(epY2)
		d.Peers[1].LastHandshakeTime = handshake
		d.Peers[0].LastHandshakeTime = now.Add(-time.Second) // at its published endpoint
		return d
	}
	for _, tc := range []struct {
		name      string
		handshake time.Time
		keep      bool
	}{
		{"fresh handshake: keep the roamed endpoint", now.Add(-30 * time.Second), true},
		{"dead session: published endpoint", now.Add(-10 * time.Minute), false},
		{"never handshook: published endpoint", time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := roamed(tc.handshake)
			sent := adoptedRoams(cur, baseConfig(), now)
			p, err := diff(cur, baseConfig(), sent)
			if err != nil {
				t.Fatal(err)
			}
			if tc.keep {
				if !p.empty() || len(sent) != 1 || sent[wgk(peerY)] != epY {
					t.Errorf("sent %v, plan %+v: want the roamed endpoint kept, nothing sent", sent, p.Summary)
				}
				return
			}
			if sent != nil || p.Grant == nil || len(p.Grant.Peers) != 1 || p.Grant.Peers[0].Endpoint.String() != epY.String() {
				t.Errorf("sent %v, plan %+v: want peer Y set back to its published endpoint %s", sent, p.Grant, epY)
			}
		})
	}
	if adoptedRoams(nil, baseConfig(), now) != nil || adoptedRoams(&wgtypes.Device{}, baseConfig(), now) != nil {
		t.Error("a fresh device has nothing to keep")
	}
}
