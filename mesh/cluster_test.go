package mesh

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseClusterCIDRs(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string // joined by ","; "" for none
		err  string // substring of the error
	}{
		{in: "", want: ""},
		{in: "  ", want: ""},
		{in: "10.244.0.0/16", want: "10.244.0.0/16"},
		{in: "10.244.0.0/16, fd00:10:244::/48", want: "10.244.0.0/16,fd00:10:244::/48"},
		{in: "10.244.0.1/16", err: "did you mean 10.244.0.0/16"},
		{in: "10.244.0.0", err: "not a CIDR prefix"},
		{in: "0.0.0.0/0", err: "whole address family"},
		{in: "::/0", err: "whole address family"},
		{in: "::ffff:10.0.0.0/104", err: "IPv4-mapped"},
		{in: "10.244.0.0/16,10.244.0.0/16", err: "listed twice"},
		{in: "10.244.0.0/16,", err: "not a CIDR prefix"},
	} {
		got, err := ParseClusterCIDRs(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseClusterCIDRs(%q) = %v, %v; want error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || strings.Join(s, ",") != tt.want {
			t.Errorf("ParseClusterCIDRs(%q) = %v, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseClusterCIDRs(f *testing.F) {
	for _, s := range []string{"", "10.244.0.0/16,fd00:10:244::/48", "10.244.0.1/16", "0.0.0.0/0", "::ffff:1.2.3.0/120", " 10.0.0.0/8 ,, ", "fe80::%eth0/64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseClusterCIDRs(s)
		if err != nil {
			if ps != nil {
				t.Fatalf("prefixes %v with error %v", ps, err)
			}
			return
		}
		seen := map[netip.Prefix]bool{}
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Bits() == 0 || p.Addr().Is4In6() || seen[p] {
				t.Fatalf("ParseClusterCIDRs(%q) accepted %v", s, p)
			}
			seen[p] = true
			// What was accepted parses back to itself.
			if q, err := ParseClusterCIDR(p.String()); err != nil || q != p {
				t.Fatalf("%v does not round-trip: %v, %v", p, q, err)
			}
		}
	})
}
