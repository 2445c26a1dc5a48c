package device

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/internal/netnslab"
	"github.com/wgmesh/wgmesh/mesh"
)

const (
	labPort   = 51820
	labFwMark = 0x20000
	// transferSize is a little over 16 MiB, deliberately not a multiple
	// of any buffer size.
	transferSize = 16<<20 + 12345
)

// meshLab is a lab whose two namespaces each hold one WireGuard device,
// peered with each other: namespace i has tunnel address 10.244.(i+1).1 and
// routes the other's 10.244.(2-i).0/24 through its device.
type meshLab struct {
	*netnslab.Pair
	spec [2]deviceSpec
}

func newMeshLab(t *testing.T) *meshLab {
	t.Helper()
	netnslab.SkipUnlessRoot(t, "tcpdump", "ping")
	m := &meshLab{Pair: netnslab.NewPair(t, "wgmdev")}
	for i := range m.spec {
		priv, err := mesh.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		m.spec[i] = deviceSpec{
			ns: i,
			// Global names: UAPI sockets share /var/run/wireguard.
			name:   fmt.Sprintf("wgm%s%c", m.ID, 'a'+i),
			priv:   priv,
			inner:  netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 1}),
			routes: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i + 1), 0}), 24),
		}
		name := m.spec[i].name
		t.Cleanup(func() { os.Remove(sockPath(name)) })
	}
	return m
}

// helperConfig is the wgmesh device configuration of namespace i.
func (m *meshLab) helperConfig(i int) helperConfig {
	other := m.spec[1-i]
	return helperConfig{
		Name:       m.spec[i].name,
		ListenPort: labPort,
		FwMark:     labFwMark,
		Peers: []helperPeer{{
			PublicKey:  other.priv.PublicKey().String(),
			Endpoint:   netip.AddrPortFrom(m.Underlay[1-i], labPort).String(),
			AllowedIPs: []string{other.routes.String()},
		}},
	}
}

// startDevice runs a wgmesh device helper in namespace i and returns it and
// the interface index it reports.
func (m *meshLab) startDevice(t *testing.T, i int, hc helperConfig) (*helperProc, int) {
	t.Helper()
	h := startHelper(t, m.Lab, i, "device", writeHelperConfig(t, hc, m.spec[i].priv))
	line := h.line(t, 30*time.Second)
	idx, err := strconv.Atoi(strings.TrimPrefix(line, "ready "))
	if !strings.HasPrefix(line, "ready ") || err != nil {
		t.Fatalf("device helper in %s: %q\n%s", m.NS[i], line, h.stderr)
	}
	return h, idx
}

// addressAndRoute does routing's part in the lab: the tunnel address and a
// route for the peer's prefix through the device.
func (m *meshLab) addressAndRoute(t *testing.T, i int) {
	t.Helper()
	s := m.spec[i]
	m.Run(t, i, "ip", "addr", "add", s.inner.String()+"/32", "dev", s.name)
	m.Run(t, i, "ip", "route", "add", m.spec[1-i].routes.String(), "dev", s.name, "src", s.inner.String())
}

// checkCiphertextOnly asserts that the capture holds encrypted WireGuard
// traffic and nothing with an inner address or any other IPv4 payload.
func checkCiphertextOnly(t *testing.T, c *netnslab.Capture, minEncrypted int) {
	t.Helper()
	encrypted := c.Count(t, fmt.Sprintf("udp port %d", labPort))
	inner := c.Count(t, "net 10.244.0.0/16")
	other := c.Count(t, fmt.Sprintf("ip and not udp port %d", labPort))
	t.Logf("underlay capture (%s): %d WireGuard UDP packets, %d with inner addresses, %d other IPv4", c.Summary(), encrypted, inner, other)
	if inner != 0 {
		t.Errorf("plaintext on the underlay: %d packets with 10.244.0.0/16 addresses:\n%s", inner, c.Lines(t, "net 10.244.0.0/16", 10))
	}
	if other != 0 {
		t.Errorf("non-WireGuard IPv4 on the underlay: %d packets:\n%s", other, c.Lines(t, fmt.Sprintf("ip and not udp port %d", labPort), 10))
	}
	if encrypted < minEncrypted {
		t.Errorf("only %d WireGuard packets captured, want at least %d: the capture did not see the transfer", encrypted, minEncrypted)
	}
}

