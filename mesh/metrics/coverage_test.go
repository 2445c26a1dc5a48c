package metrics

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/mesh"
)

func TestCoverage(t *testing.T) {
	p := netip.MustParsePrefix
	peer := mesh.Peer{Node: "a", AllowedIPs: []netip.Prefix{p("10.244.2.0/24")}}
	for _, c := range []struct {
		name    string
		d       mesh.Desired
		hostEnc bool
		// want is "encrypted" per entry, and a word of its detail.
		want   [4]bool
		detail [4]string
	}{
		{"no node addresses known", mesh.Desired{Peers: []mesh.Peer{peer}, PodSources: []netip.Prefix{p("10.244.1.0/24")}}, false,
			[4]bool{true, false, true, false}, [4]string{"1 pod CIDRs of 1 peers", "no peer has a known node address", "tunnel address", "unless --host-encryption"}},
		{"no own pod CIDRs, host encryption", mesh.Desired{Peers: []mesh.Peer{peer},
			HostRoutes: []mesh.Route{{Dst: p("198.18.0.2/32"), Kind: mesh.ViaTunnel, Node: "a"}}}, true,
			[4]bool{true, false, true, true}, [4]string{"of 1 peers", "no pod CIDRs", "", "except peer endpoints and the API server"}},
	} {
		got := Coverage(c.d, c.hostEnc)
		if len(got) != 4 {
			t.Fatalf("%s: %d entries, want 4", c.name, len(got))
		}
		for i, g := range got {
			if g.Encrypted != c.want[i] || !strings.Contains(g.Detail, c.detail[i]) {
				t.Errorf("%s: %s -> %s = %v (%s), want %v (%q)", c.name, g.From, g.To, g.Encrypted, g.Detail, c.want[i], c.detail[i])
			}
		}
	}
}
