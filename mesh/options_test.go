package mesh

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/internal/option/optiontest"
)

// TestOptionsValidate: Validate is the rule for Derive's options as an
// operator gives them; each refusal names the field, the value and the
// reason. Good values, the values at each bound and the first past it.
func TestOptionsValidate(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	pfxs := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	both := DeriveOptions{IPv4: true, IPv6: true}
	with := func(f func(*DeriveOptions)) DeriveOptions { o := both; f(&o); return o }
	for _, c := range []struct {
		name string
		o    DeriveOptions
		// field is the option.Error's Field, "" for valid options; want a
		// substring of the message.
		field, want string
	}{
		{"both families", both, "", ""},
		{"IPv4 only", DeriveOptions{IPv4: true}, "", ""},
		{"IPv6 only", DeriveOptions{IPv6: true}, "", ""},
		{"no family", DeriveOptions{}, "IPv4/IPv6", "mesh options: IPv4/IPv6: both disabled: enable at least one family"},

		{"keepalive 0", with(func(o *DeriveOptions) { o.Keepalive = 0 }), "", ""},
		{"keepalive 1s", with(func(o *DeriveOptions) { o.Keepalive = time.Second }), "", ""},
		{"keepalive max", with(func(o *DeriveOptions) { o.Keepalive = 65535 * time.Second }), "", ""},
		{"keepalive max+1", with(func(o *DeriveOptions) { o.Keepalive = 65536 * time.Second }), "Keepalive", "Keepalive 18h12m16s: at most 65535 seconds"},
		{"keepalive negative", with(func(o *DeriveOptions) { o.Keepalive = -time.Second }), "Keepalive", "Keepalive -1s: must not be negative"},
		{"keepalive fraction", with(func(o *DeriveOptions) { o.Keepalive = 1500 * time.Millisecond }), "Keepalive", "whole seconds"},

		{"tunnel auto", with(func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressAuto }), "", ""},
		{"tunnel empty", with(func(o *DeriveOptions) { o.TunnelAddress = "" }), "", ""},
		{"tunnel first", with(func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressFirst }), "", ""},
		{"tunnel none", with(func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressNone }), "", ""},
		{"tunnel unknown", with(func(o *DeriveOptions) { o.TunnelAddress = "second" }), "TunnelAddress", `TunnelAddress "second": want auto, first, none or fixed`},
		{"tunnel fixed one per family", with(func(o *DeriveOptions) {
			o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("10.244.1.1", "fd00:10:244:1::1")
		}), "", ""},
		{"tunnel fixed IPv4", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("10.244.1.1") }), "", ""},
		{"tunnel fixed none", with(func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressFixed }), "TunnelAddrs", "none given"},
		{"tunnel addrs without fixed", with(func(o *DeriveOptions) { o.TunnelAddrs = addrs("10.244.1.1") }), "TunnelAddrs", `TunnelAddrs 10.244.1.1: given with TunnelAddress ""`},
		{"tunnel two IPv4", with(func(o *DeriveOptions) {
			o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("10.244.1.1", "10.244.1.2")
		}), "TunnelAddrs", "TunnelAddrs 10.244.1.2: more than one IPv4 address"},
		{"tunnel IPv6 off", DeriveOptions{IPv4: true, TunnelAddress: TunnelAddressFixed, TunnelAddrs: addrs("fd00::1")}, "TunnelAddrs", "TunnelAddrs fd00::1: an address of a disabled family (IPv6 off)"},
		{"tunnel loopback", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("127.0.0.1") }), "TunnelAddrs", "cannot be a tunnel address"},
		{"tunnel unspecified", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("::") }), "TunnelAddrs", "cannot be a tunnel address"},
		{"tunnel zone", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("fe80::1%eth0") }), "TunnelAddrs", "cannot be a tunnel address"},
		{"tunnel mapped", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, addrs("::ffff:10.0.0.1") }), "TunnelAddrs", "IPv4-mapped"},
		{"tunnel invalid", with(func(o *DeriveOptions) { o.TunnelAddress, o.TunnelAddrs = TunnelAddressFixed, []netip.Addr{{}} }), "TunnelAddrs", "not an IP address"},

		{"cluster both", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("10.244.0.0/16", "fd00:10:244::/48") }), "", ""},
		{"cluster /1", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("0.0.0.0/1") }), "", ""},
		{"cluster /0", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("::/0") }), "ClusterCIDRs", "ClusterCIDRs ::/0: covers a whole address family"},
		{"cluster host bits", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("10.244.0.1/16") }), "ClusterCIDRs", "did you mean 10.244.0.0/16?"},
		{"cluster mapped", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("::ffff:10.0.0.0/104") }), "ClusterCIDRs", "IPv4-mapped"},
		{"cluster twice", with(func(o *DeriveOptions) { o.ClusterCIDRs = pfxs("10.244.0.0/16", "10.244.0.0/16") }), "ClusterCIDRs", "listed twice"},
		{"cluster IPv6 off", DeriveOptions{IPv4: true, ClusterCIDRs: pfxs("fd00:10:244::/48")}, "ClusterCIDRs", "ClusterCIDRs fd00:10:244::/48: a range of a disabled family (IPv6 off)"},
		{"cluster invalid", with(func(o *DeriveOptions) { o.ClusterCIDRs = []netip.Prefix{{}} }), "ClusterCIDRs", "not a CIDR prefix"},

		{"keep outside", with(func(o *DeriveOptions) { o.KeepOutside = addrs("198.18.0.10", "fd00::10") }), "", ""},
		{"keep outside invalid", with(func(o *DeriveOptions) { o.KeepOutside = []netip.Addr{{}} }), "KeepOutside", "not an IP address"},
	} {
		optiontest.Check(t, c.name, c.o.Validate(), c.field, c.want)
	}
}

// TestValidateEndpoint: the rule for the endpoint a node publishes.
func TestValidateEndpoint(t *testing.T) {
	for _, c := range []struct {
		ep          netip.AddrPort
		field, want string
	}{
		{netip.MustParseAddrPort("198.18.0.1:51822"), "", ""},
		{netip.MustParseAddrPort("[fd00::1]:1"), "", ""},
		{netip.MustParseAddrPort("198.18.0.1:65535"), "", ""},
		{netip.MustParseAddrPort("198.18.0.1:0"), "Endpoint", "Endpoint 198.18.0.1:0: port 0: want 1-65535"},
		{netip.MustParseAddrPort("0.0.0.0:51822"), "Endpoint", "0.0.0.0 is not a unicast address"},
		{netip.MustParseAddrPort("[ff02::1]:51822"), "Endpoint", "not a unicast address"},
		{netip.MustParseAddrPort("[fe80::1%eth0]:51822"), "Endpoint", "zoned addresses"},
		{netip.MustParseAddrPort("[::ffff:198.18.0.1]:51822"), "Endpoint", "IPv4-mapped"},
		{netip.AddrPort{}, "Endpoint", "not IP:port"},
	} {
		optiontest.Check(t, c.ep.String(), ValidateEndpoint(c.ep), c.field, c.want)
	}
}
