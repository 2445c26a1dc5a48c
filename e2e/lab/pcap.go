package lab

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
)

// Classifier decides what counts as plaintext pod traffic on the underlay.
type Classifier struct {
	// PodPrefixes: a packet whose outer source or destination lies in one of
	// them crossed the wire unencrypted.
	PodPrefixes []netip.Prefix
	// Exempt are pod prefixes whose plaintext is expected (a node without an
	// agent under --allow-unencrypted): packets from or to them are counted
	// in Exempted instead of Plaintext.
	Exempt []netip.Prefix
}

// DefaultClassifier treats the lab's pod ranges as plaintext markers.
func DefaultClassifier() Classifier {
	return Classifier{PodPrefixes: []netip.Prefix{
		netip.MustParsePrefix("10.244.0.0/16"),
		netip.MustParsePrefix("fd00:10:244::/48"),
	}}
}

// Counts summarises a capture.
type Counts struct {
	// Frames is every record in the file.
	Frames int
	// IP is every IPv4 or IPv6 packet.
	IP int
	// WireGuard is UDP packets whose payload is a well-formed WireGuard
	// message (handshake initiation/response, cookie reply, transport data).
	WireGuard int
	// Plaintext is IP packets whose outer source or destination is a pod
	// address: pod traffic that crossed the wire unencrypted.
	Plaintext int
	// PlaintextSamples describes the first few plaintext packets.
	PlaintextSamples []string
	// Exempted is plaintext pod packets from or to Classifier.Exempt.
	Exempted int
	// Truncated is set when the file ended inside a record (a capture still
	// being written); the partial record is not counted.
	Truncated bool
}

func (c Counts) String() string {
	s := fmt.Sprintf("%d frames, %d IP, %d WireGuard, %d plaintext pod packets", c.Frames, c.IP, c.WireGuard, c.Plaintext)
	if c.Exempted > 0 {
		s += fmt.Sprintf(", %d expected plaintext (exempt)", c.Exempted)
	}
	return s
}

const maxSamples = 5

// Link types of the pcap global header this reader understands.
const (
	linkEthernet = 1
	linkRaw      = 101
	linkSLL      = 113
	linkSLL2     = 276
)

// CountPcapFile counts the packets of a pcap file.
func CountPcapFile(path string, cl Classifier) (Counts, error) {
	f, err := os.Open(path)
	if err != nil {
		return Counts{}, err
	}
	defer f.Close()
	return CountPcap(bufio.NewReaderSize(f, 1<<16), cl)
}

