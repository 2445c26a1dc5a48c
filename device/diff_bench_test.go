package device

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// benchConfig is a device configuration with n-1 peers shaped like a
// dual-stack cluster's: an endpoint in 198.18.0.0/15 and a v4 and a v6 pod
// CIDR each, plus the peer's host address (host encryption).
func benchConfig(n int) mesh.DeviceConfig {
	var priv mesh.Key
	priv[0], priv[31] = 1, 0x40
	cfg := mesh.DeviceConfig{PrivateKey: priv, ListenPort: 51820, FwMark: 0x20000}
	for i := 1; i < n; i++ {
		var k mesh.Key
		k[0], k[1], k[2] = byte(i), byte(i>>8), 2
		host := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		cfg.Peers = append(cfg.Peers, mesh.Peer{
			Node:      fmt.Sprintf("node-%05d", i),
			PublicKey: k,
			Endpoint:  netip.AddrPortFrom(host, 51820),
			AllowedIPs: []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, byte(i >> 8), byte(i)}), 64),
				netip.PrefixFrom(host, 32),
			},
		})
	}
	return cfg
}

// appliedDevice is what wgctrl reports once cfg has been applied, and the
// endpoints this process wrote.
func appliedDevice(cfg mesh.DeviceConfig) (*wgtypes.Device, map[wgtypes.Key]netip.AddrPort) {
	d := &wgtypes.Device{PrivateKey: wgtypes.Key(cfg.PrivateKey), ListenPort: cfg.ListenPort, FirewallMark: int(cfg.FwMark)}
	sent := make(map[wgtypes.Key]netip.AddrPort, len(cfg.Peers))
	for _, p := range cfg.Peers {
		var nets []net.IPNet
		for _, a := range p.AllowedIPs {
			nets = append(nets, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		d.Peers = append(d.Peers, wgtypes.Peer{
			PublicKey:                   wgtypes.Key(p.PublicKey),
			Endpoint:                    net.UDPAddrFromAddrPort(p.Endpoint),
			AllowedIPs:                  nets,
			PersistentKeepaliveInterval: p.Keepalive / time.Second * time.Second,
			LastHandshakeTime:           time.Unix(1_700_000_000, 0),
		})
		sent[wgtypes.Key(p.PublicKey)] = p.Endpoint
	}
	return d, sent
}

// BenchmarkDiff is the device half of a reconcile at 100, 1,000 and 5,000
// nodes: comparing what wgctrl reports with the derived configuration.
//
//   - first: an empty device gets every peer (agent start);
//   - steady: nothing changed (the periodic resync, the common case);
//   - one-changed: one node moved its pod CIDR and endpoint (a node replaced).
func BenchmarkDiff(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
		want := benchConfig(n)
		cur, sent := appliedDevice(want)
		changed := benchConfig(n)
		p := &changed.Peers[n/2]
		p.AllowedIPs = append([]netip.Prefix{netip.MustParsePrefix("10.255.255.0/24")}, p.AllowedIPs[1:]...)
		p.Endpoint = netip.MustParseAddrPort("198.19.255.254:51820")
		cases := []struct {
			name    string
			cur     *wgtypes.Device
			want    mesh.DeviceConfig
			added   int
			updated int
		}{
			{"first", nil, want, n - 1, 0},
			{"steady", cur, want, 0, 0},
			{"one-changed", cur, changed, 0, 1},
		}
		for _, c := range cases {
			b.Run(fmt.Sprintf("nodes=%d/%s", n, c.name), func(b *testing.B) {
				b.ReportAllocs()
				var p plan
				for b.Loop() {
					var err error
					if p, err = diff(c.cur, c.want, sent); err != nil {
						b.Fatal(err)
					}
				}
				if p.Summary.Added != c.added || p.Summary.Updated != c.updated {
					b.Fatalf("plan adds %d and updates %d peers, want %d and %d", p.Summary.Added, p.Summary.Updated, c.added, c.updated)
				}
			})
		}
	}
}
