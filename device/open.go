package device

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/instance"
)

// uapiDir is where wireguard-go, wg(8) and wgctrl meet: the UAPI sockets of
// userspace devices.
const uapiDir = "/var/run/wireguard"

// Link kinds as vishvananda/netlink names them.
const (
	kindTUN       = "tuntap"
	kindWireguard = "wireguard"
)

// open picks the backend. An existing interface decides by its kind, so a
// restart never silently swaps backends under live routes; otherwise auto
// tries the kernel and falls back to userspace.
func open(ctx context.Context, o Options, e *env) (Device, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, opError(o.Name, "open", err)
	}
	if o.TUN != nil {
		return e.openUserspace(ctx, o, e, nil)
	}

	link, err := e.nl.LinkByName(o.Name)
	switch {
	case err == nil:
		return openExisting(ctx, o, e, link)
	case !isLinkNotFound(err):
		return nil, opError(o.Name, "look up interface", err)
	}

	switch o.Backend {
	case ChoiceUserspace:
		return e.openUserspace(ctx, o, e, nil)
	case ChoiceKernel:
		return openKernel(o, e, nil)
	}
	d, err := openKernel(o, e, nil)
	if err == nil {
		o.Logger.Info("using kernel WireGuard backend")
		return d, nil
	}
	if !errors.Is(err, ErrKernelUnsupported) {
		return nil, err
	}
	o.Logger.Info("kernel WireGuard unavailable, using userspace backend (wireguard-go)", "reason", err)
	return e.openUserspace(ctx, o, e, nil)
}

// openExisting re-attaches to an interface left by a previous agent. Only
// interfaces wgmesh created (alias, see isOurs) are adopted, of either
// kind: a wireguard link of another owner (wg-quick, a CNI) is refused, not
// reconfigured.
func openExisting(ctx context.Context, o Options, e *env, link netlink.Link) (Device, error) {
	var (
		d   Device
		err error
	)
	switch kind := link.Type(); {
	case kind == kindWireguard && isOurs(link):
		if o.Backend == ChoiceUserspace {
			return nil, &Error{Interface: o.Name, Op: "open", Err: errors.New("exists as a kernel wireguard link, userspace backend requested"),
				Hint: "run `wgmesh cleanup --interface " + o.Name + "` first or use --backend kernel or auto"}
		}
		o.Logger.Info("re-using existing kernel WireGuard interface")
		d, err = openKernel(o, e, link)
	case kind == kindTUN && isOurTUN(link):
		if o.Backend == ChoiceKernel {
			return nil, &Error{Interface: o.Name, Op: "open", Err: errors.New("exists as a userspace (TUN) interface, kernel backend requested"),
				Hint: "run `wgmesh cleanup --interface " + o.Name + "` first or use --backend userspace or auto"}
		}
		o.Logger.Info("re-attaching to existing userspace interface")
		d, err = e.openUserspace(ctx, o, e, link)
	default:
		return nil, &Error{Interface: o.Name, Op: "open", Err: fmt.Errorf("exists as a %s interface not created by wgmesh (alias %q)", kind, link.Attrs().Alias),
			Hint: "choose another --interface or remove that interface"}
	}
	if err != nil {
		return nil, err
	}
	// Record this run's parameters; the previous run's are in the log.
	if old := link.Attrs().Alias; old != o.Alias {
		if aerr := e.nl.LinkSetAlias(link, o.Alias); aerr != nil {
			o.Logger.Warn("cannot record the instance's parameters in the interface alias", "alias", o.Alias, "error", aerr)
		} else {
			o.Logger.Info("interface alias updated", "from", old, "to", o.Alias)
		}
	}
	return d, nil
}

// isOurs reports whether link carries a wgmesh alias.
func isOurs(link netlink.Link) bool {
	_, ours := instance.ParseAlias(link.Attrs().Alias)
	return ours
}

// isOurTUN reports whether link is a TUN (not TAP) device wgmesh created.
func isOurTUN(link netlink.Link) bool {
	t, ok := link.(*netlink.Tuntap)
	if !ok || !isOurs(link) {
		return false
	}
	// netlink leaves Mode zero when the kernel does not report tun info.
	return t.Mode == 0 || t.Mode == netlink.TUNTAP_MODE_TUN
}

// remove deletes a wgmesh interface of either kind and a stale UAPI socket.
func remove(name string, e *env) error {
	if err := validateName(name); err != nil {
		return err
	}
	link, err := e.nl.LinkByName(name)
	switch {
	case isLinkNotFound(err):
	case err != nil:
		return opError(name, "remove: look up interface", err)
	case (link.Type() == kindWireguard && isOurs(link)) || (link.Type() == kindTUN && isOurTUN(link)):
		if err := e.nl.LinkDel(link); err != nil && !isLinkNotFound(err) {
			return opError(name, "remove: delete interface", err)
		}
	default:
		return &Error{Interface: name, Op: "remove", Err: fmt.Errorf("is a %s interface not created by wgmesh (alias %q); refusing to delete it", link.Type(), link.Attrs().Alias)}
	}
	return removeStaleSocket(name)
}

// removeStaleSocket deletes the UAPI socket of name unless a process still
// answers on it (a running wireguard-go or agent keeps its own).
func removeStaleSocket(name string) error {
	path := filepath.Join(uapiDir, name+".sock")
	if _, err := os.Lstat(path); err != nil {
		return nil
	}
	if socketAlive(path) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return opError(name, "remove stale UAPI socket "+path, err)
	}
	return nil
}