// CountPcap reads a classic pcap stream (either byte order, microsecond or
// nanosecond timestamps) and classifies every packet. It never panics on
// malformed input; a malformed header is an error, a short last record sets
// Truncated.
func CountPcap(r io.Reader, cl Classifier) (Counts, error) {
	var c Counts
	var gh [24]byte
	if _, err := io.ReadFull(r, gh[:]); err != nil {
		if errors.Is(err, io.EOF) {
			// tcpdump has not written its header yet: nothing captured.
			c.Truncated = true
			return c, nil
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			c.Truncated = true
			return c, nil
		}
		return c, fmt.Errorf("pcap global header: %w", err)
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(gh[0:4]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return c, fmt.Errorf("pcap global header: magic %#08x is not classic pcap (pcapng is not supported)", binary.LittleEndian.Uint32(gh[0:4]))
	}
	link := bo.Uint32(gh[20:24]) & 0x0fffffff // upper bits: FCS flags
	switch link {
	case linkEthernet, linkRaw, linkSLL, linkSLL2:
	default:
		return c, fmt.Errorf("pcap global header: link type %d not supported", link)
	}
	const maxRecord = 1 << 18
	buf := make([]byte, 0, 256)
	for {
		var rh [16]byte
		n, err := io.ReadFull(r, rh[:])
		if errors.Is(err, io.EOF) && n == 0 {
			return c, nil
		}
		if err != nil {
			c.Truncated = true
			return c, nil
		}
		incl := bo.Uint32(rh[8:12])
		if incl > maxRecord {
			return c, fmt.Errorf("pcap record %d: captured length %d is implausible", c.Frames+1, incl)
		}
		if cap(buf) < int(incl) {
			buf = make([]byte, incl)
		}
		buf = buf[:incl]
		if _, err := io.ReadFull(r, buf); err != nil {
			c.Truncated = true
			return c, nil
		}
		c.Frames++
		cl.packet(&c, link, buf)
	}
}

// packet classifies one captured frame.
func (cl Classifier) packet(c *Counts, link uint32, b []byte) {
	var ethType uint16
	switch link {
	case linkEthernet:
		if len(b) < 14 {
			return
		}
		ethType, b = binary.BigEndian.Uint16(b[12:14]), b[14:]
		// Skip 802.1Q / 802.1ad tags.
		for (ethType == 0x8100 || ethType == 0x88a8) && len(b) >= 4 {
			ethType, b = binary.BigEndian.Uint16(b[2:4]), b[4:]
		}
	case linkSLL:
		if len(b) < 16 {
			return
		}
		ethType, b = binary.BigEndian.Uint16(b[14:16]), b[16:]
	case linkSLL2:
		if len(b) < 20 {
			return
		}
		ethType, b = binary.BigEndian.Uint16(b[0:2]), b[20:]
	case linkRaw:
		if len(b) < 1 {
			return
		}
		switch b[0] >> 4 {
		case 4:
			ethType = 0x0800
		case 6:
			ethType = 0x86dd
		}
	}
	var src, dst netip.Addr
	var proto byte
	var l4 []byte
	switch ethType {
	case 0x0800:
		if len(b) < 20 || b[0]>>4 != 4 {
			return
		}
		ihl := int(b[0]&0x0f) * 4
		src = netip.AddrFrom4([4]byte(b[12:16]))
		dst = netip.AddrFrom4([4]byte(b[16:20]))
		proto = b[9]
		fragOff := binary.BigEndian.Uint16(b[6:8]) & 0x1fff
		if ihl >= 20 && len(b) >= ihl && fragOff == 0 {
			l4 = b[ihl:]
		}
	case 0x86dd:
		if len(b) < 40 || b[0]>>4 != 6 {
			return
		}
		src = netip.AddrFrom16([16]byte(b[8:24]))
		dst = netip.AddrFrom16([16]byte(b[24:40]))
		proto = b[6]
		l4 = b[40:]
	default:
		return
	}
	c.IP++
	for _, p := range cl.Exempt {
		if p.Contains(src) || p.Contains(dst) {
			c.Exempted++
			return
		}
	}
	for _, p := range cl.PodPrefixes {
		if p.Contains(src) || p.Contains(dst) {
			c.Plaintext++
			if len(c.PlaintextSamples) < maxSamples {
				c.PlaintextSamples = append(c.PlaintextSamples, fmt.Sprintf("%s > %s proto %d", src, dst, proto))
			}
			return
		}
	}
	if proto == 17 && len(l4) >= 12 && isWireGuard(l4) {
		c.WireGuard++
	}
}

// isWireGuard reports whether a UDP datagram (header included, possibly cut
// by the snap length after the first payload bytes) carries a WireGuard
// message: a known type, three zero bytes, and the length that type has.
func isWireGuard(udp []byte) bool {
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < 8 {
		return false
	}
	plen := ulen - 8
	p := udp[8:]
	if p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return false
	}
	switch p[0] {
	case 1: // handshake initiation
		return plen == 148
	case 2: // handshake response
		return plen == 92
	case 3: // cookie reply
		return plen == 64
	case 4: // transport data: header 16, tag 16, then the padded payload.
		// The padding stops at the tunnel MTU, so the length is not always
		// a multiple of 16.
		return plen >= 32
	}
	return false
}
