package option

import (
	"strings"
	"testing"
)

func TestErrorText(t *testing.T) {
	for _, c := range []struct {
		err  *Error
		want string
	}{
		{Errorf("MTU", 1000, "below %d", 1280), "MTU 1000: below 1280"},
		{Errorf("IPv4/IPv6", nil, "both disabled"), "IPv4/IPv6: both disabled"},
		{Errorf("Name", `"a b"`, "byte ' ' not allowed"), `Name "a b": byte ' ' not allowed`},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%#v: %q, want %q", c.err, got, c.want)
		}
	}
}

// TestInterfaceName: good names, the bounds, and each forbidden byte.
func TestInterfaceName(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"wgmesh0", ""},
		{"w", ""},
		{"wg-0_a.b", ""},
		{"...", ""},
		{"0123456789abcde", ""},
		{"0123456789abcdef", "16 bytes, the kernel allows 15"},
		{"", "empty"},
		{".", "reserved"},
		{"..", "reserved"},
		{"a/b", `byte '/' not allowed`},
		{"wg:0", `byte ':' not allowed`},
		{"wg%0", `byte '%' not allowed`},
		{"wg 0", `byte ' ' not allowed`},
		{"wg\t", `byte '\t' not allowed`},
		{"wg\x00", `byte '\x00' not allowed`},
		{"wg\x7f", `byte '\x7f' not allowed`},
		{"wgü", `not allowed`},
	} {
		err := InterfaceName(c.name)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("InterfaceName(%q) = %v, want nil", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("InterfaceName(%q) = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
