package device

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wgmesh/wgmesh/mesh"
)

// tunPath is the TUN clone device.
const tunPath = "/dev/net/tun"

// userspace is wireguard-go on a persistent kernel TUN device (or on an
// in-memory TUN for tests), with its UAPI socket served for wg(8) and wgctrl
// (in-memory devices are configured in process instead, see ipcClient).
type userspace struct {
	name   string
	log    *slog.Logger
	nl     netlinkOps // nil for an in-memory device
	dev    *wgdevice.Device
	tun    tun.Device
	uapi   net.Listener  // nil for an in-memory device (configured in process)
	served chan struct{} // closed when the UAPI accept loop ends
	conf   *wgconf
	off    *offloadTracker
	// tx and rx are the in-flight windows (nil: no bound).
	tx, rx   *inflight
	closing  atomic.Bool
	once     sync.Once
	closeErr error

	greetMu sync.Mutex
	// greeted are the peers this process has started a handshake with, for
	// the private key greetedKey.
	greeted    map[mesh.Key]struct{}
	greetedKey mesh.Key
}

var _ Device = (*userspace)(nil)

// openUserspace attaches to the TUN interface link (nil: create it), starts
// wireguard-go on it and serves UAPI. With o.TUN set it uses that device and
// o.Bind instead of a kernel TUN and UDP sockets.
func openUserspace(ctx context.Context, o Options, e *env, link netlink.Link) (Device, error) {
	var (
		tdev    tun.Device
		bind    conn.Bind
		nl      netlinkOps
		created bool
		err     error
	)
	if o.TUN != nil {
		tdev, bind = o.TUN, o.Bind
	} else {
		nl = e.nl
		tdev, created, err = openTUN(o, e.nl, link)
		if err != nil {
			return nil, err
		}
		bind = conn.NewStdNetBind()
	}
	off := newOffloadTracker(tunOffloadAtOpen(o, tdev), udpOffloadAtOpen(o, bind))
	// Batches of datagrams larger than the underlay's MTU must still leave,
	// and offloads the kernel refuses are given up for the plain path (see
	// oversizeBind and offloadTUN).
	tx, rx := newInflight(o.InflightPackets, inflightMinStall, inflightMaxStall), newInflight(o.InflightPackets, inflightMinStall, inflightMaxStall)
	ob := newOversizeBind(bind, o.Logger, off)
	ob.tx, ob.rx = tx, rx
	if rx != nil {
		ob.idx = newLocalIndices()
	}
	bind = ob
	// From here the wireguard-go device owns tdev and bind: dev.Close closes
	// both. A persistent TUN survives that; a half-created one is deleted.
	dev := wgdevice.NewDevice(newOffloadTUN(tdev, o.Logger, off, tx, rx), bind, newWGLogger(o.Logger))
	fail := func(err error) (Device, error) {
		dev.Close()
		if created {
			if derr := deleteLink(nl, o.Name); derr != nil {
				err = errors.Join(err, derr)
			}
		}
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return fail(opError(o.Name, "open", err))
	}
	// An in-memory device is configured in process: no UAPI socket, so
	// no root and no /var/run/wireguard (see ipcClient).
	var (
		uapi net.Listener
		wg   wgClient = ipcClient{dev}
	)
	if o.TUN == nil {
		if uapi, err = listenUAPI(o.Name); err != nil {
			return fail(err)
		}
		if wg, err = e.newWG(); err != nil {
			uapi.Close()
			return fail(opError(o.Name, "open wgctrl", err))
		}
	}
	if err := dev.Up(); err != nil {
		if uapi != nil {
			uapi.Close()
		}
		wg.Close()
		return fail(opError(o.Name, "start wireguard-go", err))
	}
	u := &userspace{
		name:   o.Name,
		log:    o.Logger,
		nl:     nl,
		dev:    dev,
		tun:    tdev,
		uapi:   uapi,
		served: make(chan struct{}),
		conf:   &wgconf{name: o.Name, log: o.Logger, wg: wg},
		off:    off,
		tx:     tx,
		rx:     rx,
	}
	uapiAt := "in process"
	if uapi != nil {
		uapiAt = sockPath(o.Name)
		go u.serveUAPI()
	} else {
		close(u.served)
	}
	o.Logger.Info("userspace WireGuard device open",
		"created", created, "reattached", link != nil, "offloads", !o.DisableOffloads && o.TUN == nil,
		"uapi", uapiAt)
	return u, nil
}

