package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

func TestKernelBackendLifecycle(t *testing.T) {
	nl, wg := newFakeNetlink(), newFakeWG()
	ctx := context.Background()
	d, err := open(ctx, Options{Name: "wgk0", Backend: ChoiceKernel, MTU: 1380}, fakeEnv(nl, wg))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if d.Backend() != mesh.BackendKernel || d.Name() != "wgk0" {
		t.Fatalf("got %s/%s, want kernel/wgk0", d.Backend(), d.Name())
	}
	wantOps := []string{"add wgk0 type wireguard mtu 1380", "alias wgk0 wgmesh", "up wgk0"}
	if diff := cmp.Diff(wantOps, nl.ops); diff != "" {
		t.Fatalf("netlink ops (-want +got):\n%s", diff)
	}

	cfg := baseConfig()
	if err := d.Configure(ctx, cfg); err != nil {
		t.Fatalf("configure: %v", err)
	}
	if len(wg.configs) != 1 {
		t.Fatalf("first configure sent %d configs, want 1 (grant only)", len(wg.configs))
	}
	if err := d.Configure(ctx, cfg); err != nil {
		t.Fatalf("configure again: %v", err)
	}
	if len(wg.configs) != 1 {
		t.Fatalf("unchanged configure sent %d more configs, want none", len(wg.configs)-1)
	}
	cfg.Peers[1].AllowedIPs = pfx("10.244.1.0/24")
	cfg.Peers[0].AllowedIPs = pfx("fd00:10:244:1::/64")
	if err := d.Configure(ctx, cfg); err != nil {
		t.Fatalf("configure move: %v", err)
	}
	if len(wg.configs) != 3 {
		t.Fatalf("a prefix move sent %d configs, want withdraw+grant", len(wg.configs)-1)
	}

	st, err := d.Stats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	var got []string
	for _, p := range st {
		got = append(got, fmt.Sprintf("%s %v %v", p.PublicKey, p.Endpoint, p.AllowedIPs))
	}
	want := []string{
		fmt.Sprintf("%s %v %v", peerX, epX, pfx("fd00:10:244:1::/64")),
		fmt.Sprintf("%s %v %v", peerY, epY, pfx("10.244.1.0/24")),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("stats (-want +got):\n%s", diff)
	}

	if err := d.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if !nl.has("wgk0") {
		t.Fatal("Close removed the interface; it must stay")
	}
	if err := d.Configure(ctx, cfg); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("configure after close = %v, want net.ErrClosed", err)
	}
	if err := remove("wgk0", fakeEnv(nl, wg)); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if nl.has("wgk0") {
		t.Fatal("Remove left the interface")
	}
	if err := remove("wgk0", fakeEnv(nl, wg)); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if wg.closed != 1 {
		t.Fatalf("wgctrl client closed %d times, want 1", wg.closed)
	}
}

