package mesh

import (
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzInput turns fuzz bytes into Derive arguments. The pools of names, keys,
// endpoints and prefixes are small on purpose, so duplicates, overlaps and
// conflicts with the local node are common; input past the end reads as 0.
type fuzzInput struct {
	b []byte
	i int
}

func (f *fuzzInput) next() byte {
	if f.i >= len(f.b) {
		return 0
	}
	v := f.b[f.i]
	f.i++
	return v
}

func (f *fuzzInput) options() DeriveOptions {
	b := f.next()
	o := DeriveOptions{
		IPv4:             b&1 != 0,
		IPv6:             b&2 != 0,
		HostEncryption:   b&4 != 0,
		AllowUnencrypted: b&8 != 0,
	}
	if b&16 != 0 {
		o.Unmanaged = windowsUnmanaged
	}
	o.TunnelAddress = []TunnelAddressMode{TunnelAddressFirst, TunnelAddressNone, TunnelAddressFixed, "", TunnelAddressAuto}[int(b>>5&7)%5]
	if o.TunnelAddress == TunnelAddressFixed {
		o.TunnelAddrs = []netip.Addr{f.addr(), f.addr()}
	}
	if b&128 != 0 {
		o.KeepOutside = []netip.Addr{f.addr()}
	}
	return o
}

func (f *fuzzInput) addr() netip.Addr {
	b := f.next()
	x := b >> 3 & 7
	switch b & 7 {
	case 0:
		return netip.Addr{}
	case 1:
		return netip.AddrFrom4([4]byte{198, 18, 0, x})
	case 2:
		return netip.AddrFrom4([4]byte{192, 0, 2, x & 3})
	case 3:
		return netip.AddrFrom4([4]byte{10, 244, 1, x & 3})
	case 4:
		return netip.AddrFrom16([16]byte{0xfd, 0, 1, 0x98, 0, 0x18, 15: x & 3})
	case 5:
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x44, 0, x & 3, 15: 1})
	case 6:
		return netip.AddrFrom4([4]byte{198, 18, 0, x}).WithZone("")
	}
	return netip.AddrFrom16(netip.AddrFrom4([4]byte{198, 18, 0, x}).As16()) // IPv4-mapped
}

func (f *fuzzInput) prefix() netip.Prefix {
	b := f.next()
	x, y := b>>3&3, b>>5&7
	switch b & 7 {
	case 0:
		return netip.Prefix{}
	case 1:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, 0}), 24) // holds endpoints
	case 2:
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	case 3:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 244}), 112) // IPv4-mapped
	case 4, 5:
		bits := []int{16, 22, 24, 24, 25, 26, 32, 24}[y]
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, x, y << 5}), bits)
	}
	bits := []int{48, 56, 64, 64, 64, 65, 128, 64}[y]
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x44, 0, x, 15: y}), bits)
}

// clusterRange returns a cluster range: the test cluster's, a wider or
// foreign one, or any prefix of the pool.
func (f *fuzzInput) clusterRange() netip.Prefix {
	switch b := f.next(); b & 3 {
	case 0:
		return netip.MustParsePrefix("10.244.0.0/16")
	case 1:
		return netip.MustParsePrefix("fd00:10:244::/48")
	case 2:
		return []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("10.0.0.0/8"),
			netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("fd00::/8")}[b>>2&3]
	}
	return f.prefix()
}

var fuzzNames = []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11", "n12", "n13", "n14", ""}

