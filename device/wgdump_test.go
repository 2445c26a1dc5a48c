package device

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// wgDump is the parsed output of `wg show <iface> dump`. The private key of
// the first line is deliberately not kept, so a failing test can print the
// value without leaking it.
type wgDump struct {
	PublicKey  mesh.Key
	ListenPort int
	FwMark     uint32
	Peers      []wgDumpPeer
}

type wgDumpPeer struct {
	PublicKey     mesh.Key
	Endpoint      netip.AddrPort // zero for "(none)"
	AllowedIPs    []netip.Prefix
	LastHandshake time.Time // zero for 0
	RX, TX        int64
	Keepalive     int // seconds; 0 for "off"
}

// parseWGDump parses the tab-separated dump format of wg(8): one interface
// line (private-key, public-key, listen-port, fwmark) and one line per peer
// (public-key, preshared-key, endpoint, allowed-ips, latest-handshake,
// transfer-rx, transfer-tx, persistent-keepalive).
func parseWGDump(s string) (wgDump, error) {
	var d wgDump
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		return d, fmt.Errorf("wg dump: empty")
	}
	f := strings.Split(lines[0], "\t")
	if len(f) != 4 {
		return d, fmt.Errorf("wg dump line 1: %d fields, want 4", len(f))
	}
	var err error
	if d.PublicKey, err = mesh.ParseKey(f[1]); err != nil {
		return d, fmt.Errorf("wg dump line 1: public key: %w", err)
	}
	if d.ListenPort, err = strconv.Atoi(f[2]); err != nil || d.ListenPort < 0 || d.ListenPort > 65535 {
		return d, fmt.Errorf("wg dump line 1: listen port %q", f[2])
	}
	if f[3] != "off" {
		m, err := strconv.ParseUint(f[3], 0, 32)
		if err != nil {
			return d, fmt.Errorf("wg dump line 1: fwmark %q", f[3])
		}
		d.FwMark = uint32(m)
	}
	for i, line := range lines[1:] {
		n := i + 2
		f := strings.Split(line, "\t")
		if len(f) != 8 {
			return d, fmt.Errorf("wg dump line %d: %d fields, want 8", n, len(f))
		}
		var p wgDumpPeer
		if p.PublicKey, err = mesh.ParseKey(f[0]); err != nil {
			return d, fmt.Errorf("wg dump line %d: public key: %w", n, err)
		}
		if f[2] != "(none)" {
			if p.Endpoint, err = netip.ParseAddrPort(f[2]); err != nil {
				return d, fmt.Errorf("wg dump line %d: endpoint: %w", n, err)
			}
		}
		if f[3] != "(none)" {
			for _, s := range strings.Split(f[3], ",") {
				q, err := netip.ParsePrefix(s)
				if err != nil {
					return d, fmt.Errorf("wg dump line %d: allowed IP: %w", n, err)
				}
				p.AllowedIPs = append(p.AllowedIPs, q)
			}
		}
		hs, err := strconv.ParseInt(f[4], 10, 64)
		if err != nil || hs < 0 {
			return d, fmt.Errorf("wg dump line %d: latest handshake %q", n, f[4])
		}
		if hs > 0 {
			p.LastHandshake = time.Unix(hs, 0)
		}
		if p.RX, err = strconv.ParseInt(f[5], 10, 64); err != nil || p.RX < 0 {
			return d, fmt.Errorf("wg dump line %d: rx %q", n, f[5])
		}
		if p.TX, err = strconv.ParseInt(f[6], 10, 64); err != nil || p.TX < 0 {
			return d, fmt.Errorf("wg dump line %d: tx %q", n, f[6])
		}
		if f[7] != "off" {
			if p.Keepalive, err = strconv.Atoi(f[7]); err != nil || p.Keepalive < 0 || p.Keepalive > 65535 {
				return d, fmt.Errorf("wg dump line %d: keepalive %q", n, f[7])
			}
		}
		d.Peers = append(d.Peers, p)
	}
	return d, nil
}

func TestParseWGDump(t *testing.T) {
	priv, pub, peer := testKey(1), testKey(1).PublicKey(), testKey(10)
	in := fmt.Sprintf("%s\t%s\t51820\t0x20000\n%s\t(none)\t198.18.0.2:51820\t10.244.2.0/24,fd00:10:244:2::/64\t1700000000\t123\t456\t25\n%s\t(none)\t(none)\t(none)\t0\t0\t0\toff\n",
		priv, pub, peer, testKey(11))
	d, err := parseWGDump(in)
	if err != nil {
		t.Fatal(err)
	}
	if d.PublicKey != pub || d.ListenPort != 51820 || d.FwMark != 0x20000 || len(d.Peers) != 2 {
		t.Fatalf("interface = %+v", d)
	}
	p := d.Peers[0]
	if p.PublicKey != peer || p.Endpoint.String() != "198.18.0.2:51820" || len(p.AllowedIPs) != 2 ||
		p.LastHandshake.Unix() != 1700000000 || p.RX != 123 || p.TX != 456 || p.Keepalive != 25 {
		t.Fatalf("peer = %+v", p)
	}
	if q := d.Peers[1]; q.Endpoint.IsValid() || q.AllowedIPs != nil || !q.LastHandshake.IsZero() || q.Keepalive != 0 {
		t.Fatalf("empty peer = %+v", q)
	}
	if strings.Contains(fmt.Sprintf("%+v", d), priv.String()) {
		t.Fatal("parsed dump keeps the private key")
	}
	for _, bad := range []string{"", "a\tb\n", in[:len(in)-5]} {
		if _, err := parseWGDump(bad); err == nil {
			t.Errorf("parseWGDump(%q) accepted", bad)
		}
	}
}

func FuzzParseWGDump(f *testing.F) {
	k := testKey(1)
	f.Add(fmt.Sprintf("%s\t%s\t51820\toff\n", k, k.PublicKey()))
	f.Add(fmt.Sprintf("%s\t%s\t1\t0x1\n%s\t(none)\t[fd00::1]:5\t(none)\t0\t0\t0\toff\n", k, k, k))
	f.Add("x\ty\tz\tw\n")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseWGDump(s)
		if err != nil {
			return
		}
		if d.ListenPort < 0 || d.ListenPort > 65535 {
			t.Fatalf("listen port %d accepted", d.ListenPort)
		}
		for _, p := range d.Peers {
			if p.RX < 0 || p.TX < 0 || p.Keepalive < 0 {
				t.Fatalf("negative counter accepted: %+v", p)
			}
		}
	})
}
