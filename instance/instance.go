// Package instance identifies one wgmesh instance on a host and keeps two
// instances (or wgmesh and another WireGuard) from clashing.
//
// An instance is everything one agent installs, and it is named by its
// WireGuard interface: the interface itself, the policy rules that look up
// its route table, the routes of protocol 87 in that table, the addresses
// on the interface, the nftables table derived from the interface name, the
// UAPI socket /var/run/wireguard/<interface>.sock (userspace backend) and
// the instance lock (see Acquire). Two instances on one host must differ in
// interface, route table and listen port.
//
// The instance's parameters are recorded in the link alias (IFLA_IFALIAS)
// of its interface, e.g. "wgmesh table=51820 hosttable=51821 pref=99
// mark=0x2000 port=51822", so that another instance and `wgmesh cleanup` can read them
// without a running agent. Versions before this one wrote the bare alias
// "wgmesh": such an interface is wgmesh's, with unknown parameters.
package instance

import (
	"fmt"
	"strconv"
	"strings"
)

// AliasTag is the first word of the link alias of every interface wgmesh
// created. An interface without it is not wgmesh's and is never adopted or
// deleted.
const AliasTag = "wgmesh"

// Params are what an instance claims on the host. Zero fields are unknown
// (an interface made by an older version records none).
type Params struct {
	// Interface names the instance.
	Interface string
	// Table is the routing table of the instance's routes, Priority the
	// priority of its policy rules, FwMark the mark of its encrypted
	// packets.
	Table    int
	Priority int
	FwMark   uint32
	// HostTable is the routing table of the instance's host routes (pod
	// traffic to peers' node addresses).
	HostTable int
	// ListenPort is the UDP port of the WireGuard device.
	ListenPort int
}

// Alias renders p as the link alias of its interface: AliasTag followed by
// the known (non-zero) parameters as key=value words, for example
// "wgmesh table=51820 hosttable=51821 pref=99 mark=0x2000 port=51822". The interface name
// is not part of it (the alias belongs to the interface).
func (p Params) Alias() string {
	var b strings.Builder
	b.WriteString(AliasTag)
	if p.Table > 0 {
		fmt.Fprintf(&b, " table=%d", p.Table)
	}
	if p.HostTable > 0 {
		fmt.Fprintf(&b, " hosttable=%d", p.HostTable)
	}
	if p.Priority > 0 {
		fmt.Fprintf(&b, " pref=%d", p.Priority)
	}
	if p.FwMark != 0 {
		fmt.Fprintf(&b, " mark=%#x", p.FwMark)
	}
	if p.ListenPort > 0 {
		fmt.Fprintf(&b, " port=%d", p.ListenPort)
	}
	return b.String()
}

// ParseAlias reads a link alias. ours reports whether the alias marks a
// wgmesh interface: its first word is AliasTag. The parameters are parsed
// tolerantly, because the alias may come from another version or have been
// edited by hand: unknown keys and words without '=' are ignored, a value
// that does not parse (or is out of range) leaves its field zero
// (unknown), and the last occurrence of a key wins. Interface is left
// empty.
func ParseAlias(alias string) (p Params, ours bool) {
	words := strings.Fields(alias)
	if len(words) == 0 || words[0] != AliasTag {
		return Params{}, false
	}
	for _, w := range words[1:] {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			continue
		}
		switch k {
		case "table", "hosttable":
			// Table IDs are 32-bit; 0 is "unspecified", 253-255 are the
			// kernel's and never wgmesh's.
			n, err := strconv.ParseUint(v, 10, 32)
			t := 0
			if err == nil && n > 0 && (n < 253 || n > 255) {
				t = int(n)
			}
			if k == "table" {
				p.Table = t
			} else {
				p.HostTable = t
			}
		case "pref":
			n, err := strconv.ParseUint(v, 10, 32)
			p.Priority = 0
			if err == nil && n >= 1 && n <= 32765 {
				p.Priority = int(n)
			}
		case "mark":
			n, err := strconv.ParseUint(v, 0, 32)
			p.FwMark = 0
			if err == nil {
				p.FwMark = uint32(n)
			}
		case "port":
			n, err := strconv.ParseUint(v, 10, 16)
			p.ListenPort = 0
			if err == nil && n > 0 {
				p.ListenPort = int(n)
			}
		}
	}
	return p, true
}
