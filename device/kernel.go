package device

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/mesh"
)

// kernel is the in-kernel WireGuard backend: a `wireguard` link configured
// over generic netlink by wgctrl. The kernel keeps the whole configuration
// when the agent exits, so Close only releases the wgctrl client.
type kernel struct {
	name string
	nl   netlinkOps
	log  *slog.Logger
	conf *wgconf

	once     sync.Once
	closeErr error
}

var _ Device = (*kernel)(nil)

// openKernel creates the wireguard link (link nil) or adopts link, sets it
// up and opens wgctrl. A kernel without WireGuard yields an error wrapping
// ErrKernelUnsupported.
func openKernel(o Options, e *env, link netlink.Link) (Device, error) {
	created := false
	if link == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = o.Name
		attrs.MTU = o.MTU
		wg := &netlink.Wireguard{LinkAttrs: attrs}
		if err := e.nl.LinkAdd(wg); err != nil {
			if isKernelUnsupported(err) {
				err = fmt.Errorf("%w: %w", ErrKernelUnsupported, err)
			}
			return nil, opError(o.Name, "create wireguard link", err)
		}
		created = true
		l, err := e.nl.LinkByName(o.Name)
		if err != nil {
			return nil, opError(o.Name, "look up created wireguard link", err)
		}
		link = l
		if err := e.nl.LinkSetAlias(link, o.Alias); err != nil {
			o.Logger.Warn("cannot mark interface as wgmesh's (alias)", "error", err)
		}
	}
	undo := func(err error) (Device, error) {
		if created {
			if derr := e.nl.LinkDel(link); derr != nil {
				err = errors.Join(err, opError(o.Name, "delete half-created link", derr))
			}
		}
		return nil, err
	}
	if err := e.nl.LinkSetUp(link); err != nil {
		return undo(opError(o.Name, "set link up", err))
	}
	wg, err := e.newWG()
	if err != nil {
		return undo(opError(o.Name, "open wgctrl", err))
	}
	return &kernel{
		name: o.Name,
		nl:   e.nl,
		log:  o.Logger,
		conf: &wgconf{name: o.Name, log: o.Logger, wg: wg},
	}, nil
}

func (k *kernel) Name() string          { return k.name }
func (k *kernel) Backend() mesh.Backend { return mesh.BackendKernel }

func (k *kernel) Configure(ctx context.Context, cfg mesh.DeviceConfig) error {
	return k.conf.configure(ctx, cfg)
}

func (k *kernel) Stats(ctx context.Context) ([]PeerStats, error) { return k.conf.stats(ctx) }

// Offloads implements Device: the kernel module's offloads are the
// kernel's own business, nothing for the agent to fall back from.
func (k *kernel) Offloads() []OffloadState { return nil }

// Inflight implements Device: the kernel module queues on its own.
func (k *kernel) Inflight() []InflightState { return nil }

func (k *kernel) Close() error {
	k.once.Do(func() { k.closeErr = k.conf.close() })
	return k.closeErr
}
