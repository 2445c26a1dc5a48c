package apiserver

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// inNetNS runs fn on a thread switched into the named network namespace (as
// created by `ip netns add`), so sockets fn creates live there. An empty name
// runs fn in place.
func inNetNS(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	target, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		return fmt.Errorf("open network namespace %q: %w", name, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: if switching back fails it must die
		// with this goroutine rather than serve others in the wrong netns.
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()))
		if err != nil {
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace %q: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave network namespace %q: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// dialer returns a DialContext that opens connections from inside the named
// network namespace, so the test process can reach an API server whose
// namespace it is not in, whatever the routing between them.
func dialer(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if name == "" {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNetNS(name, func() error {
			var err error
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// freePort asks the kernel for an unused TCP port on addr inside the named
// namespace. Another process could take it before kube-apiserver binds it;
// on loopback of a test's own namespace that does not happen in practice.
func freePort(netns string, addr string) (int, error) {
	var port int
	err := inNetNS(netns, func() error {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			return fmt.Errorf("find a free port on %s: %w", addr, err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	return port, err
}
