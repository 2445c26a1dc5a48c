package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
)

// FuzzAgentFlags feeds arbitrary values to the agent's flag set and
// validation: both must return an error or a configuration, never panic. An
// error is a usage error naming a flag (a package's Validate error on a
// field no flag sets would not be); a configuration must satisfy the
// invariants the rest of the agent relies on and pass the packages' own
// Validate, which the agent's constructors apply again.
func FuzzAgentFlags(f *testing.F) {
	type seed struct {
		fwmark, tunnel, unmanaged, keepalive, endpoint, metricsAddr, extra string
		inCluster                                                          bool
	}
	for _, s := range []seed{
		{"0x20000", "first", "", "0", "", ":9587", "", true},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p", false},
		{"131072", "none", "kubernetes.io/os=windows", "25", "198.18.0.1", "127.0.0.1:9587", "--peers-file=p", false},
		{"0x30000", "10.244.1.1,fd00:10:244:1::1", "a in (b,c),!d", "25s", "[fd00::1]:51820", "[::]:1", "--kubeconfig=k", false},
		{"-1", "10.244.1.1,10.244.1.2", "a in (b", "-1s", "0.0.0.0:0", "9587", "--mtu=-1\n--route-table=254", true},
		{"0x100000000", "::ffff:10.0.0.1", "x=", "1e9", "fe80::1%eth0", ":", "--rule-priority=0\n--ipv4=false\n--ipv6=false", true},
		{"", "", "", "", "", "", "--listen-port=0\n--backend=\x00\n--interface=", false},
		{"0x20000", "first", "", "0", "", ":9587", "--peers-file=p\n--route-table=252\n--host-route-table=0\n--rule-priority=1", false},
		{"0x20000", "first", "", "0", "", ":9587", "--peers-file=p\n--route-table=7\n--host-route-table=7", false},
		{"0x20000", "first", "", "0", "", ":9587", "--peers-file=p\n--mtu=1240\n--ipv6=false", false},
		{"0x20000", "first", "", "0", "", ":9587", "--peers-file=p\n--cluster-cidrs=10.244.0.0/16, fd00:10:244::/48", false},
		{"0x20000", "first", "", "0", "", ":9587", "--peers-file=p\n--ipv6=false\n--cluster-cidrs=10.244.0.1/16,::/0,fd00::/8,,", false},
		// The packages' rules, one at or past a bound in each seed, so that
		// every field's error is seen mapped to its flag.
		{"0x2000", "auto", "", "65536", "", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "1.5s", "", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "65535", "198.18.0.1:0", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "0", "[fe80::1%eth0]:1", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "0", "::ffff:198.18.0.1%eth0", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--mtu=1279", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--ipv6=false\n--mtu=575", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--mtu=67", false},
		{"0x3000", "auto", "", "0", "", ":9587", "--peers-file=p", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--interface=wg%0", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--backend=", false},
		{"0x2000", "auto", "", "0", "", ":9587", "--peers-file=p\n--inflight-packets=-1", false},
		{"0x2000", "fd00::1", "", "0", "", ":9587", "--peers-file=p\n--ipv6=false", false},
		{"0x2000", "10.244.1.1,::ffff:10.0.0.1", "", "0", "", ":9587", "--peers-file=p", false},
		{"0x80000000", "auto", "", "0", "198.18.0.1", ":9587", "--peers-file=p\n--route-table=4294967295\n--host-route-table=254", false},
		{"0x80000000", "auto", "", "0", "", ":9587", "--peers-file=p\n--route-table=4294967296", false},
		{"1", "first", "", "0", "", ":9587", "--peers-file=p\n--ipv4=false\n--cluster-cidrs=10.244.0.0/16", false},
	} {
		f.Add(s.fwmark, s.tunnel, s.unmanaged, s.keepalive, s.endpoint, s.metricsAddr, s.extra, s.inCluster)
	}
	f.Fuzz(func(t *testing.T, fwmark, tunnel, unmanaged, keepalive, endpoint, metricsAddr, extra string, inCluster bool) {
		var fl agentFlags
		fs := newAgentFlagSet(&fl, func(string) string { return "node-1" })
		args := []string{
			"--fwmark=" + fwmark, "--tunnel-address=" + tunnel, "--unmanaged-nodes=" + unmanaged,
			"--keepalive=" + keepalive, "--endpoint=" + endpoint, "--metrics-addr=" + metricsAddr,
		}
		if extra != "" {
			args = append(args, strings.Split(extra, "\n")...)
		}
		if err := fs.Parse(args); err != nil {
			return
		}
		c, err := fl.validate(inCluster)
		if err != nil {
			var ue usageError
			if !strings.Contains(err.Error(), "--") || !errors.As(err, &ue) {
				t.Errorf("not a usage error naming a flag: %v", err)
			}
			return
		}
		for what, err := range map[string]error{
			"routing": c.routingOptions().Validate(), "device": c.deviceOptions().Validate(), "mesh": c.Derive.Validate(),
		} {
			if err != nil {
				t.Errorf("valid configuration with invalid %s options: %v", what, err)
			}
		}
		if c.Endpoint.IsValid() {
			if err := mesh.ValidateEndpoint(c.Endpoint); err != nil {
				t.Errorf("valid configuration with invalid endpoint: %v", err)
			}
		}
		if c.Backend != device.ChoiceAuto && c.Backend != device.ChoiceUserspace && c.Backend != device.ChoiceKernel {
			t.Errorf("valid configuration with backend %q", c.Backend)
		}
		switch {
		case c.NodeName == "":
			t.Error("valid configuration without node name")
		case c.FwMark == 0 || c.FwMark&(c.FwMark-1) != 0:
			t.Errorf("valid configuration with fwmark %#x", c.FwMark)
		case c.Priority < 2 || c.Priority > 32765:
			t.Errorf("valid configuration with rule priority %d", c.Priority)
		case c.Table <= 0 || (c.Table >= 253 && c.Table <= 255):
			t.Errorf("valid configuration with table %d", c.Table)
		case c.HostTable <= 0 || (c.HostTable >= 253 && c.HostTable <= 255) || c.HostTable == c.Table:
			t.Errorf("valid configuration with host table %d (table %d)", c.HostTable, c.Table)
		case !c.Derive.IPv4 && !c.Derive.IPv6:
			t.Error("valid configuration with no family")
		case c.Source == "":
			t.Error("valid configuration without a source")
		case c.ListenPort < 1 || c.ListenPort > 65535:
			t.Errorf("valid configuration with listen port %d", c.ListenPort)
		case c.MTU != 0 && (c.MTU > 65535 || c.MTU < 576 || (c.Derive.IPv6 && c.MTU < 1280)):
			t.Errorf("valid configuration with MTU %d (IPv6 %v)", c.MTU, c.Derive.IPv6)
		}
		for _, p := range c.Derive.ClusterCIDRs {
			if !p.IsValid() || p != p.Masked() || p.Bits() == 0 || (p.Addr().Is4() && !c.Derive.IPv4) || (p.Addr().Is6() && !c.Derive.IPv6) {
				t.Errorf("valid configuration with cluster range %v (IPv4 %v, IPv6 %v)", p, c.Derive.IPv4, c.Derive.IPv6)
			}
		}
		if c.Derive.Unmanaged != nil {
			c.Derive.Unmanaged(map[string]string{"kubernetes.io/os": "windows", "a": "b"})
		}
	})
}
