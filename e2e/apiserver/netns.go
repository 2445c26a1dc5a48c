package apiserver

import (
	"context"
	"fmt"
	"net"

	"github.com/wgmesh/wgmesh/internal/netnslab"
)

// inNetNS runs fn on a thread switched into the named network namespace (as
// created by `ip netns add`), so sockets fn creates live there. An empty name
// runs fn in place.
func inNetNS(name string, fn func() error) error { return netnslab.Do(name, fn) }

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
