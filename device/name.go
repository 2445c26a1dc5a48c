package device

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
)

// maxNameLen is IFNAMSIZ (16) minus the terminating NUL.
const maxNameLen = 15

// validateName accepts what the kernel accepts as an interface name
// (dev_valid_name) and what is safe as a UAPI socket file name: 1..15 bytes,
// not "." or "..", no '/', ':' (alias syntax), whitespace or control bytes.
func validateName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("interface name %q: %s; use 1-15 letters, digits, '-', '_' or '.'", name, why)
	}
	switch {
	case name == "":
		return bad("empty")
	case len(name) > maxNameLen:
		return bad(fmt.Sprintf("%d bytes, the kernel allows %d", len(name), maxNameLen))
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

// parseUAPIErrno extracts the errno from an error text that carries a UAPI
// reply ("... errno=-98"), which is how wgctrl reports a failed set on a
// userspace device. wireguard-go sends the errno negated, as the kernel
// returns it; other implementations send it positive; both are accepted.
// ok is false when no non-zero errno is present.
func parseUAPIErrno(s string) (errno syscall.Errno, ok bool) {
	const key = "errno="
	i := strings.LastIndex(s, key)
	if i < 0 {
		return 0, false
	}
	digits := strings.TrimPrefix(s[i+len(key):], "-")
	end := 0
	for end < len(digits) && end < 10 && digits[end] >= '0' && digits[end] <= '9' {
		end++
	}
	n, err := strconv.ParseUint(digits[:end], 10, 16)
	if err != nil || n == 0 {
		return 0, false
	}
	return syscall.Errno(n), true
}