func (f *fuzzInput) node() Node {
	n := Node{Name: fuzzNames[int(f.next())%len(fuzzNames)]}
	if k := f.next() % 16; k != 0 {
		n.PublicKey = key(k)
	}
	e := f.next()
	port := uint16(51820 + int(e>>6&1))
	switch e & 7 {
	case 0:
	case 1:
		n.Endpoint = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, e >> 3 & 7}), 0)
	case 2:
		n.Endpoint = netip.AddrPortFrom(netip.IPv4Unspecified(), port)
	default:
		if a := f.addr(); a.IsValid() {
			n.Endpoint = netip.AddrPortFrom(a, port)
		}
	}
	for range f.next() % 4 {
		n.PodCIDRs = append(n.PodCIDRs, f.prefix())
	}
	for range f.next() % 3 {
		n.HostIPs = append(n.HostIPs, f.addr())
	}
	flags := f.next()
	if flags&3 == 0 {
		n.Labels = map[string]string{"kubernetes.io/os": "windows"}
	}
	// Few distinct ages, so ties (decided by name) and unknown ages (zero)
	// are common among nodes sharing a key.
	if age := flags >> 5 & 3; age != 0 {
		n.Created = time.Unix(int64(age), 0)
	}
	switch flags >> 2 & 7 {
	case 0:
		n.Problems = append(n.Problems, Problem{Reason: ReasonInvalidKey, Detail: "fuzz"})
	case 1:
		n.Problems = append(n.Problems, Problem{Node: n.Name, Reason: ReasonInvalidEndpoint, Detail: "fuzz"})
	}
	return n
}

func FuzzDerive(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x03, 4, 0, 1, 3, 0x0c, 2, 0x2e, 1, 0x09, 1, 1, 3, 0x0c, 2, 0x34, 1, 0x11, 1, 2, 4, 0x14, 1, 0x1e, 0, 0x09})
	f.Add([]byte{0x07, 6, 0, 1, 3, 0x0c, 3, 0x04, 0x04, 0x06, 2, 0x01, 0x02, 1, 2, 3, 0x14, 2, 0x04, 0x05, 1, 0x09, 1})
	f.Add([]byte{0xff, 0x01, 9, 3, 1, 1, 3, 0x0c, 3, 0x2c, 0x2c, 0x01, 2, 0x01, 0x02, 2, 3, 3, 0x14, 1, 0x2c, 0, 4, 3, 3, 0x1c, 1, 0x05})
	f.Add([]byte{0x1b, 8, 0, 0, 1, 3, 0x0c, 1, 0x04, 0, 1, 1, 1, 3, 0x0c, 1, 0x04, 0, 1, 2, 0, 0, 2, 0x06, 0, 0})
	f.Add([]byte{0x07, 3, 0, 1, 3, 0x0c, 2, 0x2e, 1, 0x09, 1, 1, 3, 0x0c, 2, 0x34, 1, 0x11, 1, 2, 4, 0x14, 1, 0x1e, 0, 0x09, 0, 2, 0, 1})
	f.Add([]byte{0xbf, 4, 0, 1, 3, 0x0c, 2, 0x2e, 1, 0x09, 1, 1, 3, 0x0c, 2, 0x34, 1, 0x11, 1, 2, 4, 0x14, 1, 0x1e, 0, 0x09, 1, 2, 2, 0x06})
	f.Add([]byte("the fuzzer grows this into many nodes with shared keys, names and prefixes"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{b: data}
		o := in.options()
		count := int(in.next() % 10)
		selfAt := int(in.next()) % (count + 1)
		var nodes []Node
		self := in.node()
		for i := range count {
			if i == selfAt {
				nodes = append(nodes, self)
				continue
			}
			nodes = append(nodes, in.node())
		}
		// The caller's self may carry the key while the list's entry does
		// not, or vice versa.
		if in.next()&1 == 0 {
			self.PodCIDRs = nil
		}
		// Cluster ranges: usually one or two wide ones, sometimes a pod
		// CIDR of the pool or one holding endpoints.
		for range in.next() % 3 {
			o.ClusterCIDRs = append(o.ClusterCIDRs, in.clusterRange())
		}

		before := deepCopyNodes(nodes)
		d := Derive(self, nodes, o)
		if !reflect.DeepEqual(before, nodes) {
			t.Fatal("Derive modified its input")
		}
		checkInvariants(t, self, nodes, o, d)

		h := fnv.New64a()
		h.Write(data)
		r := rand.New(rand.NewPCG(h.Sum64(), 1))
		for range 3 {
			got := Derive(self, shuffled(r, nodes), o)
			if !reflect.DeepEqual(d, got) {
				t.Fatalf("Derive depends on input order:\n%s", cmp.Diff(Render(d), Render(got)))
			}
		}
	})
}
