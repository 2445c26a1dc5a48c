package e2e_test

import (
	"net/netip"
	"strings"
	"testing"
)

// nftSample is `nft list table inet wgmesh` as a lab node prints it, with
// the three element shapes nft uses: a merged prefix, a list, and a range.
const nftSample = `table inet wgmesh {
	set strict4 {
		type ipv4_addr
		flags interval
		elements = { 10.244.2.0/23, 10.244.9.0/24 }
	}

	set strict6 {
		type ipv6_addr
		flags interval
		elements = { fd00:10:244:1::-fd00:10:244:2:ffff:ffff:ffff:ffff,
			     fd00:10:244:9::/64 }
	}

	chain prerouting {
		type filter hook prerouting priority raw; policy accept;
		iifname != "wg1n1" ip saddr @strict4 counter name "strict_drops" drop
	}
}
`

func TestK8sNftCovers(t *testing.T) {
	for _, c := range []struct {
		addr string
		want bool
	}{
		{"10.244.2.0", true},
		{"10.244.3.0", true}, // inside the merged /23
		{"10.244.9.0", true},
		{"10.244.1.0", false},
		{"10.244.4.0", false},
		{"fd00:10:244:1::", true}, // range start
		{"fd00:10:244:2::", true}, // inside the range
		{"fd00:10:244:9::", true},
		{"fd00:10:244:3::", false},
	} {
		if got := k8sNftCovers(nftSample, netip.MustParseAddr(c.addr)); got != c.want {
			t.Errorf("k8sNftCovers(sample, %s) = %v, want %v", c.addr, got, c.want)
		}
	}
	if k8sNftCovers("", netip.MustParseAddr("10.244.2.0")) {
		t.Error("empty output covers an address")
	}
}

// FuzzK8sNftCovers feeds arbitrary text: the parser must never panic, and an
// address it finds must appear in the text in some form (it cannot invent
// entries out of an output holding no address characters).
func FuzzK8sNftCovers(f *testing.F) {
	f.Add(nftSample, "10.244.3.1")
	f.Add("elements = { 1.2.3.4 }", "1.2.3.4")
	f.Add("elements = { a-b, -, 1.2.3.4-, /24 }", "::1")
	f.Add("{{{,,,}}}", "fd00::1")
	f.Fuzz(func(t *testing.T, out, addr string) {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return
		}
		if k8sNftCovers(out, a) && !strings.ContainsAny(out, "0123456789:") {
			t.Errorf("k8sNftCovers(%q, %s) = true without any address in the output", out, a)
		}
	})
}
