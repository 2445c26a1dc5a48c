package instance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// ErrClash is wrapped by every error Check returns for a clash.
var ErrClash = errors.New("clash")

// startWait bounds the wait for another agent's start (Begin).
const startWait = 30 * time.Second

// Claim is an instance being started or running: it holds the instance
// lock for its whole life and the start lock until Started.
type Claim struct {
	lock, start *Lock
}

// Begin claims the instance p.Interface in this network namespace before
// anything is changed: it takes the instance lock (refused, naming the
// pid, while another agent runs for the interface), waits for any other
// agent that is starting, and checks p against everything else here (see
// Check). On success the caller creates or adopts its interface, records
// p in its alias, calls Started, and keeps the Claim until it exits.
func Begin(ctx context.Context, p Params) (*Claim, error) {
	lock, err := Acquire(p.Interface)
	if err != nil {
		return nil, err
	}
	start, err := acquireStart(ctx, startWait)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if err := Check(p); err != nil {
		start.Close()
		lock.Close()
		return nil, err
	}
	return &Claim{lock: lock, start: start}, nil
}

// Started lets the next agent start: call it once the interface carries
// this instance's alias, so its check sees this one. Idempotent.
func (c *Claim) Started() {
	c.start.Close()
}

// Close releases the claim. Idempotent.
func (c *Claim) Close() error {
	c.start.Close()
	return c.lock.Close()
}

// Check refuses p when it clashes with what else runs in this network
// namespace:
//   - another wgmesh interface whose alias records the same route table or
//     the same listen port (running or not: a stopped instance's rules and
//     routes are still in place);
//   - any other WireGuard device, kernel or userspace (wgctrl), listening
//     on p.ListenPort: another wgmesh instance, or Calico, Flannel, Kilo,
//     KubeSpan, wg-quick, which all default to 51820 (the agent's default,
//     51822, keeps clear of them; --listen-port 51820 meets them).
//
// p's own interface is skipped (the device package refuses it when it is
// not wgmesh's). Every clash is reported, joined, each wrapping ErrClash
// and naming the other interface and the flag to change.
func Check(p Params) error {
	return systemHost().check(p)
}

// linkInfo is an interface as the check sees it.
type linkInfo struct {
	Name, Kind, Alias string
}

// host is what the check reads from the system; tests replace it.
type host struct {
	links func() ([]linkInfo, error)
	// wgPort is the listen port of the WireGuard device name; ok is false
	// when name is not a WireGuard device that answers.
	wgPort func(name string) (port int, ok bool)
	// holder is Holder.
	holder func(iface string) (pid int, ok bool)
	close  func()
}

func systemHost() host {
	var wg *wgctrl.Client
	return host{
		links: func() ([]linkInfo, error) {
			ls, err := netlink.LinkList()
			if err != nil {
				return nil, fmt.Errorf("list interfaces: %w", err)
			}
			out := make([]linkInfo, 0, len(ls))
			for _, l := range ls {
				out = append(out, linkInfo{Name: l.Attrs().Name, Kind: l.Type(), Alias: l.Attrs().Alias})
			}
			return out, nil
		},
		wgPort: func(name string) (int, bool) {
			if wg == nil {
				c, err := wgctrl.New()
				if err != nil {
					return 0, false
				}
				wg = c
			}
			d, err := wg.Device(name)
			if err != nil {
				return 0, false
			}
			return d.ListenPort, true
		},
		holder: Holder,
		close: func() {
			if wg != nil {
				wg.Close()
			}
		},
	}
}

// WireGuard-capable link kinds as vishvananda/netlink names them: the
// kernel's wireguard links and the TUN devices userspace implementations
// (wireguard-go, boringtun, wgmesh's own backend) run on.
var wgKinds = []string{"wireguard", "tuntap"}

func (h host) check(p Params) error {
	if h.close != nil {
		defer h.close()
	}
	links, err := h.links()
	if err != nil {
		return fmt.Errorf("check for other instances: %w", err)
	}
	var errs []error
	for _, l := range links {
		if l.Name == p.Interface || !slices.Contains(wgKinds, l.Kind) {
			continue
		}
		q, ours := ParseAlias(l.Alias)
		who := fmt.Sprintf("WireGuard interface %s (not wgmesh's)", l.Name)
		if ours {
			who = fmt.Sprintf("wgmesh instance %s (%s)", l.Name, h.state(l.Name))
		}
		if ours {
			for _, t := range []struct {
				n    int
				flag string
			}{{p.Table, "--route-table"}, {p.HostTable, "--host-route-table"}} {
				if t.n > 0 && (q.Table == t.n || q.HostTable == t.n) {
					errs = append(errs, fmt.Errorf("%w: route table %d is used by %s: pick another %s", ErrClash, t.n, who, t.flag))
				}
			}
		}
		port := q.ListenPort
		if live, ok := h.wgPort(l.Name); ok {
			port = live
		}
		if p.ListenPort > 0 && port == p.ListenPort {
			errs = append(errs, fmt.Errorf("%w: listen port %d is used by %s: pick another --listen-port", ErrClash, p.ListenPort, who))
		}
	}
	return errors.Join(errs...)
}

// state says whether an agent runs for the wgmesh interface iface.
func (h host) state(iface string) string {
	if pid, ok := h.holder(iface); ok {
		if pid > 0 {
			return fmt.Sprintf("agent pid %d", pid)
		}
		return "agent running"
	}
	return "no agent running; `wgmesh cleanup --interface " + iface + "` with its flags removes it"
}
