package device

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Error is returned by every operation of this package that touches the
// system. It names the interface and the operation and, when the cause is
// recognised, says what to do about it. Unwrap gives the cause, so
// errors.Is(err, syscall.EPERM) works.
type Error struct {
	Interface string
	Op        string
	Err       error
	// Hint is advice for the operator; "" when there is none.
	Hint string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("device %s: %s: %v", e.Interface, e.Op, e.Err)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ErrKernelUnsupported is wrapped when the kernel cannot create a wireguard
// link (no module, or module loading impossible in a container).
var ErrKernelUnsupported = errors.New("kernel has no WireGuard support")

// opError wraps err for interface name and operation op and attaches the hint
// that fits a well-known cause.
func opError(name, op string, err error) error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return err
	}
	return &Error{Interface: name, Op: op, Err: err, Hint: hintFor(err)}
}

// hintFor returns operator advice for causes that have one obvious fix.
func hintFor(err error) string {
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "needs CAP_NET_ADMIN: run as root or grant the capability to the container"
	case errors.Is(err, ErrKernelUnsupported):
		return "load the wireguard module (modprobe wireguard) or use --backend userspace or auto"
	}
	return ""
}

// isKernelUnsupported reports whether a failed `wireguard` link creation
// means the kernel cannot do WireGuard at all, as opposed to a failure that
// userspace would hit too (permissions) or a conflict (name taken).
func isKernelUnsupported(err error) bool {
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EPROTONOSUPPORT) ||
		errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, ErrKernelUnsupported) {
		return true
	}
	// iproute2 prints "Unknown device type" for EOPNOTSUPP from
	// rtnl_newlink; some netlink stacks hand back only the text.
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "unknown device type") || strings.Contains(s, "not supported")
}

// tunOpenError explains why /dev/net/tun could not be opened.
func tunOpenError(name string, err error) error {
	e := &Error{Interface: name, Op: "open " + tunPath, Err: err, Hint: hintFor(err)}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO) {
		e.Hint = "load the tun module (modprobe tun) or mount /dev/net/tun into the container"
	}
	return e
}