func TestOpenSelectsBackend(t *testing.T) {
	tests := []struct {
		name     string
		choice   Choice
		existing func() []netlink.Link
		addErr   error
		want     string // "kernel", "userspace", "userspace-reattach" or an error substring
		wantLog  string
	}{
		{name: "auto uses the kernel when it can", choice: ChoiceAuto, want: "kernel", wantLog: "using kernel WireGuard backend"},
		{name: "auto falls back on EOPNOTSUPP", choice: ChoiceAuto, addErr: syscall.EOPNOTSUPP, want: "userspace",
			wantLog: "kernel WireGuard unavailable, using userspace backend"},
		{name: "auto falls back on unknown device type", choice: ChoiceAuto, addErr: errors.New("Unknown device type"), want: "userspace"},
		{name: "auto does not fall back on EPERM", choice: ChoiceAuto, addErr: syscall.EPERM, want: "needs CAP_NET_ADMIN"},
		{name: "kernel without module fails with advice", choice: ChoiceKernel, addErr: syscall.EOPNOTSUPP, want: "modprobe wireguard"},
		{name: "kernel creation failure names the operation", choice: ChoiceKernel, addErr: syscall.EEXIST, want: "device wgs0: create wireguard link: file exists"},
		{name: "userspace never tries the kernel", choice: ChoiceUserspace, addErr: errNotSupported, want: "userspace"},
		{name: "existing wgmesh TUN is re-attached", choice: ChoiceAuto, existing: func() []netlink.Link { return []netlink.Link{tunLink("wgs0", linkAlias)} }, want: "userspace-reattach"},
		{name: "existing wgmesh TUN with userspace", choice: ChoiceUserspace, existing: func() []netlink.Link { return []netlink.Link{tunLink("wgs0", linkAlias)} }, want: "userspace-reattach"},
		{name: "existing wireguard link is adopted", choice: ChoiceAuto, existing: func() []netlink.Link { return []netlink.Link{wgLink("wgs0")} }, want: "kernel"},
		{name: "existing TUN refuses kernel", choice: ChoiceKernel, existing: func() []netlink.Link { return []netlink.Link{tunLink("wgs0", linkAlias)} },
			want: "exists as a userspace (TUN) interface, kernel backend requested"},
		{name: "existing wireguard refuses userspace", choice: ChoiceUserspace, existing: func() []netlink.Link { return []netlink.Link{wgLink("wgs0")} },
			want: "exists as a kernel wireguard link, userspace backend requested"},
		{name: "foreign TUN is not adopted", choice: ChoiceAuto, existing: func() []netlink.Link { return []netlink.Link{tunLink("wgs0", "")} },
			want: "exists as a tuntap interface not created by wgmesh"},
		{name: "foreign wireguard link is not adopted", choice: ChoiceAuto, existing: func() []netlink.Link { return []netlink.Link{foreignWGLink("wgs0")} },
			want: `exists as a wireguard interface not created by wgmesh (alias "")`},
		{name: "instance alias is wgmesh's", choice: ChoiceAuto, existing: func() []netlink.Link {
			return []netlink.Link{tunLink("wgs0", "wgmesh table=51821 pref=98 mark=0x40000 port=51821")}
		}, want: "userspace-reattach"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nl, wg := newFakeNetlink(), newFakeWG()
			nl.addErr = tc.addErr
			if tc.existing != nil {
				for _, l := range tc.existing() {
					nl.addExisting(l)
				}
			}
			var logs bytes.Buffer
			o := Options{Name: "wgs0", Backend: tc.choice, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
			d, err := open(context.Background(), o, fakeEnv(nl, wg))
			var got string
			switch {
			case err != nil:
				got = err.Error()
			case d.Backend() == mesh.BackendKernel:
				got = "kernel"
			case d.(*stubDevice).reattach:
				got = "userspace-reattach"
			default:
				got = "userspace"
			}
			if !strings.Contains(got, tc.want) {
				t.Fatalf("open = %q, want %q", got, tc.want)
			}
			if !strings.Contains(logs.String(), tc.wantLog) {
				t.Fatalf("log %q does not contain %q", logs.String(), tc.wantLog)
			}
			if strings.HasPrefix(tc.want, "userspace") && tc.choice == ChoiceAuto && tc.addErr != nil && !strings.Contains(logs.String(), "reason=") {
				t.Fatalf("fallback log does not say why: %q", logs.String())
			}
		})
	}
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		o    Options
		want string
	}{
		{Options{Name: "this-name-is-too-long"}, "21 bytes, the kernel allows 15"},
		{Options{Name: "a/b"}, "not allowed"},
		{Options{Backend: "fast"}, `Backend "fast"`},
		{Options{MTU: 67}, "MTU 67"},
		{Options{MTU: 70000}, "MTU 70000"},
		{Options{Backend: ChoiceKernel, TUN: tuntest.NewChannelTUN().TUN(), Bind: nil}, "TUN and Bind must be set together"},
	}
	for _, tc := range tests {
		_, err := open(context.Background(), tc.o, fakeEnv(newFakeNetlink(), newFakeWG()))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("open(%+v) = %v, want error containing %q", tc.o, err, tc.want)
		}
	}
	o, err := Options{}.withDefaults()
	if err != nil || o.Name != DefaultName || o.Backend != ChoiceAuto || o.MTU != DefaultMTU || o.Logger == nil {
		t.Errorf("defaults = %+v, %v", o, err)
	}
}

func TestRemove(t *testing.T) {
	nl, wg := newFakeNetlink(), newFakeWG()
	nl.addExisting(wgLink("wgk1"))
	nl.addExisting(tunLink("wgu1", linkAlias))
	nl.addExisting(tunLink("tun9", ""))
	nl.addExisting(foreignWGLink("wg0"))
	e := fakeEnv(nl, wg)
	for _, name := range []string{"wgk1", "wgu1", "absent0"} {
		if err := remove(name, e); err != nil {
			t.Errorf("remove %s: %v", name, err)
		}
		if nl.has(name) {
			t.Errorf("remove %s left the interface", name)
		}
	}
	if err := remove("tun9", e); err == nil || !strings.Contains(err.Error(), "not created by wgmesh") {
		t.Errorf("remove of a foreign TUN = %v, want refusal", err)
	}
	if !nl.has("tun9") {
		t.Error("remove deleted a foreign TUN")
	}
	if err := remove("wg0", e); err == nil || !strings.Contains(err.Error(), "not created by wgmesh") {
		t.Errorf("remove of a foreign wireguard link = %v, want refusal", err)
	}
	if !nl.has("wg0") {
		t.Error("remove deleted a foreign wireguard link")
	}
}

// TestAlias: a created interface carries Options.Alias; an adopted one of
// ours is updated to it; an alias that does not mark wgmesh's is refused.
func TestAlias(t *testing.T) {
	const alias = "wgmesh table=51821 pref=98 mark=0x40000 port=51821"
	nl, wg := newFakeNetlink(), newFakeWG()
	d, err := open(context.Background(), Options{Name: "wga0", Backend: ChoiceKernel, Alias: alias}, fakeEnv(nl, wg))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if !slices.Contains(nl.ops, "alias wga0 "+alias) {
		t.Errorf("created interface: ops %q lack the alias", nl.ops)
	}
	nl.addExisting(tunLink("wga1", linkAlias))
	d, err = open(context.Background(), Options{Name: "wga1", Alias: alias}, fakeEnv(nl, wg))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if !slices.Contains(nl.ops, "alias wga1 "+alias) {
		t.Errorf("adopted interface: ops %q lack the alias update", nl.ops)
	}
	if _, err := open(context.Background(), Options{Name: "wga2", Alias: "flannel"}, fakeEnv(nl, wg)); err == nil || !strings.Contains(err.Error(), `Alias "flannel"`) {
		t.Errorf("open with a foreign alias = %v, want refusal", err)
	}
}

