package device

import (
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wgmesh/wgmesh/internal/option/optiontest"
)

// TestOptionsValidateFields: Validate is the one rule Open applies; zero
// values are the defaults; each refusal names the field, the value and the
// reason. Good values, the values at each bound and the first past it.
func TestOptionsValidateFields(t *testing.T) {
	pair := bindtest.NewChannelBinds()
	for _, c := range []struct {
		name string
		o    Options
		// field is the option.Error's Field, "" for valid options; want a
		// substring of the message.
		field, want string
	}{
		{"zero", Options{}, "", ""},
		{"name 15 bytes", Options{Name: "wgmesh-15-bytes"}, "", ""},
		{"name 1 byte", Options{Name: "w"}, "", ""},
		{"name 16 bytes", Options{Name: "wgmesh-16-bytes_"}, "Name", `device wgmesh-16-bytes_: Name "wgmesh-16-bytes_": 16 bytes, the kernel allows 15`},
		{"name dot", Options{Name: "."}, "Name", "reserved"},
		{"name colon", Options{Name: "wg:0"}, "Name", "byte ':' not allowed"},
		{"name non-ASCII", Options{Name: "wgü"}, "Name", "not allowed"},
		{"backend auto", Options{Backend: ChoiceAuto}, "", ""},
		{"backend userspace", Options{Backend: ChoiceUserspace}, "", ""},
		{"backend kernel", Options{Backend: ChoiceKernel}, "", ""},
		{"backend other", Options{Backend: "ebpf"}, "Backend", `device wgmesh0: Backend "ebpf": want auto, userspace or kernel`},
		// The link's bounds; the tunnel's floor is routing's.
		{"mtu 68", Options{MTU: 68}, "", ""},
		{"mtu 65535", Options{MTU: 65535}, "", ""},
		{"mtu 67", Options{MTU: 67}, "MTU", "MTU 67: want 0 (1420) or 68-65535"},
		{"mtu 65536", Options{MTU: 65536}, "MTU", "MTU 65536"},
		{"mtu negative", Options{MTU: -1}, "MTU", "MTU -1"},
		{"inflight 0", Options{InflightPackets: 0}, "", ""},
		{"inflight 1", Options{InflightPackets: 1}, "", ""},
		{"inflight -1", Options{InflightPackets: -1}, "InflightPackets", "InflightPackets -1: want 0 (no bound) or more"},
		{"alias instance", Options{Alias: "wgmesh table=51820 pref=99"}, "", ""},
		{"alias foreign", Options{Alias: "wg-quick"}, "Alias", `Alias "wg-quick": must start with the word "wgmesh"`},
		{"alias 255 bytes", Options{Alias: "wgmesh " + strings.Repeat("x", 248)}, "", ""},
		{"alias 256 bytes", Options{Alias: "wgmesh " + strings.Repeat("x", 249)}, "Alias", "fit 255 bytes"},
		{"in-memory pair", Options{Backend: ChoiceUserspace, TUN: tuntest.NewChannelTUN().TUN(), Bind: pair[0]}, "", ""},
		{"TUN alone", Options{TUN: tuntest.NewChannelTUN().TUN()}, "TUN/Bind", "TUN and Bind must be set together"},
		{"Bind alone", Options{Bind: pair[1]}, "TUN/Bind", "TUN and Bind must be set together"},
		{"in-memory kernel", Options{Backend: ChoiceKernel, TUN: tuntest.NewChannelTUN().TUN(), Bind: pair[0]}, "TUN/Bind", "needs the userspace backend"},
	} {
		err := c.o.Validate()
		optiontest.Check(t, c.name, err, c.field, c.want)
		if c.field == "" || err == nil {
			continue
		}
		// Open applies the same rule before it touches anything.
		if _, oerr := open(t.Context(), c.o, fakeEnv(newFakeNetlink(), newFakeWG())); oerr == nil || oerr.Error() != err.Error() {
			t.Errorf("%s: open = %v, want Validate's %v", c.name, oerr, err)
		}
	}
}
