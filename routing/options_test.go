package routing

import (
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/internal/option/optiontest"
)

// TestOptionsValidateFields: Validate is the one rule for the router's options;
// each refusal names the field, the value and the reason. Good values,
// the values at each bound and the first ones past it.
func TestOptionsValidateFields(t *testing.T) {
	for _, c := range []struct {
		name string
		f    func(*Options)
		// field is the option.Error's Field, "" for valid options; want a
		// substring of the message.
		field, want string
	}{
		{"defaults", func(*Options) {}, "", ""},
		{"interface 15 bytes", func(o *Options) { o.Interface = "wgmesh-15-bytes" }, "", ""},
		{"interface 16 bytes", func(o *Options) { o.Interface = "wgmesh-16-bytes_" }, "Interface", `Interface "wgmesh-16-bytes_": 16 bytes, the kernel allows 15`},
		{"interface empty", func(o *Options) { o.Interface = "" }, "Interface", "empty"},
		{"interface slash", func(o *Options) { o.Interface = "wg/0" }, "Interface", "byte '/' not allowed"},
		{"interface zone syntax", func(o *Options) { o.Interface = "wg%0" }, "Interface", "byte '%' not allowed"},
		{"table 1", func(o *Options) { o.Table = 1 }, "", ""},
		{"table 252", func(o *Options) { o.Table, o.HostTable = 252, 256 }, "", ""},
		{"table 256", func(o *Options) { o.Table = 256 }, "", ""},
		{"table max", func(o *Options) { o.Table = 4294967295 }, "", ""},
		{"table 0", func(o *Options) { o.Table = 0 }, "Table", "Table 0: want 1-4294967295 except 253, 254 and 255"},
		{"table default", func(o *Options) { o.Table = 253 }, "Table", "Table 253"},
		{"table main", func(o *Options) { o.Table = 254 }, "Table", "Table 254"},
		{"table local", func(o *Options) { o.Table = 255 }, "Table", "Table 255"},
		{"table 33 bits", func(o *Options) { o.Table = 4294967296 }, "Table", "Table 4294967296"},
		{"table negative", func(o *Options) { o.Table = -1 }, "Table", "Table -1"},
		{"host table main", func(o *Options) { o.HostTable = 254 }, "HostTable", "HostTable 254: want 1-4294967295 except 253, 254 and 255"},
		{"host table 0", func(o *Options) { o.HostTable = 0 }, "HostTable", "HostTable 0"},
		{"host table is the table", func(o *Options) { o.HostTable = o.Table }, "HostTable", "must differ from the route table 51820"},
		{"priority 2", func(o *Options) { o.Priority = 2 }, "", ""},
		{"priority 32765", func(o *Options) { o.Priority = 32765 }, "", ""},
		{"priority 1", func(o *Options) { o.Priority = 1 }, "Priority", "Priority 1: want 2-32765 (after the local table at 0, before main at 32766; the host-route rules take priority 0)"},
		{"priority main", func(o *Options) { o.Priority = 32766 }, "Priority", "Priority 32766"},
		{"fwmark bit 0", func(o *Options) { o.FwMark = 1 }, "", ""},
		{"fwmark bit 31", func(o *Options) { o.FwMark = 0x80000000 }, "", ""},
		{"fwmark 0", func(o *Options) { o.FwMark = 0 }, "FwMark", "FwMark 0x0: must be a single nonzero bit"},
		{"fwmark two bits", func(o *Options) { o.FwMark = 0x3000 }, "FwMark", "FwMark 0x3000: must be a single nonzero bit such as 0x2000"},
		{"IPv4 only", func(o *Options) { o.IPv6 = false }, "", ""},
		{"IPv6 only", func(o *Options) { o.IPv4 = false }, "", ""},
		{"no family", func(o *Options) { o.IPv4, o.IPv6 = false, false }, "IPv4/IPv6", "enable at least one family"},
		// MTU: 0 is automatic; a fixed one obeys the family's floor.
		{"mtu auto", func(o *Options) { o.MTU = 0 }, "", ""},
		{"mtu auto IPv4", func(o *Options) { o.MTU, o.IPv6 = 0, false }, "", ""},
		{"mtu 1280", func(o *Options) { o.MTU = 1280 }, "", ""},
		{"mtu 65535", func(o *Options) { o.MTU = 65535 }, "", ""},
		{"mtu 576 IPv4", func(o *Options) { o.MTU, o.IPv6 = 576, false }, "", ""},
		{"mtu 1240 IPv4", func(o *Options) { o.MTU, o.IPv6 = 1240, false }, "", ""},
		{"mtu 1279", func(o *Options) { o.MTU = 1279 }, "MTU", "MTU 1279: below 1280, IPv6's minimum link MTU"},
		{"mtu 1240", func(o *Options) { o.MTU = 1240 }, "MTU", "or disable IPv6"},
		{"mtu 575 IPv4", func(o *Options) { o.MTU, o.IPv6 = 575, false }, "MTU", "MTU 575: below 576, the smallest datagram every IPv4 host must accept"},
		{"mtu negative IPv4", func(o *Options) { o.MTU, o.IPv6 = -1, false }, "MTU", "MTU -1: want 0 (automatic) or 576-65535"},
		{"mtu 65536", func(o *Options) { o.MTU = 65536 }, "MTU", "MTU 65536: want 0 (automatic) or 1280-65535"},
	} {
		o := DefaultOptions()
		c.f(&o)
		err := o.Validate()
		optiontest.Check(t, c.name, err, c.field, c.want)
		if err != nil && !strings.HasPrefix(err.Error(), "routing options: ") {
			t.Errorf("%s: Validate() = %q, want the prefix \"routing options: \"", c.name, err)
		}
	}
}

// TestConstructorsValidate: New and Cleanup refuse what Validate refuses,
// before anything is read or changed (the fake's Apply too: see
// TestOptionsValidate).
func TestConstructorsValidate(t *testing.T) {
	o := DefaultOptions()
	o.FwMark = 0x3000
	want := o.Validate()
	if want == nil {
		t.Fatal("two-bit mark accepted")
	}
	if _, err := New(o); err == nil || err.Error() != want.Error() {
		t.Errorf("New = %v, want %v", err, want)
	}
	if err := Cleanup(t.Context(), o); err == nil || err.Error() != want.Error() {
		t.Errorf("Cleanup = %v, want %v", err, want)
	}
}