// openTUN opens /dev/net/tun and attaches to (or creates) the interface,
// persistent, with or without the virtio-net header, and sets it up.
func openTUN(o Options, nl netlinkOps, link netlink.Link) (dev tun.Device, created bool, err error) {
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, tunOpenError(o.Name, err)
	}
	closeFD := true
	defer func() {
		if closeFD {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(o.Name)
	if err != nil {
		return nil, false, opError(o.Name, "attach TUN device", err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if !o.DisableOffloads {
		// The virtio-net header carries TSO/GRO metadata, which lets
		// wireguard-go read and write 64 KiB super-packets (and batch UDP
		// with GSO/GRO); the library enables the offloads when it sees it.
		flags |= unix.IFF_VNET_HDR
	}
	if link == nil {
		// Exclusive: fail rather than attach to an interface that appeared
		// since the look-up.
		flags |= unix.IFF_TUN_EXCL
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		e := &Error{Interface: o.Name, Op: "attach TUN device", Err: err, Hint: hintFor(err)}
		switch {
		case errors.Is(err, syscall.EBUSY) && link != nil:
			e.Hint = "another process holds the interface: is another wgmesh agent or wireguard-go running with this name?"
		case errors.Is(err, syscall.EBUSY):
			e.Hint = "an interface of this name appeared meanwhile; retry"
		case errors.Is(err, syscall.EINVAL) && link != nil:
			e.Hint = "the existing interface has incompatible flags (TAP or multi-queue); remove it with `wgmesh cleanup`"
		}
		return nil, false, e
	}
	created = link == nil
	undo := func(err error) (tun.Device, bool, error) {
		if created {
			// Still attached: clearing persist makes closing fd delete it.
			_ = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0)
		}
		return nil, false, err
	}
	if o.DisableOffloads {
		// A re-attached device may still advertise the offloads a previous
		// agent enabled; without the header the kernel must not send GSO
		// packets, so clear them explicitly.
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0); err != nil {
			return undo(opError(o.Name, "disable TUN offloads", err))
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return undo(opError(o.Name, "make TUN device persistent", err))
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return undo(opError(o.Name, "set TUN non-blocking", err))
	}
	mtu := o.MTU
	if link != nil && link.Attrs().MTU > 0 {
		mtu = link.Attrs().MTU // routing owns the MTU after creation
	}
	file := os.NewFile(uintptr(fd), tunPath)
	closeFD = false
	dev, err = tun.CreateTUNFromFile(file, mtu)
	if err != nil {
		if created {
			_ = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0)
		}
		file.Close()
		return nil, false, opError(o.Name, "start TUN device", err)
	}
	cleanup := func(err error) (tun.Device, bool, error) {
		if created {
			_ = setPersist(dev, false)
		}
		dev.Close()
		return nil, false, err
	}
	l, err := nl.LinkByName(o.Name)
	if err != nil {
		return cleanup(opError(o.Name, "look up TUN interface", err))
	}
	if created {
		if err := nl.LinkSetAlias(l, o.Alias); err != nil {
			return cleanup(opError(o.Name, "mark interface as wgmesh's (alias)", err))
		}
	}
	if err := nl.LinkSetUp(l); err != nil {
		return cleanup(opError(o.Name, "set link up", err))
	}
	return dev, created, nil
}

// setPersist sets or clears TUNSETPERSIST through the device's open file.
func setPersist(dev tun.Device, on bool) error {
	nt, ok := dev.(interface{ File() *os.File })
	if !ok || nt.File() == nil {
		return errors.New("TUN device has no file")
	}
	rc, err := nt.File().SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); err != nil {
		return err
	}
	return ierr
}

func deleteLink(nl netlinkOps, name string) error {
	l, err := nl.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return opError(name, "look up link to delete", err)
	}
	if err := nl.LinkDel(l); err != nil && !isLinkNotFound(err) {
		return opError(name, "delete link", err)
	}
	return nil
}

func sockPath(name string) string { return filepath.Join(uapiDir, name+".sock") }

