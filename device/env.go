package device

import (
	"context"
	"errors"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// netlinkOps is the part of rtnetlink this package uses; the real one calls
// vishvananda/netlink, tests use a fake that keeps links in a map.
type netlinkOps interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetAlias(link netlink.Link, alias string) error
}

// wgClient is the part of wgctrl this package uses; *wgctrl.Client satisfies
// it and tests fake it. Both backends are configured through it.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ wgClient = (*wgctrl.Client)(nil)

// env is everything Open, Inspect and Remove need from the system, so tests
// can replace each part.
type env struct {
	nl    netlinkOps
	newWG func() (wgClient, error)
	// openUserspace builds the userspace backend; link is the existing TUN
	// interface to re-attach to, nil to create one.
	openUserspace func(ctx context.Context, o Options, e *env, link netlink.Link) (Device, error)
}

func systemEnv() *env {
	return &env{
		nl:            sysNetlink{},
		newWG:         func() (wgClient, error) { return wgctrl.New() },
		openUserspace: openUserspace,
	}
}

// sysNetlink is netlinkOps on the process's network namespace.
type sysNetlink struct{}

func (sysNetlink) LinkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }
func (sysNetlink) LinkAdd(link netlink.Link) error              { return netlink.LinkAdd(link) }
func (sysNetlink) LinkDel(link netlink.Link) error              { return netlink.LinkDel(link) }
func (sysNetlink) LinkSetUp(link netlink.Link) error            { return netlink.LinkSetUp(link) }
func (sysNetlink) LinkSetAlias(link netlink.Link, alias string) error {
	return netlink.LinkSetAlias(link, alias)
}

// isLinkNotFound reports whether a LinkByName error means "no such link".
// Depending on the request path the library returns LinkNotFoundError or the
// bare ENODEV; fakes use ENODEV.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, syscall.ENODEV)
}
