package mesh

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/wgmesh/wgmesh/internal/option"
)

// MaxKeepalive is the longest persistent keepalive WireGuard accepts: a
// 16-bit number of seconds.
const MaxKeepalive = 65535 * time.Second

// Validate is the rule for options given by an operator (the agent's flags,
// verify's): it returns nil or an error wrapping an *option.Error that names
// the first wrong field (IPv4/IPv6, Keepalive, TunnelAddress, TunnelAddrs,
// ClusterCIDRs, KeepOutside) and the reason. Derive itself never fails: it
// skips what it cannot use (a tunnel address or a range of a disabled
// family) and treats a negative keepalive as 0, so the ranges a source adds
// to ClusterCIDRs at run time need not pass.
func (o DeriveOptions) Validate() error {
	if err := o.check(); err != nil {
		return fmt.Errorf("mesh options: %w", err)
	}
	return nil
}

func (o DeriveOptions) check() error {
	if !o.IPv4 && !o.IPv6 {
		return option.Errorf("IPv4/IPv6", nil, "both disabled: enable at least one family")
	}
	switch k := o.Keepalive; {
	case k < 0:
		return option.Errorf("Keepalive", k, "must not be negative (0 disables it)")
	case k > MaxKeepalive:
		return option.Errorf("Keepalive", k, "at most %d seconds (%s), WireGuard's largest", int(MaxKeepalive/time.Second), MaxKeepalive)
	case k%time.Second != 0:
		return option.Errorf("Keepalive", k, "WireGuard counts keepalive in whole seconds")
	}
	switch o.TunnelAddress {
	case "", TunnelAddressAuto, TunnelAddressFirst, TunnelAddressNone:
		if len(o.TunnelAddrs) > 0 {
			return option.Errorf("TunnelAddrs", o.TunnelAddrs[0], "given with TunnelAddress %q; only %q uses addresses", o.TunnelAddress, TunnelAddressFixed)
		}
	case TunnelAddressFixed:
		if len(o.TunnelAddrs) == 0 {
			return option.Errorf("TunnelAddrs", nil, "none given with TunnelAddress %q; give one address per family, or use %q", TunnelAddressFixed, TunnelAddressNone)
		}
	default:
		return option.Errorf("TunnelAddress", fmt.Sprintf("%q", o.TunnelAddress), "want auto, first, none or fixed")
	}
	var have4, have6 bool
	for _, a := range o.TunnelAddrs {
		switch {
		case !a.IsValid():
			return option.Errorf("TunnelAddrs", a, "not an IP address")
		case a.Is4In6():
			return option.Errorf("TunnelAddrs", a, "an IPv4-mapped IPv6 address; write the IPv4 address")
		case a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
			return option.Errorf("TunnelAddrs", a, "cannot be a tunnel address: want a unicast address without zone, not loopback")
		case a.Is4() && !o.IPv4, a.Is6() && !o.IPv6:
			return option.Errorf("TunnelAddrs", a, "an address of a disabled family (%s off)", family(a))
		case a.Is4() && have4, a.Is6() && have6:
			return option.Errorf("TunnelAddrs", a, "more than one %s address: give at most one per family", family(a))
		}
		have4 = have4 || a.Is4()
		have6 = have6 || a.Is6()
	}
	for i, p := range o.ClusterCIDRs {
		switch {
		case !p.IsValid():
			return option.Errorf("ClusterCIDRs", p, "not a CIDR prefix such as 10.244.0.0/16 or fd00:10:244::/48")
		case clusterCIDRProblem(p) != "":
			return option.Errorf("ClusterCIDRs", p, "%s", clusterCIDRProblem(p))
		case p.Addr().Is4() && !o.IPv4, p.Addr().Is6() && !o.IPv6:
			return option.Errorf("ClusterCIDRs", p, "a range of a disabled family (%s off)", family(p.Addr()))
		}
		for _, q := range o.ClusterCIDRs[:i] {
			if q == p {
				return option.Errorf("ClusterCIDRs", p, "listed twice")
			}
		}
	}
	for _, a := range o.KeepOutside {
		if !a.IsValid() {
			return option.Errorf("KeepOutside", a, "not an IP address")
		}
	}
	return nil
}

// ValidateEndpoint is the rule for the endpoint a node publishes (the
// agent's --endpoint): an address other nodes can send to (unicast, no
// IPv6 zone, not IPv4-mapped) and a port 1-65535. The error is an
// *option.Error for the field "Endpoint".
func ValidateEndpoint(ep netip.AddrPort) error {
	a := ep.Addr()
	switch {
	case !a.IsValid():
		return option.Errorf("Endpoint", ep, "not IP:port")
	case a.Zone() != "":
		return option.Errorf("Endpoint", ep, "zoned addresses are not reachable from other nodes")
	case a.Is4In6():
		return option.Errorf("Endpoint", ep, "an IPv4-mapped IPv6 address; write the IPv4 address")
	case !usableEndpointAddr(a): // Derive's rule for the endpoints it programs
		return option.Errorf("Endpoint", ep, "%s is not a unicast address other nodes can reach", a)
	case ep.Port() == 0:
		return option.Errorf("Endpoint", ep, "port 0: want 1-65535")
	}
	return nil
}

// clusterCIDRProblem says why a valid prefix cannot be a cluster pod range
// (see ParseClusterCIDR), or "".
func clusterCIDRProblem(p netip.Prefix) string {
	switch {
	case p.Addr().Is4In6():
		return "is an IPv4-mapped IPv6 prefix; write the IPv4 prefix"
	case p != p.Masked():
		return fmt.Sprintf("has host bits set; did you mean %s?", p.Masked())
	case p.Bits() == 0:
		return "covers a whole address family; give the cluster's pod range"
	}
	return ""
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