// listenUAPI opens the UAPI socket the way wireguard-go's own daemon does
// (replacing a stale socket, refusing a live one).
func listenUAPI(name string) (net.Listener, error) {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		e := &Error{Interface: name, Op: "open UAPI socket " + sockPath(name), Err: err, Hint: hintFor(err)}
		switch {
		case socketAlive(sockPath(name)):
			e.Hint = "another process serves this socket: is another wgmesh agent or wireguard-go running with this interface name?"
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EROFS):
			e.Hint = uapiDir + " must be a writable directory (mount it into the container)"
		}
		return nil, e
	}
	defer f.Close() // UAPIListen keeps its own duplicate of the descriptor
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		os.Remove(sockPath(name))
		return nil, opError(name, "listen on UAPI socket "+sockPath(name), err)
	}
	return l, nil
}

// socketAlive reports whether a process accepts connections on the unix
// socket at path.
func socketAlive(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// serveUAPI answers wg(8) and wgctrl until the listener closes. The socket
// is also closed by the library when someone deletes the socket file; then
// `wg show` stops working until restart, which is logged.
func (u *userspace) serveUAPI() {
	defer close(u.served)
	for {
		c, err := u.uapi.Accept()
		if err != nil {
			if !u.closing.Load() {
				u.log.Error("UAPI socket stopped; wg show and configuration need an agent restart", "socket", sockPath(u.name), "error", err)
			}
			return
		}
		go u.dev.IpcHandle(c)
	}
}

func (u *userspace) Name() string          { return u.name }
func (u *userspace) Backend() mesh.Backend { return mesh.BackendUserspace }

func (u *userspace) Configure(ctx context.Context, cfg mesh.DeviceConfig) error {
	if err := u.conf.configure(ctx, cfg); err != nil {
		return err
	}
	u.greet(cfg)
	return nil
}

// greet starts a handshake with every peer this process has not greeted yet,
// and with every peer after the private key changed.
//
// A wireguard-go device that re-attaches after a restart starts without
// sessions, while its peers still hold the old ones: they keep sending on a
// session nobody can decrypt until their rekey timeout (15 s) runs out, and
// an idle peer never handshakes at all. The kernel module keeps its sessions
// across agent restarts, so only the userspace backend needs this. Greeting
// uses wireguard-go's own keepalive path (stage an empty packet; with no
// valid session that initiates a handshake and retries on its timers), so it
// costs one handshake per new peer and nothing on later reconciles.
func (u *userspace) greet(cfg mesh.DeviceConfig) {
	u.greetMu.Lock()
	defer u.greetMu.Unlock()
	if cfg.PrivateKey != u.greetedKey {
		u.greeted, u.greetedKey = nil, cfg.PrivateKey
	}
	next := make(map[mesh.Key]struct{}, len(cfg.Peers))
	for _, p := range cfg.Peers {
		next[p.PublicKey] = struct{}{}
		if _, done := u.greeted[p.PublicKey]; done {
			continue
		}
		if peer := u.dev.LookupPeer(wgdevice.NoisePublicKey(p.PublicKey)); peer != nil {
			peer.SendKeepalive()
		}
	}
	u.greeted = next
}

func (u *userspace) Stats(ctx context.Context) ([]PeerStats, error) { return u.conf.stats(ctx) }

// Offloads implements Device.
func (u *userspace) Offloads() []OffloadState { return u.off.snapshot() }

// Inflight implements Device.
func (u *userspace) Inflight() []InflightState {
	var out []InflightState
	if s, ok := u.tx.state("tx"); ok {
		out = append(out, s)
	}
	if s, ok := u.rx.state("rx"); ok {
		out = append(out, s)
	}
	return out
}

// Close stops serving UAPI and stops wireguard-go. A kernel TUN interface
// stays (persistent) with its addresses and routes; packets routed to it are
// dropped by the kernel until an agent re-attaches.
func (u *userspace) Close() error {
	u.once.Do(func() {
		u.closing.Store(true)
		var errs []error
		if u.uapi != nil {
			if err := u.uapi.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, opError(u.name, "close UAPI socket", err))
			}
		}
		<-u.served
		if err := u.conf.close(); err != nil {
			errs = append(errs, opError(u.name, "close wgctrl", err))
		}
		// A read waiting for the window would hold wireguard-go's close
		// up to a stall.
		u.tx.stop()
		u.rx.stop()
		u.dev.Close()
		u.closeErr = errors.Join(errs...)
		u.log.Info("userspace WireGuard device closed", "interface_kept", u.nl != nil)
	})
	return u.closeErr
}
