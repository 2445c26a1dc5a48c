package routing

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
)

// derivedMesh is node 0's Desired for a dual-stack cluster of n nodes, as
// mesh.Derive computes it from the nodes (pod CIDRs, host IPs, host
// encryption), so that routes, addresses and strict sources have the shape
// the agent hands the router.
func derivedMesh(n int, moved int) mesh.Desired {
	nodes := make([]mesh.Node, n)
	for i := range nodes {
		var k mesh.Key
		k[0], k[1], k[2] = byte(i), byte(i>>8), 3
		host := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		if i == moved {
			v4 = netip.MustParsePrefix("10.255.255.0/24")
		}
		nodes[i] = mesh.Node{
			Name:      fmt.Sprintf("node-%05d", i),
			PublicKey: k,
			Endpoint:  netip.AddrPortFrom(host, 51820),
			PodCIDRs: []netip.Prefix{
				v4,
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, byte(i >> 8), byte(i)}), 64),
			},
			HostIPs: []netip.Addr{host},
		}
	}
	return mesh.Derive(nodes[0], nodes, mesh.DeriveOptions{IPv4: true, IPv6: true, HostEncryption: true})
}

// BenchmarkRouteDiff is the router half of a reconcile at 100, 1,000 and
// 5,000 nodes through the Fake, which runs the real observe, target and plan
// code against an in-memory host:
//
//   - first: a fresh host gets every route, address and filter element;
//   - steady: the periodic resync where nothing changed;
//   - one-changed: one node's pod CIDR moved (alternating, so that every
//     iteration has one route to replace and one to remove).
func BenchmarkRouteDiff(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{100, 1000, 5000} {
		base := derivedMesh(n, -1)
		moved := derivedMesh(n, n/2)
		if len(base.Problems) > 0 {
			b.Fatalf("derived mesh has problems: %v", base.Problems[:1])
		}
		b.Run(fmt.Sprintf("nodes=%d/first", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				f := NewFake(DefaultOptions())
				b.StartTimer()
				if err := f.Apply(ctx, base); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("nodes=%d/steady", n), func(b *testing.B) {
			f := NewFake(DefaultOptions())
			if err := f.Apply(ctx, base); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := f.Apply(ctx, base); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("nodes=%d/one-changed", n), func(b *testing.B) {
			f := NewFake(DefaultOptions())
			if err := f.Apply(ctx, base); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				d := base
				if i%2 == 0 {
					d = moved
				}
				i++
				if err := f.Apply(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPrivilegedRouteResync is the steady resync of
// BenchmarkRouteDiff/nodes=5000 against the kernel: a lab namespace holding
// the 15,000 routes and the strict sources of a 5,000-node mesh, read back
// over netlink and nftables and found unchanged. It needs root.
func BenchmarkPrivilegedRouteResync(b *testing.B) {
	l := newLab(b)
	o := DefaultOptions()
	o.UnderlayAddr = netip.MustParseAddr("198.18.0.1")
	r, _ := l.router(o)
	ctx := context.Background()
	d := derivedMesh(5000, -1)
	if err := r.Apply(ctx, d); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Apply(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}