// TestPrivilegedUserspaceTransfer runs two wgmesh userspace devices in two
// namespaces, moves 16 MiB over TCP through the tunnel, checks the underlay
// carries only WireGuard UDP, and reads the device with wg(8) and Inspect.
func TestPrivilegedUserspaceTransfer(t *testing.T) {
	m := newMeshLab(t)
	for i := range m.spec {
		m.startDevice(t, i, m.helperConfig(i))
		m.addressAndRoute(t, i)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)

	capture := m.StartCapture(t, 0, netnslab.UnderlayIface)
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5201), transferSize)
	capture.Stop(t)
	// 16 MiB is at least 256 packets even if every one were a 64 KiB GSO
	// super-packet.
	checkCiphertextOnly(t, capture, 256)

	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg(8) not installed; skipping the wg show check")
	}
	out, err := m.Try(0, "wg", "show", m.spec[0].name, "dump")
	if err != nil {
		t.Fatalf("wg show %s dump: %v", m.spec[0].name, err)
	}
	d, err := parseWGDump(out)
	if err != nil {
		t.Fatalf("wg show dump: %v", err)
	}
	if d.PublicKey != m.spec[0].priv.PublicKey() || d.ListenPort != labPort || d.FwMark != labFwMark || len(d.Peers) != 1 {
		t.Fatalf("wg show dump interface: %+v", d)
	}
	p := d.Peers[0]
	if p.PublicKey != m.spec[1].priv.PublicKey() || p.Endpoint != netip.AddrPortFrom(m.Underlay[1], labPort) ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0] != m.spec[1].routes {
		t.Fatalf("wg show dump peer: %+v", p)
	}
	if p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > 5*time.Minute {
		t.Fatalf("wg show dump: handshake %v, want a recent one", p.LastHandshake)
	}
	if p.TX < transferSize {
		t.Fatalf("wg show dump: %d bytes sent, want at least the %d transferred", p.TX, transferSize)
	}

	// Inspect works from outside the owning process (here: another netns;
	// the UAPI socket directory is shared).
	info, err := Inspect(m.spec[0].name)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if info.Backend != mesh.BackendUserspace || info.PublicKey != d.PublicKey || len(info.Peers) != 1 ||
		info.Peers[0].TransmitBytes < transferSize || info.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("Inspect = %+v", info)
	}
}

// TestPrivilegedInflightTransfer moves TCP both ways through two userspace
// devices whose in-flight windows are small enough to be full most of the
// time (64 packets per direction): the bound must hold on the kernel's TUN
// and sockets, lose nothing and never need its stall reset. The offload state the
// devices report at the end is logged (a kernel that refused GSO shows
// here).
func TestPrivilegedInflightTransfer(t *testing.T) {
	m := newMeshLab(t)
	var hs []*helperProc
	for i := range m.spec {
		hc := m.helperConfig(i)
		hc.InflightPackets = 64
		h, _ := m.startDevice(t, i, hc)
		hs = append(hs, h)
		m.addressAndRoute(t, i)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5207), transferSize)
	transfer(t, m.Lab, 1, 0, netip.AddrPortFrom(m.spec[0].inner, 5208), transferSize)
	for i, h := range hs {
		h.stop(t)
		if err := h.wait(t, 10*time.Second); err != nil {
			t.Fatalf("closing helper %d: %v\n%s", i, err, h.stderr)
		}
		var lines []string
		windows := 0
		for _, l := range strings.Split(h.stderr.String(), "\n") {
			if strings.HasPrefix(l, "offload ") {
				lines = append(lines, l)
			}
			var dir string
			var limit, peak, resets int
			if n, _ := fmt.Sscanf(l, "inflight %s limit=%d peak=%d resets=%d", &dir, &limit, &peak, &resets); n == 4 {
				windows++
				lines = append(lines, l)
				// One read takes in at most a batch of 128 (wireguard-go's
				// IdealBatchSize) beyond the window.
				if peak > limit+128 || resets != 0 {
					t.Errorf("device %d %s window: peak %d (limit %d + 128), %d stall resets; want within the bound and none", i, dir, peak, limit, resets)
				}
			}
		}
		if len(lines) != 4 || windows != 2 {
			t.Errorf("device %d reported %d offload and window lines, want 2 + 2:\n%s", i, len(lines), h.stderr)
		}
		t.Logf("device %d: %s", i, strings.Join(lines, "; "))
	}
}

