package device

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ipcClient is the wgClient of an in-memory device (Options.TUN): it speaks
// the UAPI text protocol that wgctrl would send over the socket straight to
// wireguard-go's IpcSetOperation and IpcGetOperation. No socket is served,
// so such a device needs neither /var/run/wireguard nor root, and it still
// goes through the same diff and wgtypes.Config as the agent's devices.
type ipcClient struct {
	dev *wgdevice.Device
}

var _ wgClient = ipcClient{}

// ConfigureDevice writes cfg as wgctrl's userspace client does.
func (c ipcClient) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	var b bytes.Buffer
	writeUAPIConfig(&b, cfg)
	err := c.dev.IpcSetOperation(&b)
	var ipcErr *wgdevice.IPCError
	if errors.As(err, &ipcErr) {
		// The socket protocol reports the code as "errno=N"; keep that
		// shape so configureError reads it the same way.
		errno := syscall.Errno(-ipcErr.ErrorCode())
		return fmt.Errorf("%w (%w, errno=%d)", err, errno, int64(errno))
	}
	return err
}

// Device reads the device's state; name only fills wgtypes.Device.Name.
func (c ipcClient) Device(name string) (*wgtypes.Device, error) {
	var b bytes.Buffer
	if err := c.dev.IpcGetOperation(&b); err != nil {
		return nil, err
	}
	d, err := parseUAPIDevice(&b)
	if err != nil {
		return nil, err
	}
	d.Name = name
	return d, nil
}

// Close is a no-op: the wireguard-go device is closed by its owner.
func (ipcClient) Close() error { return nil }

// writeUAPIConfig renders cfg in the "set" protocol, field for field as
// wgctrl's userspace client writes it.
func writeUAPIConfig(w *bytes.Buffer, cfg wgtypes.Config) {
	if cfg.PrivateKey != nil {
		fmt.Fprintf(w, "private_key=%s\n", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		fmt.Fprintf(w, "listen_port=%d\n", *cfg.ListenPort)
	}
	if cfg.FirewallMark != nil {
		fmt.Fprintf(w, "fwmark=%d\n", *cfg.FirewallMark)
	}
	if cfg.ReplacePeers {
		w.WriteString("replace_peers=true\n")
	}
	for _, p := range cfg.Peers {
		fmt.Fprintf(w, "public_key=%s\n", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			w.WriteString("remove=true\n")
		}
		if p.UpdateOnly {
			w.WriteString("update_only=true\n")
		}
		if p.PresharedKey != nil {
			fmt.Fprintf(w, "preshared_key=%s\n", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			fmt.Fprintf(w, "endpoint=%s\n", p.Endpoint)
		}
		if p.PersistentKeepaliveInterval != nil {
			fmt.Fprintf(w, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepaliveInterval.Seconds()))
		}
		if p.ReplaceAllowedIPs {
			w.WriteString("replace_allowed_ips=true\n")
		}
		for _, ip := range p.AllowedIPs {
			fmt.Fprintf(w, "allowed_ip=%s\n", ip.String())
		}
	}
}

// parseUAPIDevice reads the "get" protocol's answer (key=value lines; a
// public_key line starts a peer) into what wgctrl would return.
func parseUAPIDevice(r *bytes.Buffer) (*wgtypes.Device, error) {
	d := &wgtypes.Device{Type: wgtypes.Userspace}
	var p *wgtypes.Peer
	var sec, nsec int64
	flush := func() {
		if p != nil {
			p.LastHandshakeTime = time.Unix(sec, nsec)
			d.Peers = append(d.Peers, *p)
		}
	}
	s := bufio.NewScanner(r)
	for s.Scan() {
		key, val, ok := strings.Cut(s.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "private_key":
			d.PrivateKey, err = hexKey(val)
			d.PublicKey = d.PrivateKey.PublicKey()
		case "listen_port":
			d.ListenPort, err = strconv.Atoi(val)
		case "fwmark":
			d.FirewallMark, err = strconv.Atoi(val)
		case "public_key":
			flush()
			p, sec, nsec = &wgtypes.Peer{}, 0, 0
			p.PublicKey, err = hexKey(val)
		}
		if p != nil && err == nil {
			switch key {
			case "preshared_key":
				p.PresharedKey, err = hexKey(val)
			case "protocol_version":
				p.ProtocolVersion, err = strconv.Atoi(val)
			case "endpoint":
				var ap netip.AddrPort
				if ap, err = netip.ParseAddrPort(val); err == nil {
					p.Endpoint = net.UDPAddrFromAddrPort(ap)
				}
			case "last_handshake_time_sec":
				sec, err = strconv.ParseInt(val, 10, 64)
			case "last_handshake_time_nsec":
				nsec, err = strconv.ParseInt(val, 10, 64)
			case "tx_bytes":
				p.TransmitBytes, err = strconv.ParseInt(val, 10, 64)
			case "rx_bytes":
				p.ReceiveBytes, err = strconv.ParseInt(val, 10, 64)
			case "persistent_keepalive_interval":
				var n int
				n, err = strconv.Atoi(val)
				p.PersistentKeepaliveInterval = time.Duration(n) * time.Second
			case "allowed_ip":
				var pfx netip.Prefix
				if pfx, err = netip.ParsePrefix(val); err == nil {
					p.AllowedIPs = append(p.AllowedIPs, net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), pfx.Addr().BitLen())})
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("read wireguard-go state: %s: %w", key, err)
		}
	}
	flush()
	return d, s.Err()
}

func hexKey(s string) (wgtypes.Key, error) {
	var k wgtypes.Key
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("not a 32-byte hex key")
	}
	copy(k[:], b)
	return k, nil
}
