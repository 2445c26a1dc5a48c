package mesh

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseClusterCIDR parses one cluster pod range such as 10.244.0.0/16 or
// fd00:10:244::/48, in canonical form. Errors say why: not a prefix, host
// bits set (naming the masked form), an IPv4-mapped IPv6 prefix, or a
// prefix covering a whole address family (that would make every
// destination no node claims unreachable, the underlay included).
func ParseClusterCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix such as 10.244.0.0/16 or fd00:10:244::/48", s)
	}
	if why := clusterCIDRProblem(p); why != "" {
		return netip.Prefix{}, fmt.Errorf("%q %s", s, why)
	}
	return p, nil
}

// ParseClusterCIDRs parses a comma-separated list of cluster pod ranges
// (the --cluster-cidrs flag, kubeadm's networking.podSubnet). Blanks around
// items are ignored; an empty string is an empty list. Every item must pass
// ParseClusterCIDR and appear once.
func ParseClusterCIDRs(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for _, item := range strings.Split(s, ",") {
		p, err := ParseClusterCIDR(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		for _, q := range out {
			if q == p {
				return nil, fmt.Errorf("%s is listed twice", p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