// TestPrivilegedInteropWireguardGo pairs a wgmesh device with Debian's
// wireguard-go configured by wg(8): ping and TCP work in both directions.
func TestPrivilegedInteropWireguardGo(t *testing.T) {
	const wgGo = "/usr/bin/wireguard-go"
	if _, err := os.Stat(wgGo); err != nil {
		t.Skipf("%s not installed", wgGo)
	}
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg(8) not installed")
	}
	m := newMeshLab(t)
	m.startDevice(t, 0, m.helperConfig(0))
	m.addressAndRoute(t, 0)

	// Namespace 1: the reference implementation.
	s := m.spec[1]
	cmd := m.Cmd(1, wgGo, "-f", s.name)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start wireguard-go: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !socketAlive(sockPath(s.name)) {
		if time.Now().After(deadline) {
			t.Fatalf("wireguard-go did not open %s:\n%s", sockPath(s.name), logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	keyFile := filepath.Join(t.TempDir(), "wggo.key")
	if err := os.WriteFile(keyFile, []byte(s.priv.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Run(t, 1, "wg", "set", s.name, "private-key", keyFile, "listen-port", strconv.Itoa(labPort),
		"peer", m.spec[0].priv.PublicKey().String(),
		"endpoint", netip.AddrPortFrom(m.Underlay[0], labPort).String(),
		"allowed-ips", m.spec[0].routes.String())
	m.Run(t, 1, "ip", "link", "set", s.name, "up")
	m.addressAndRoute(t, 1)

	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	m.WaitPing(t, 1, m.spec[0].inner, 20*time.Second)
	for i := range m.spec {
		if out, err := m.Try(i, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", m.spec[1-i].inner.String()); err != nil {
			t.Fatalf("ping from %s: %v\n%s", m.NS[i], err, out)
		}
	}
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5201), 4<<20)
	transfer(t, m.Lab, 1, 0, netip.AddrPortFrom(m.spec[0].inner, 5202), 4<<20)

	out, err := m.Try(1, "wg", "show", s.name, "dump")
	if err != nil {
		t.Fatalf("wg show on wireguard-go: %v", err)
	}
	d, err := parseWGDump(out)
	if err != nil || len(d.Peers) != 1 || d.Peers[0].PublicKey != m.spec[0].priv.PublicKey() || d.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("wireguard-go's view of the wgmesh peer: %+v, %v", d, err)
	}
}

// TestPrivilegedKillReattach kills the process owning a userspace device
// with SIGKILL: the interface and its route stay, traffic into it is dropped
// (nothing reaches the underlay in plaintext), and a new process re-attaches
// to the same interface and traffic flows again. A second process cannot
// take an interface that is in use, and Close then Remove removes it.
func TestPrivilegedKillReattach(t *testing.T) {
	m := newMeshLab(t)
	var owner *helperProc
	var index int
	for i := range m.spec {
		h, idx := m.startDevice(t, i, m.helperConfig(i))
		if i == 0 {
			owner, index = h, idx
		}
		m.addressAndRoute(t, i)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	name := m.spec[0].name
	// Routing owns the MTU after creation; a re-attach must keep it.
	m.Run(t, 0, "ip", "link", "set", name, "mtu", "1380")

	// A second agent on the same interface is refused with a clear error
	// and leaves the running one alone.
	dup := startHelper(t, m.Lab, 0, "device", writeHelperConfig(t, m.helperConfig(0), m.spec[0].priv))
	if err := dup.wait(t, 30*time.Second); err == nil {
		t.Fatal("a second device on an interface in use started")
	}
	if !strings.Contains(dup.stderr.String(), "another process holds the interface") {
		t.Fatalf("second device error does not explain: %s", dup.stderr)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 5*time.Second)

	if err := owner.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	owner.wait(t, 10*time.Second)

	link := m.Run(t, 0, "ip", "-o", "link", "show", name)
	if !strings.HasPrefix(link, strconv.Itoa(index)+":") {
		t.Fatalf("after kill -9 the interface is gone or replaced: %q (index was %d)", link, index)
	}
	if route := m.Run(t, 0, "ip", "route", "get", m.spec[1].inner.String()); !strings.Contains(route, "dev "+name) {
		t.Fatalf("after kill -9 traffic for the peer is routed elsewhere: %s", route)
	}
	dropped := func() int {
		s := strings.TrimSpace(m.Run(t, 0, "cat", "/sys/class/net/"+name+"/statistics/tx_dropped"))
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("tx_dropped of %s: %q", name, s)
		}
		return n
	}
	droppedBefore := dropped()
	capture := m.StartCapture(t, 0, netnslab.UnderlayIface)
	if out, err := m.Try(0, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", m.spec[1].inner.String()); err == nil {
		t.Fatalf("ping through a device without its process succeeded:\n%s", out)
	}
	// A TCP connection attempt as well: SYNs must be dropped too.
	if out, err := m.Try(0, "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+m.spec[1].inner.String()+"/5201"); err == nil {
		t.Fatalf("TCP connect through a device without its process succeeded: %s", out)
	}
	capture.Stop(t)
	if n := capture.Count(t, "net 10.244.0.0/16"); n != 0 {
		t.Fatalf("plaintext on the underlay after kill -9: %d packets:\n%s", n, capture.Lines(t, "net 10.244.0.0/16", 10))
	}
	if n := capture.Count(t, "tcp"); n != 0 {
		t.Fatalf("TCP on the underlay after kill -9: %d packets", n)
	}
	if d := dropped() - droppedBefore; d < 3 {
		t.Fatalf("the orphaned interface dropped %d packets, want at least the 3 pings", d)
	}

	// A new process re-attaches to the same interface; this one destroys
	// it when stopped.
	hc := m.helperConfig(0)
	hc.Remove = true
	// Also switch the offloads off, which a re-attach must clear on the
	// device the first agent set them on.
	hc.DisableOffloads = true
	again, idx := m.startDevice(t, 0, hc)
	if idx != index {
		t.Fatalf("re-attach created interface index %d, want the existing %d", idx, index)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5203), 1<<20)
	if out := m.Run(t, 0, "ip", "link", "show", name); !strings.Contains(out, "mtu 1380") || !strings.Contains(out, ",UP") {
		t.Fatalf("re-attached interface lost its MTU or is down:\n%s", out)
	}

	again.stop(t)
	if err := again.wait(t, 10*time.Second); err != nil {
		t.Fatalf("destroying helper: %v\n%s", err, again.stderr)
	}
	if out, err := m.Try(0, "ip", "link", "show", name); err == nil {
		t.Fatalf("Close and Remove left the interface: %s", out)
	}
	if _, err := os.Lstat(sockPath(name)); err == nil {
		t.Fatalf("Close and Remove left the UAPI socket %s", sockPath(name))
	}
}

