package device

import (
	"fmt"
	"log/slog"

	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/internal/option"
)

// Bounds of Options.MTU: what a link can take, not which MTU the mesh may
// use.
const (
	// minLinkMTU is IPv4's minimum link MTU (RFC 791), the smallest the
	// kernel gives a link IPv4 at all.
	minLinkMTU = 68
	// maxLinkMTU is the largest MTU a TUN device and the wireguard link
	// accept.
	maxLinkMTU = 65535
)

// Validate is the rule for o, the one Open applies: it returns nil or an
// error wrapping an *option.Error that names the first wrong field (Name,
// Backend, MTU, InflightPackets, Alias, TUN/Bind) and the reason. Zero
// values are valid and mean the documented defaults.
//
// The MTU bound is the link's, 68-65535, not the tunnel's: the IPv6 floor
// of 1280 (576 without IPv6) is routing's rule (routing.Options.Validate),
// because routing owns the MTU after the interface is created and knows
// which families are on; the agent validates its routing options before it
// opens the device, so it never creates a link below that floor.
func (o Options) Validate() error {
	name := o.Name
	if name == "" {
		name = DefaultName
	}
	if err := o.check(); err != nil {
		return fmt.Errorf("device %s: %w", name, err)
	}
	return nil
}

func (o Options) check() error {
	if o.Name != "" {
		if err := option.InterfaceName(o.Name); err != nil {
			return option.Errorf("Name", fmt.Sprintf("%q", o.Name), "%v", err)
		}
	}
	switch o.Backend {
	case "", ChoiceAuto, ChoiceUserspace, ChoiceKernel:
	default:
		return option.Errorf("Backend", fmt.Sprintf("%q", o.Backend), "want auto, userspace or kernel")
	}
	if o.MTU != 0 && (o.MTU < minLinkMTU || o.MTU > maxLinkMTU) {
		return option.Errorf("MTU", o.MTU, "want 0 (%d) or %d-%d", DefaultMTU, minLinkMTU, maxLinkMTU)
	}
	if o.InflightPackets < 0 {
		return option.Errorf("InflightPackets", o.InflightPackets, "want 0 (no bound) or more")
	}
	if o.Alias != "" {
		if _, ours := instance.ParseAlias(o.Alias); !ours || len(o.Alias) > 255 {
			return option.Errorf("Alias", fmt.Sprintf("%q", o.Alias), "must start with the word %q and fit 255 bytes (IFALIASZ - 1)", instance.AliasTag)
		}
	}
	if (o.TUN == nil) != (o.Bind == nil) {
		return option.Errorf("TUN/Bind", nil, "TUN and Bind must be set together")
	}
	if o.TUN != nil && o.Backend == ChoiceKernel {
		return option.Errorf("TUN/Bind", nil, "an in-memory TUN needs the userspace backend, not kernel")
	}
	return nil
}

// withDefaults validates o and fills its zero fields.
func (o Options) withDefaults() (Options, error) {
	if err := o.Validate(); err != nil {
		return o, err
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Backend == "" {
		o.Backend = ChoiceAuto
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.Alias == "" {
		o.Alias = linkAlias
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Logger = o.Logger.With("component", "device", "interface", o.Name)
	return o, nil
}
