package bench

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
)

// Cluster sizes of the control-plane benchmarks: a small cluster, a large
// one, and the 5,000 nodes Kubernetes supports per cluster.
var clusterSizes = []int{100, 1000, 5000}

// Cluster returns n nodes with a key, an endpoint in 198.18.0.0/15, a v4 and
// a v6 pod CIDR and a host IP each, the shape of a real dual-stack cluster.
func Cluster(n int) []mesh.Node {
	nodes := make([]mesh.Node, n)
	for i := range nodes {
		var k mesh.Key
		k[0], k[1], k[2] = byte(i), byte(i>>8), 1
		host := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		nodes[i] = mesh.Node{
			Name:      fmt.Sprintf("node-%05d", i),
			Labels:    map[string]string{"kubernetes.io/os": "linux"},
			PublicKey: k,
			Endpoint:  netip.AddrPortFrom(host, 51820),
			PodCIDRs: []netip.Prefix{
				// Benchmark data only (no packet is sent): 5,000 /24s do not
				// fit the lab's 10.244.0.0/16, so spread them over 10.0.0.0/8
				// the way large clusters allocate.
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, byte(i >> 8), byte(i)}), 64),
			},
			HostIPs: []netip.Addr{host},
			Backend: mesh.BackendUserspace,
		}
	}
	return nodes
}

func BenchmarkDerive(b *testing.B) {
	for _, n := range clusterSizes {
		nodes := Cluster(n)
		opts := mesh.DeriveOptions{IPv4: true, IPv6: true, HostEncryption: true}
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			var d mesh.Desired
			for b.Loop() {
				d = mesh.Derive(nodes[0], nodes, opts)
			}
			if len(d.Peers) != n-1 {
				b.Fatalf("derived %d peers for %d nodes; problems: %v", len(d.Peers), n, d.Problems[:min(3, len(d.Problems))])
			}
		})
	}
}