// TestPrivilegedDisableOffloads runs one side without the virtio-net header
// and checks both the kernel's view of each TUN and that traffic flows.
func TestPrivilegedDisableOffloads(t *testing.T) {
	m := newMeshLab(t)
	var first *helperProc
	var index int
	for i := range m.spec {
		hc := m.helperConfig(i)
		hc.DisableOffloads = i == 0
		h, idx := m.startDevice(t, i, hc)
		if i == 0 {
			first, index = h, idx
		}
		m.addressAndRoute(t, i)
	}
	for i, want := range []string{"vnet_hdr off", "vnet_hdr on"} {
		out := m.Run(t, i, "ip", "-d", "link", "show", m.spec[i].name)
		for _, w := range []string{want, "persist on", fmt.Sprintf("mtu %d", DefaultMTU), ",UP", "alias " + linkAlias} {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: want %q in:\n%s", m.spec[i].name, w, out)
			}
		}
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5204), 4<<20)
	transfer(t, m.Lab, 1, 0, netip.AddrPortFrom(m.spec[0].inner, 5205), 4<<20)

	// A graceful Close keeps the interface; the next agent may switch the
	// offloads back on when it re-attaches.
	first.stop(t)
	if err := first.wait(t, 10*time.Second); err != nil {
		t.Fatalf("closing helper: %v\n%s", err, first.stderr)
	}
	// The device says why it does not use the offloads (status and
	// metrics read this).
	for _, want := range []string{
		`offload tun_gso active=false fallbacks=0 reason="off by configuration (--offloads=false)`,
		`offload udp_gso active=false fallbacks=0 reason="unused (--offloads=false)`,
	} {
		if !strings.Contains(first.stderr.String(), want) {
			t.Errorf("offloads-off device did not report %q:\n%s", want, first.stderr)
		}
	}
	_, idx := m.startDevice(t, 0, m.helperConfig(0))
	if idx != index {
		t.Fatalf("re-attach after Close created index %d, want the existing %d", idx, index)
	}
	if out := m.Run(t, 0, "ip", "-d", "link", "show", m.spec[0].name); !strings.Contains(out, "vnet_hdr on") {
		t.Fatalf("offloads not re-enabled on re-attach:\n%s", out)
	}
	m.WaitPing(t, 0, m.spec[1].inner, 20*time.Second)
	transfer(t, m.Lab, 0, 1, netip.AddrPortFrom(m.spec[1].inner, 5206), 4<<20)
}

