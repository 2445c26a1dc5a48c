// Package option holds what the option types of device, routing and mesh
// share for their Validate methods: the error that names the wrong field,
// and the interface-name rule that device and routing both apply.
//
// A Validate method is the one rule for its options: the constructors call
// it, and cmd/wgmesh parses its flags into the options and calls it too,
// mapping Error.Field to the flag that set the field.
package option

import "fmt"

// Error says which field of an option type is wrong and why. Its text is
// "Field Value: Reason", e.g. "MTU 1000: below 1280, IPv6's minimum link
// MTU; …"; a command that set the field from a flag prints the flag in
// place of Field ("--mtu 1000: …").
type Error struct {
	// Field is the Go name of the field, e.g. "MTU" or "HostTable". Two
	// fields that are wrong only together are named with a slash
	// ("IPv4/IPv6").
	Field string
	// Value is the offending value as text: a number, a quoted string,
	// one element of a list. "" when the fields together are wrong.
	Value string
	// Reason says what is wanted and why, with the bound.
	Reason string
}

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Field + ": " + e.Reason
	}
	return e.Field + " " + e.Value + ": " + e.Reason
}

// Errorf returns an *Error for field; value is formatted with %v (format
// strings beforehand with %q) and the reason with format and args.
func Errorf(field string, value any, format string, args ...any) *Error {
	v := ""
	if value != nil {
		v = fmt.Sprint(value)
	}
	return &Error{Field: field, Value: v, Reason: fmt.Sprintf(format, args...)}
}

// MaxInterfaceName is IFNAMSIZ (16) minus the terminating NUL.
const MaxInterfaceName = 15

// InterfaceName is the rule for a WireGuard interface name: what the kernel
// accepts (dev_valid_name) and what is safe as the file name of a UAPI
// socket (/var/run/wireguard/<name>.sock): 1-15 bytes, not "." or "..", no
// '/', ':' (alias syntax), '%' (IPv6 zone syntax), whitespace, control or
// non-ASCII bytes. The error gives the reason only; callers name the field.
func InterfaceName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%s; use 1-15 letters, digits, '-', '_' or '.'", why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxInterfaceName:
		return bad(fmt.Sprintf("%d bytes, the kernel allows %d", len(name), MaxInterfaceName))
	case name == "." || name == "..":
		return bad("reserved")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == ':' || c == '%' {
			return bad(fmt.Sprintf("byte %q not allowed", c))
		}
	}
	return nil
}
