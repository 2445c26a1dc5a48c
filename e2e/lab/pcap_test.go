package lab

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// pcapWriter builds classic little-endian Ethernet pcap files for tests.
type pcapWriter struct{ bytes.Buffer }

func newPcap(link uint32) *pcapWriter {
	w := &pcapWriter{}
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], 65535)
	binary.LittleEndian.PutUint32(h[20:], link)
	w.Write(h[:])
	return w
}

func (w *pcapWriter) record(frame []byte, orig int) {
	var h [16]byte
	binary.LittleEndian.PutUint32(h[8:], uint32(len(frame)))
	binary.LittleEndian.PutUint32(h[12:], uint32(orig))
	w.Write(h[:])
	w.Write(frame)
}

// ipPacket returns an Ethernet frame carrying an IP packet (v4 or v6 by the
// addresses) with protocol proto and the given L4 bytes.
func ipPacket(src, dst string, proto byte, l4 []byte) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	eth := make([]byte, 14)
	var ip []byte
	if s.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8], ip[9] = 64, proto
		copy(ip[12:], s.AsSlice())
		copy(ip[16:], d.AsSlice())
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6], ip[7] = proto, 64
		copy(ip[8:], s.AsSlice())
		copy(ip[24:], d.AsSlice())
	}
	return append(append(eth, ip...), l4...)
}

// udp returns a UDP header claiming payloadLen bytes followed by the first
// bytes of the payload (as a snap length would cut it).
func udp(payloadLen int, head []byte) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], 51820)
	binary.BigEndian.PutUint16(b[2:], 51820)
	binary.BigEndian.PutUint16(b[4:], uint16(8+payloadLen))
	return append(b, head...)
}

func wgHeader(typ byte) []byte { return []byte{typ, 0, 0, 0, 1, 2, 3, 4} }

func samplePcap() []byte {
	w := newPcap(linkEthernet)
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(148, wgHeader(1))), 190)            // initiation
	w.record(ipPacket("198.18.0.12", "198.18.0.11", 17, udp(92, wgHeader(2))), 134)             // response
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(32, wgHeader(4))), 74)              // keepalive
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(1440, wgHeader(4))), 1482)          // data
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(1452, wgHeader(4))), 1494)          // data at MTU 1420
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(20, wgHeader(4))), 62)              // too short: not WG
	w.record(ipPacket("198.18.0.11", "198.18.0.12", 17, udp(148, []byte{1, 0, 1, 0})), 190)     // reserved bytes set: not WG
	w.record(ipPacket("10.244.1.2", "10.244.2.2", 1, make([]byte, 8)), 98)                      // plaintext v4
	w.record(ipPacket("198.18.0.11", "10.244.2.2", 6, make([]byte, 20)), 74)                    // plaintext (dst)
	w.record(ipPacket("fd00:10:244:1::2", "fd00:10:244:2::2", 58, make([]byte, 8)), 118)        // plaintext v6
	w.record(ipPacket("fe80::11", "ff02::1", 58, make([]byte, 8)), 70)                          // neighbour discovery
	w.record(append(make([]byte, 12), 0x08, 0x06, 0, 1), 42)                                    // ARP
	w.record(ipPacket("fd00:10:245::1", "fd00:10:243:ffff::1", 17, udp(148, wgHeader(1))), 190) // v6 underlay WG
	return w.Bytes()
}

func TestCountPcap(t *testing.T) {
	c, err := CountPcap(bytes.NewReader(samplePcap()), DefaultClassifier())
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{Frames: 13, IP: 12, WireGuard: 6, Plaintext: 3}
	if c.Frames != want.Frames || c.IP != want.IP || c.WireGuard != want.WireGuard || c.Plaintext != want.Plaintext || c.Truncated {
		t.Fatalf("counts = %+v, want %+v", c, want)
	}
	if len(c.PlaintextSamples) != 3 || c.PlaintextSamples[0] != "10.244.1.2 > 10.244.2.2 proto 1" {
		t.Errorf("samples = %q", c.PlaintextSamples)
	}
}

func TestCountPcapExempt(t *testing.T) {
	cl := DefaultClassifier()
	cl.Exempt = []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}
	c, err := CountPcap(bytes.NewReader(samplePcap()), cl)
	if err != nil {
		t.Fatal(err)
	}
	// Both IPv4 plaintext samples touch 10.244.2.0/24; the IPv6 one does not.
	if c.Plaintext != 1 || c.Exempted != 2 {
		t.Errorf("counts with node2 exempt = %+v, want 1 plaintext, 2 exempted", c)
	}
}

func TestCountPcapTruncatedAndBigEndian(t *testing.T) {
	full := samplePcap()
	// Cut inside the last record: everything before it still counts.
	c, err := CountPcap(bytes.NewReader(full[:len(full)-3]), DefaultClassifier())
	if err != nil {
		t.Fatal(err)
	}
	if !c.Truncated || c.Frames != 12 {
		t.Errorf("truncated file: %+v", c)
	}
	// An empty file (tcpdump not started writing) is an empty capture.
	if c, err := CountPcap(bytes.NewReader(nil), DefaultClassifier()); err != nil || c.Frames != 0 {
		t.Errorf("empty file: %+v, %v", c, err)
	}
	// Big-endian header with nanosecond magic.
	be := []byte{0xa1, 0xb2, 0x3c, 0x4d, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1}
	frame := ipPacket("10.244.3.2", "198.18.0.11", 1, nil)
	var rh [16]byte
	binary.BigEndian.PutUint32(rh[8:], uint32(len(frame)))
	binary.BigEndian.PutUint32(rh[12:], uint32(len(frame)))
	be = append(append(be, rh[:]...), frame...)
	if c, err := CountPcap(bytes.NewReader(be), DefaultClassifier()); err != nil || c.Plaintext != 1 {
		t.Errorf("big endian: %+v, %v", c, err)
	}
	if _, err := CountPcap(bytes.NewReader([]byte("0a0d0d0a-not-a-classic-pcap-file")), DefaultClassifier()); err == nil {
		t.Error("pcapng magic accepted")
	}
}

func FuzzCountPcap(f *testing.F) {
	f.Add(samplePcap())
	f.Add(newPcap(linkSLL2).Bytes())
	raw := newPcap(linkRaw)
	raw.record(ipPacket("10.244.1.2", "10.244.2.2", 17, udp(32, wgHeader(4)))[14:], 60)
	f.Add(raw.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := CountPcap(bytes.NewReader(data), DefaultClassifier())
		if err != nil {
			return
		}
		if c.WireGuard+c.Plaintext+c.Exempted > c.IP || c.IP > c.Frames || len(c.PlaintextSamples) > maxSamples {
			t.Fatalf("inconsistent counts %+v", c)
		}
	})
}

func TestRenderPeersFile(t *testing.T) {
	got := string(RenderPeersFile([]PeerEntry{{
		Name:      "node1",
		PublicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
		Endpoint:  netip.MustParseAddrPort("198.18.0.11:51820"),
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
		HostIPs:   []netip.Addr{netip.MustParseAddr("198.18.0.11")},
	}, {Name: "node2"}}))
	want := `# written by the wgmesh lab
nodes:
  - name: node1
    publicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    endpoint: "198.18.0.11:51820"
    podCIDRs: ["10.244.1.0/24", "fd00:10:244:1::/64"]
    hostIPs: ["198.18.0.11"]
  - name: node2
    podCIDRs: []
    hostIPs: []
`
	if got != want {
		t.Errorf("peers file:\n%s\nwant:\n%s", got, want)
	}
}