// TestPrivilegedBackendChoice checks backend selection against the real
// kernel: auto falls back to userspace (with a log line saying why) where
// the kernel cannot create wireguard links, kernel then fails with advice,
// Remove deletes what Close left, and an unrelated interface of the same
// name is refused.
func TestPrivilegedBackendChoice(t *testing.T) {
	m := newMeshLab(t)
	name := m.spec[0].name
	probe := "wgp" + m.ID
	_, probeErr := m.Try(0, "ip", "link", "add", probe, "type", "wireguard")
	kernelWG := probeErr == nil
	if kernelWG {
		m.Run(t, 0, "ip", "link", "del", probe)
	}

	hc := m.helperConfig(0)
	hc.Backend = ChoiceKernel
	h := startHelper(t, m.Lab, 0, "device", writeHelperConfig(t, hc, m.spec[0].priv))
	if kernelWG {
		if l := h.line(t, 30*time.Second); !strings.HasPrefix(l, "ready ") {
			t.Fatalf("kernel backend: %q", l)
		}
		h.stop(t)
		m.Run(t, 0, "ip", "link", "del", name)
	} else {
		if err := h.wait(t, 30*time.Second); err == nil {
			t.Fatal("kernel backend started on a kernel without WireGuard")
		}
		for _, want := range []string{"device " + name + ": create wireguard link", "modprobe wireguard"} {
			if !strings.Contains(h.stderr.String(), want) {
				t.Fatalf("kernel backend error lacks %q:\n%s", want, h.stderr)
			}
		}
		if _, err := m.Try(0, "ip", "link", "show", name); err == nil {
			t.Fatal("failed kernel open left an interface behind")
		}
	}

	hc.Backend = ChoiceAuto
	h = startHelper(t, m.Lab, 0, "device", writeHelperConfig(t, hc, m.spec[0].priv))
	if l := h.line(t, 30*time.Second); !strings.HasPrefix(l, "ready ") {
		t.Fatalf("auto backend: %q\n%s", l, h.stderr)
	}
	kind := "tun"
	logLine := "kernel WireGuard unavailable, using userspace backend"
	if kernelWG {
		kind, logLine = "wireguard", "using kernel WireGuard backend"
	}
	if out := m.Run(t, 0, "ip", "-d", "link", "show", name); !strings.Contains(out, "\n    "+kind+" ") {
		t.Fatalf("auto chose the wrong kind, want %s:\n%s", kind, out)
	}
	if !strings.Contains(h.stderr.String(), logLine) {
		t.Fatalf("auto did not log %q:\n%s", logLine, h.stderr)
	}
	h.stop(t)
	if err := h.wait(t, 10*time.Second); err != nil {
		t.Fatalf("closing helper: %v\n%s", err, h.stderr)
	}
	if _, err := m.Try(0, "ip", "link", "show", name); err != nil {
		t.Fatal("Close removed the interface")
	}
	// Remove (wgmesh cleanup) deletes it, and is happy when it is gone.
	for range 2 {
		rm := startHelper(t, m.Lab, 0, "remove", name)
		if err := rm.wait(t, 30*time.Second); err != nil {
			t.Fatalf("Remove: %v\n%s", err, rm.stderr)
		}
	}
	if _, err := m.Try(0, "ip", "link", "show", name); err == nil {
		t.Fatal("Remove left the interface")
	}

	m.Run(t, 0, "ip", "link", "add", name, "type", "veth", "peer", "name", name+"p")
	hc.Backend = ChoiceAuto
	h = startHelper(t, m.Lab, 0, "device", writeHelperConfig(t, hc, m.spec[0].priv))
	if err := h.wait(t, 30*time.Second); err == nil {
		t.Fatal("opened over an unrelated veth interface")
	}
	if !strings.Contains(h.stderr.String(), "exists as a veth interface not created by wgmesh") {
		t.Fatalf("error does not explain the conflict:\n%s", h.stderr)
	}
}

// TestPrivilegedPortInUse checks that a listen port held by another process
// yields an error naming the interface and the port.
func TestPrivilegedPortInUse(t *testing.T) {
	m := newMeshLab(t)
	m.startDevice(t, 0, m.helperConfig(0))
	// A second device in the same namespace on the same port.
	hc := m.helperConfig(0)
	hc.Name = m.spec[1].name
	other, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, m.Lab, 0, "device", writeHelperConfig(t, hc, other))
	if err := h.wait(t, 30*time.Second); err == nil {
		t.Fatal("a second device got a listen port that is in use")
	}
	want := fmt.Sprintf("device %s: configure: listen on UDP port %d", hc.Name, labPort)
	for _, w := range []string{want, "is in use by another process", "--listen-port"} {
		if !strings.Contains(h.stderr.String(), w) {
			t.Fatalf("error lacks %q:\n%s", w, h.stderr)
		}
	}
}
