package routing

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/wgmesh/wgmesh/internal/option"
)

// Validate is the rule for o, the one New and Cleanup apply: it
// returns nil or an error wrapping an *option.Error that names the first
// field that would hijack or shadow the host's routing (Interface, Table,
// HostTable, Priority, FwMark, IPv4/IPv6, MTU) and the reason.
func (o Options) Validate() error {
	if err := o.check(); err != nil {
		return fmt.Errorf("routing options: %w", err)
	}
	return nil
}

func (o Options) check() error {
	// The interface's name follows the device's rule: routes point at
	// that interface, and the instance is named by it.
	if err := option.InterfaceName(o.Interface); err != nil {
		return option.Errorf("Interface", fmt.Sprintf("%q", o.Interface), "%v", err)
	}
	if why := checkTable(o.Table); why != "" {
		return option.Errorf("Table", o.Table, "%s", why)
	}
	if why := checkTable(o.HostTable); why != "" {
		return option.Errorf("HostTable", o.HostTable, "%s", why)
	}
	if o.HostTable == o.Table {
		return option.Errorf("HostTable", o.HostTable, "must differ from the route table %d (the host table holds other routes, for pod-sourced traffic only)", o.Table)
	}
	// The rules come after the local table's (priority 0), so traffic to
	// the host's own addresses is delivered locally, and before main's
	// (32766); the host-route rules take Priority-1, which must be 1 or
	// more.
	if o.Priority < 2 || o.Priority > 32765 {
		return option.Errorf("Priority", o.Priority, "want 2-32765 (after the local table at 0, before main at 32766; the host-route rules take priority %d)", o.Priority-1)
	}
	// One bit: the rule matches `not fwmark M/M`, so every bit of M is one
	// other software must leave alone on pod traffic, and the report of
	// other users of the bit (marks.go) looks at that bit. A zero mark
	// would send the encrypted packets back into the tunnel.
	if bits.OnesCount32(o.FwMark) != 1 {
		return option.Errorf("FwMark", fmt.Sprintf("%#x", o.FwMark), "must be a single nonzero bit such as %#x (the rule tests exactly that bit; without one, encrypted packets loop into the tunnel)", DefaultFwMark)
	}
	if !o.IPv4 && !o.IPv6 {
		return option.Errorf("IPv4/IPv6", nil, "both disabled: enable at least one family")
	}
	return checkMTU(o.MTU, o.IPv6)
}

// checkTable returns why id cannot be one of the instance's tables, or "".
// Table IDs are 32-bit; 0 is "unspecified"; 253-255 are the kernel's
// default, main and local tables.
func checkTable(id int) string {
	if id <= 0 || int64(id) > math.MaxUint32 || (id >= 253 && id <= 255) {
		return "want 1-4294967295 except 253, 254 and 255 (the kernel's default, main and local tables)"
	}
	return ""
}

// checkMTU is the rule for a fixed tunnel MTU (Options.MTU): 0 (automatic),
// or between the family floor and 65535. The floor is 1280 with IPv6 on
// (MinMTUIPv6), because the kernel removes IPv6 from a link with a smaller
// MTU; 576 without (MinMTUIPv4). The automatic MTU obeys the same floor by
// being raised to it (see Options.MTU). This is the only MTU rule of the
// mesh; device.Options.MTU bounds only what a link can take.
func checkMTU(mtu int, ipv6 bool) error {
	switch {
	case mtu == 0:
		return nil
	case mtu < 0 || mtu > 65535:
		return option.Errorf("MTU", mtu, "want 0 (automatic) or %d-65535", minMTU(ipv6))
	case ipv6 && mtu < MinMTUIPv6:
		return option.Errorf("MTU", mtu, "below %d, IPv6's minimum link MTU (the kernel removes IPv6 from a smaller link); "+
			"set %d or more (outer packets then fragment on a small underlay), leave it automatic (0), or disable IPv6", MinMTUIPv6, MinMTUIPv6)
	case mtu < MinMTUIPv4:
		return option.Errorf("MTU", mtu, "below %d, the smallest datagram every IPv4 host must accept; set %d or more, or leave it automatic (0)",
			MinMTUIPv4, MinMTUIPv4)
	}
	return nil
}

// minMTU is the smallest tunnel MTU allowed with IPv6 on or off.
func minMTU(ipv6 bool) int {
	if ipv6 {
		return MinMTUIPv6
	}
	return MinMTUIPv4
}
