package device

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/wgmesh/wgmesh/internal/option"
)

// maxNameLen is IFNAMSIZ (16) minus the terminating NUL.
const maxNameLen = option.MaxInterfaceName

// validateName applies the interface-name rule (option.InterfaceName: what
// the kernel accepts and what is safe as a UAPI socket file name) for the
// functions that take a bare name (Remove, Inspect).
func validateName(name string) error {
	if err := option.InterfaceName(name); err != nil {
		return fmt.Errorf("interface name %q: %w", name, err)
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
