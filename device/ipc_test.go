package device

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestIPCClientRoundTrip: what ipcClient writes in the set protocol is what
// wireguard-go holds, and what it parses from the get protocol is what
// wgctrl would report — every field the diff reads.
func TestIPCClientRoundTrip(t *testing.T) {
	dev := wgdevice.NewDevice(tuntest.NewChannelTUN().TUN(), bindtest.NewChannelBinds()[0], wgdevice.NewLogger(wgdevice.LogLevelSilent, ""))
	defer dev.Close()
	c := ipcClient{dev}
	priv, _ := wgtypes.GeneratePrivateKey()
	peerA, _ := wgtypes.GeneratePrivateKey()
	peerB, _ := wgtypes.GeneratePrivateKey()
	psk, _ := wgtypes.GenerateKey()
	keep := 25 * time.Second
	fwmark := 0x20000
	ipnet := func(s string) net.IPNet {
		p := netip.MustParsePrefix(s)
		return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	err := c.ConfigureDevice("wgt0", wgtypes.Config{
		PrivateKey: &priv, FirewallMark: &fwmark, ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{{
			PublicKey: peerA.PublicKey(), PresharedKey: &psk, PersistentKeepaliveInterval: &keep,
			Endpoint:   &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2},
			AllowedIPs: []net.IPNet{ipnet("10.244.2.0/24"), ipnet("fd00:10:244:2::/64")},
		}, {
			PublicKey: peerB.PublicKey(), AllowedIPs: []net.IPNet{ipnet("10.244.3.0/24")},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Withdraw one prefix, as the diff does when a prefix moves.
	if err := c.ConfigureDevice("wgt0", wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: peerB.PublicKey(), UpdateOnly: true, ReplaceAllowedIPs: true,
	}}}); err != nil {
		t.Fatal(err)
	}
	d, err := c.Device("wgt0")
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "wgt0" || d.Type != wgtypes.Userspace || d.PrivateKey != priv || d.PublicKey != priv.PublicKey() || d.FirewallMark != fwmark {
		t.Errorf("device = %s %v key ok %v fwmark %#x", d.Name, d.Type, d.PrivateKey == priv, d.FirewallMark)
	}
	got := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range d.Peers {
		got[p.PublicKey] = p
	}
	a, b := got[peerA.PublicKey()], got[peerB.PublicKey()]
	if len(d.Peers) != 2 || a.PresharedKey != psk || a.PersistentKeepaliveInterval != keep || a.ProtocolVersion != 1 ||
		a.Endpoint == nil || a.Endpoint.String() != "127.0.0.1:2" || !a.LastHandshakeTime.Equal(time.Unix(0, 0)) {
		t.Errorf("peer A = %+v", a)
	}
	if got, want := fmt.Sprint(currentPrefixes(a.AllowedIPs)), "[10.244.2.0/24 fd00:10:244:2::/64]"; got != want {
		t.Errorf("peer A allowed IPs = %s, want %s", got, want)
	}
	if len(b.AllowedIPs) != 0 || b.Endpoint != nil {
		t.Errorf("peer B after withdrawal = %+v", b)
	}
}
