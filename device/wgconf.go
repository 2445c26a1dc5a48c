package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// wgconf is the one configuration path shared by both backends: read the
// current state through wgctrl, diff, send only the difference.
type wgconf struct {
	name string
	log  *slog.Logger

	mu     sync.Mutex // serializes Configure and guards closed and sent
	wg     wgClient
	closed bool
	// sent is the endpoint last written per peer, so a peer that roamed
	// (WireGuard follows its authenticated source address) is not pulled
	// back on every reconcile.
	sent map[wgtypes.Key]netip.AddrPort
}

func (c *wgconf) configure(ctx context.Context, want mesh.DeviceConfig) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return opError(c.name, "configure", net.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return opError(c.name, "configure", err)
	}
	cur, err := c.wg.Device(c.name)
	if err != nil {
		return opError(c.name, "configure: read current state through wgctrl", err)
	}
	if c.sent == nil {
		// First configure by this process: an earlier agent may have
		// written these peers, and WireGuard may have roamed them since.
		roams := adoptedRoams(cur, want, time.Now())
		for k, ep := range roams {
			c.log.Info("keeping the roamed endpoint of a peer configured by an earlier run",
				"peer", k.String(), "published", ep.String())
		}
		c.sent = roams
		if c.sent == nil {
			c.sent = map[wgtypes.Key]netip.AddrPort{}
		}
	}
	p, err := diff(cur, want, c.sent)
	if err != nil {
		return &Error{Interface: c.name, Op: "configure", Err: err}
	}
	if p.empty() {
		c.log.Debug("device configuration unchanged", "peers", p.Summary.Unchanged)
		return nil
	}
	for _, step := range []struct {
		phase string
		cfg   *wgtypes.Config
	}{{"withdraw", p.Withdraw}, {"grant", p.Grant}} {
		if step.cfg == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return opError(c.name, "configure ("+step.phase+")", err)
		}
		if err := c.wg.ConfigureDevice(c.name, *step.cfg); err != nil {
			return configureError(c.name, step.phase, step.cfg, err)
		}
	}
	c.sent = make(map[wgtypes.Key]netip.AddrPort, len(want.Peers))
	for _, pe := range want.Peers {
		if pe.Endpoint.IsValid() {
			c.sent[wgtypes.Key(pe.PublicKey)] = netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		}
	}
	c.log.Info("device configured",
		"peers_added", p.Summary.Added, "peers_removed", p.Summary.Removed,
		"peers_updated", p.Summary.Updated, "peers_unchanged", p.Summary.Unchanged,
		"private_key_changed", p.Summary.PrivateKey,
		"listen_port", want.ListenPort, "listen_port_changed", p.Summary.ListenPort,
		"fwmark", fmt.Sprintf("%#x", want.FwMark), "fwmark_changed", p.Summary.FwMark)
	return nil
}

// configureError explains a failed ConfigureDevice. The configuration itself
// is never printed: it may hold the private key.
func configureError(name, phase string, cfg *wgtypes.Config, err error) error {
	e := &Error{Interface: name, Op: "configure (" + phase + ")", Err: err, Hint: hintFor(err)}
	errno, ok := parseUAPIErrno(err.Error())
	inUse := errors.Is(err, syscall.EADDRINUSE) || (ok && errno == syscall.EADDRINUSE)
	if inUse && cfg.ListenPort != nil {
		e.Op = fmt.Sprintf("configure: listen on UDP port %d", *cfg.ListenPort)
		e.Hint = fmt.Sprintf("UDP port %d is in use by another process: stop it or choose another --listen-port", *cfg.ListenPort)
	}
	return e
}

func (c *wgconf) stats(ctx context.Context) ([]PeerStats, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, opError(c.name, "stats", net.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, opError(c.name, "stats", err)
	}
	d, err := c.wg.Device(c.name)
	if err != nil {
		return nil, opError(c.name, "stats: read through wgctrl", err)
	}
	return peerStats(d.Peers), nil
}

