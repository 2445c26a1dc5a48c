package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
)

// resyncConfig is a device configuration with n-1 peers shaped like a
// dual-stack cluster's: an endpoint, a v4 and a v6 pod CIDR and the peer's
// host address each.
func resyncConfig(tb testing.TB, n int) mesh.DeviceConfig {
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		tb.Fatal(err)
	}
	cfg := mesh.DeviceConfig{PrivateKey: priv, ListenPort: 51820}
	for i := 1; i < n; i++ {
		k, err := mesh.GeneratePrivateKey()
		if err != nil {
			tb.Fatal(err)
		}
		host := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		cfg.Peers = append(cfg.Peers, mesh.Peer{
			Node:      fmt.Sprintf("node-%05d", i),
			PublicKey: k.PublicKey(),
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

// BenchmarkDeviceResync is the device half of the agent's periodic resync
// on the userspace backend: Configure reads the whole device back from
// wireguard-go through the UAPI get protocol, diffs it against the derived
// peers and, nothing having changed, writes nothing. BenchmarkDiff
// (device/) is the diff alone. The device runs on an in-memory TUN and
// bind, so no packet leaves the process, and speaks UAPI in process: the
// agent's round trip over the UAPI socket is not included, and no root is
// needed. No peer answers, so wireguard-go
// keeps retrying the handshakes the first Configure started (one per peer
// every five seconds) while the loop runs: the figure includes that
// background load, as a host with unreachable peers would.
func BenchmarkDeviceResync(b *testing.B) {
	for i, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			cfg := resyncConfig(b, n)
			binds := bindtest.NewChannelBinds()
			d, err := device.Open(b.Context(), device.Options{
				Name:    fmt.Sprintf("wgbr%d", i),
				Backend: device.ChoiceUserspace,
				Logger:  slog.New(slog.DiscardHandler),
				TUN:     tuntest.NewChannelTUN().TUN(),
				Bind:    binds[0],
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { d.Close() })
			ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
			defer cancel()
			start := time.Now()
			if err := d.Configure(ctx, cfg); err != nil {
				b.Fatalf("first Configure of %d peers: %v", n-1, err)
			}
			first := time.Since(start)
			b.ReportAllocs()
			for b.Loop() {
				if err := d.Configure(ctx, cfg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(first.Milliseconds()), "first-ms")
		})
	}
}