func TestInspect(t *testing.T) {
	nl, wg := newFakeNetlink(), newFakeWG()
	e := fakeEnv(nl, wg)
	d, err := open(context.Background(), Options{Name: "wgi0", Backend: ChoiceKernel}, e)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Configure(context.Background(), baseConfig()); err != nil {
		t.Fatal(err)
	}
	info, err := inspect("wgi0", e)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if info.Backend != mesh.BackendKernel || info.PublicKey != privA.PublicKey() || info.ListenPort != 51820 ||
		info.FwMark != 0x20000 || len(info.Peers) != 2 {
		t.Fatalf("inspect = %+v", info)
	}

	_, err = inspect("nope0", e)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "is the agent running") {
		t.Fatalf("inspect of a missing device = %v", err)
	}
	nl.addExisting(tunLink("wgu2", linkAlias))
	_, err = inspect("wgu2", e)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no agent is attached") {
		t.Fatalf("inspect of an orphaned TUN = %v", err)
	}
}

func TestConfigureErrors(t *testing.T) {
	nl, wg := newFakeNetlink(), newFakeWG()
	d, err := open(context.Background(), Options{Name: "wge0", Backend: ChoiceKernel}, fakeEnv(nl, wg))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// wgctrl's userspace client reports the UAPI errno as text.
	// wireguard-go negates it; both signs must be understood.
	for _, text := range []string{"read: wguser: errno=-98", "read: wguser: errno=98"} {
		wg.configErr = errors.New(text)
		err = d.Configure(context.Background(), baseConfig())
		if err == nil || !strings.Contains(err.Error(), "UDP port 51820 is in use") || !strings.Contains(err.Error(), "device wge0") {
			t.Fatalf("port in use (%s): %v", text, err)
		}
	}
	wg.configErr = syscall.EADDRINUSE
	if err := d.Configure(context.Background(), baseConfig()); err == nil || !strings.Contains(err.Error(), "UDP port 51820 is in use") {
		t.Fatalf("port in use (netlink errno): %v", err)
	}
	wg.configErr = syscall.EPERM
	err = d.Configure(context.Background(), baseConfig())
	if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Fatalf("EPERM: %v", err)
	}
	for _, e := range []error{err} {
		if strings.Contains(e.Error(), privA.String()) {
			t.Fatalf("error leaks the private key: %v", e)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Configure(ctx, baseConfig()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled configure = %v", err)
	}
}

func TestPeerStatsHandshake(t *testing.T) {
	// wgctrl reports "never" as the Unix epoch.
	st := peerStats([]wgtypes.Peer{{PublicKey: wgk(peerX), LastHandshakeTime: time.Unix(0, 0)}, {PublicKey: wgk(peerY), LastHandshakeTime: time.Unix(1700000000, 0)}})
	if !st[0].LastHandshake.IsZero() || st[1].LastHandshake.Unix() != 1700000000 {
		t.Fatalf("handshakes = %v, %v", st[0].LastHandshake, st[1].LastHandshake)
	}
	if st[0].Endpoint != (netip.AddrPort{}) {
		t.Fatalf("endpoint of a peer without one = %v", st[0].Endpoint)
	}
}

func TestHints(t *testing.T) {
	err := tunOpenError("wgmesh0", syscall.ENOENT)
	if !strings.Contains(err.Error(), "device wgmesh0: open /dev/net/tun") || !strings.Contains(err.Error(), "mount /dev/net/tun into the container") {
		t.Errorf("missing TUN: %v", err)
	}
	err = tunOpenError("wgmesh0", syscall.EPERM)
	if !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("EPERM: %v", err)
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"wgmesh0", "", ".", "..", "a/b", "wg:0", "0123456789abcdef", "wg mesh", "wg\x00", "ümlaut"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := validateName(s)
		if err != nil {
			return
		}
		if len(s) == 0 || len(s) > maxNameLen || strings.ContainsAny(s, "/: \t\n\x00%") || s == "." || s == ".." {
			t.Fatalf("validateName accepted %q", s)
		}
	})
}

func FuzzParseUAPIErrno(f *testing.F) {
	for _, s := range []string{"read: wguser: errno=98", "read: wguser: errno=-98", "errno=0", "errno=--5", "errno=", "errno=99999999999", "x errno=1 errno=22", "errno=-1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := parseUAPIErrno(s)
		if ok && (n == 0 || n > 65535 || !strings.Contains(s, "errno=")) {
			t.Fatalf("parseUAPIErrno(%q) = %d", s, n)
		}
	})
}