func (c *wgconf) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.wg.Close()
}

// peerStats converts wgctrl's peers, sorted by public key.
func peerStats(peers []wgtypes.Peer) []PeerStats {
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		ps := PeerStats{
			PublicKey:     mesh.Key(p.PublicKey),
			AllowedIPs:    currentPrefixes(p.AllowedIPs),
			ReceiveBytes:  p.ReceiveBytes,
			TransmitBytes: p.TransmitBytes,
		}
		if p.Endpoint != nil {
			ap := p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		// Both UAPI and netlink report "never" as the Unix epoch.
		if !p.LastHandshakeTime.IsZero() && p.LastHandshakeTime.Unix() > 0 {
			ps.LastHandshake = p.LastHandshakeTime
		} else {
			ps.LastHandshake = time.Time{}
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out
}

func backendOf(t wgtypes.DeviceType) mesh.Backend {
	switch t {
	case wgtypes.LinuxKernel:
		return mesh.BackendKernel
	case wgtypes.Userspace:
		return mesh.BackendUserspace
	}
	return ""
}

func inspect(name string, e *env) (Info, error) {
	if err := validateName(name); err != nil {
		return Info{}, err
	}
	wg, err := e.newWG()
	if err != nil {
		return Info{}, opError(name, "inspect: open wgctrl", err)
	}
	defer wg.Close()
	d, err := wg.Device(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			hint := "is the agent running and is this the right --interface?"
			if l, lerr := e.nl.LinkByName(name); lerr == nil && l.Type() == "tuntap" {
				hint = "the userspace interface exists but no agent is attached: its traffic is dropped until the agent runs again"
			}
			return Info{}, &Error{Interface: name, Op: "inspect", Err: fmt.Errorf("%w: %v", ErrNotFound, err), Hint: hint}
		}
		return Info{}, opError(name, "inspect", err)
	}
	return Info{
		Name:       name,
		Backend:    backendOf(d.Type),
		PublicKey:  mesh.Key(d.PublicKey),
		ListenPort: d.ListenPort,
		FwMark:     uint32(d.FirewallMark),
		Peers:      peerStats(d.Peers),
	}, nil
}

// roamFresh is how recent a handshake must be for adoptedRoams to trust a
// peer's current endpoint: WireGuard's REJECT_AFTER_TIME, after which a
// session is dead anyway.
const roamFresh = 180 * time.Second

// adoptedRoams is the sent map for the first configure of a process that
// found cur already configured (an agent restart; the kernel backend's
// interface outlives its agent): every wanted peer whose current endpoint
// differs from its published one but which completed a handshake within
// roamFresh of now counts as written with its published endpoint and roamed
// since, so diff keeps the endpoint that works (a NAT's) instead of pulling
// it back to the published one. A peer without a recent handshake gets its
// published endpoint as usual. Pure; nil when there is nothing to keep.
func adoptedRoams(cur *wgtypes.Device, want mesh.DeviceConfig, now time.Time) map[wgtypes.Key]netip.AddrPort {
	if cur == nil || len(cur.Peers) == 0 {
		return nil
	}
	byKey := make(map[wgtypes.Key]*wgtypes.Peer, len(cur.Peers))
	for i := range cur.Peers {
		byKey[cur.Peers[i].PublicKey] = &cur.Peers[i]
	}
	var sent map[wgtypes.Key]netip.AddrPort
	for _, pe := range want.Peers {
		if !pe.Endpoint.IsValid() {
			continue
		}
		ep := netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		c := byKey[wgtypes.Key(pe.PublicKey)]
		if c == nil || c.Endpoint == nil || sameEndpoint(c.Endpoint, ep) ||
			c.LastHandshakeTime.IsZero() || now.Sub(c.LastHandshakeTime) > roamFresh {
			continue
		}
		if sent == nil {
			sent = map[wgtypes.Key]netip.AddrPort{}
		}
		sent[wgtypes.Key(pe.PublicKey)] = ep
	}
	return sent
}
