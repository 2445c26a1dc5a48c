package device

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// fakeNetlink keeps links in a map and records every mutating call as text.
type fakeNetlink struct {
	mu     sync.Mutex
	links  map[string]netlink.Link
	addErr error // returned by LinkAdd when set
	ops    []string
	next   int
}

var _ netlinkOps = (*fakeNetlink)(nil)

func newFakeNetlink() *fakeNetlink { return &fakeNetlink{links: map[string]netlink.Link{}, next: 10} }

func (f *fakeNetlink) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("link %s not found: %w", name, syscall.ENODEV)
}

func (f *fakeNetlink) LinkAdd(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, fmt.Sprintf("add %s type %s mtu %d", l.Attrs().Name, l.Type(), l.Attrs().MTU))
	if f.addErr != nil {
		return f.addErr
	}
	if _, ok := f.links[l.Attrs().Name]; ok {
		return syscall.EEXIST
	}
	f.next++
	l.Attrs().Index = f.next
	f.links[l.Attrs().Name] = l
	return nil
}

func (f *fakeNetlink) LinkDel(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "del "+l.Attrs().Name)
	if _, ok := f.links[l.Attrs().Name]; !ok {
		return syscall.ENODEV
	}
	delete(f.links, l.Attrs().Name)
	return nil
}

func (f *fakeNetlink) LinkSetUp(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "up "+l.Attrs().Name)
	l.Attrs().Flags |= net.FlagUp
	return nil
}

func (f *fakeNetlink) LinkSetAlias(l netlink.Link, alias string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ops = append(f.ops, "alias "+l.Attrs().Name+" "+alias)
	l.Attrs().Alias = alias
	return nil
}

func (f *fakeNetlink) has(name string) bool {
	_, err := f.LinkByName(name)
	return err == nil
}

func (f *fakeNetlink) addExisting(l netlink.Link) { f.links[l.Attrs().Name] = l }

func tunLink(name, alias string) netlink.Link {
	return &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name, Alias: alias, MTU: 1380}, Mode: netlink.TUNTAP_MODE_TUN}
}

// wgLink is a kernel wireguard link wgmesh created (bare alias, as older
// versions wrote it).
func wgLink(name string) netlink.Link {
	return &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1420, Alias: linkAlias}}
}

// foreignWGLink is a kernel wireguard link of someone else (wg-quick, a CNI).
func foreignWGLink(name string) netlink.Link {
	return &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1420}}
}

// fakeWG is an in-memory WireGuard configured with WireGuard's semantics
// (the sim of diff_test.go), shared by all clients a test opens.
type fakeWG struct {
	mu         sync.Mutex
	devices    map[string]*sim
	typ        wgtypes.DeviceType
	configs    []wgtypes.Config
	configErr  error
	openClient int
	closed     int
}

func newFakeWG() *fakeWG {
	return &fakeWG{devices: map[string]*sim{}, typ: wgtypes.LinuxKernel}
}

// client returns a wgClient bound to f.
func (f *fakeWG) client() (wgClient, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.openClient++
	return fakeWGClient{f}, nil
}

// add makes a device exist (a created link).
func (f *fakeWG) add(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.devices[name] == nil {
		f.devices[name] = simFromDevice(nil)
	}
}

type fakeWGClient struct{ f *fakeWG }

func (c fakeWGClient) Device(name string) (*wgtypes.Device, error) {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	s, ok := c.f.devices[name]
	if !ok {
		return nil, os.ErrNotExist
	}
	d := deviceFromSim(s)
	d.Name, d.Type = name, c.f.typ
	d.PublicKey = wgtypes.Key(mesh.Key(s.Key).PublicKey())
	return d, nil
}

func (c fakeWGClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	if c.f.configErr != nil {
		return c.f.configErr
	}
	s, ok := c.f.devices[name]
	if !ok {
		return os.ErrNotExist
	}
	c.f.configs = append(c.f.configs, cfg)
	s.apply(&cfg, nil)
	return nil
}

func (c fakeWGClient) Close() error {
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	c.f.closed++
	return nil
}

// stubDevice stands in for the userspace backend in selection tests.
type stubDevice struct {
	name     string
	reattach bool
}

func (s *stubDevice) Configure(context.Context, mesh.DeviceConfig) error { return nil }
func (s *stubDevice) Name() string                                       { return s.name }
func (s *stubDevice) Backend() mesh.Backend                              { return mesh.BackendUserspace }
func (s *stubDevice) Stats(context.Context) ([]PeerStats, error)         { return nil, nil }
func (s *stubDevice) Offloads() []OffloadState                           { return nil }
func (s *stubDevice) Inflight() []InflightState                          { return nil }
func (s *stubDevice) Close() error                                       { return nil }

// fakeEnv wires the fakes together; creating a wireguard link also creates
// its fake WireGuard device, as the kernel does.
func fakeEnv(nl *fakeNetlink, wg *fakeWG) *env {
	return &env{
		nl: &linkingNetlink{fakeNetlink: nl, wg: wg},
		newWG: func() (wgClient, error) {
			return wg.client()
		},
		openUserspace: func(_ context.Context, o Options, _ *env, link netlink.Link) (Device, error) {
			return &stubDevice{name: o.Name, reattach: link != nil}, nil
		},
	}
}

type linkingNetlink struct {
	*fakeNetlink
	wg *fakeWG
}

func (l *linkingNetlink) LinkAdd(link netlink.Link) error {
	if err := l.fakeNetlink.LinkAdd(link); err != nil {
		return err
	}
	if link.Type() == kindWireguard {
		l.wg.add(link.Attrs().Name)
	}
	return nil
}

var errNotSupported = errors.New("operation not supported")
