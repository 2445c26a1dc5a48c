package device

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// plan is the minimal sequence of wgctrl configurations that turns a device's
// current state into the desired one.
//
// Ordering, and why: WireGuard routes by a single allowed-IPs table that maps
// each prefix to exactly one peer. A configuration is applied item by item
// (wireguard-go walks the UAPI lines, the kernel walks the netlink peer list)
// while packets flow, so every intermediate state is visible to traffic.
// The plan therefore has two phases, sent as two ConfigureDevice calls:
//
//  1. Withdraw: remove peers that are gone, and shrink every peer that loses
//     prefixes to exactly the prefixes it keeps (ReplaceAllowedIPs with the
//     kept set, because wgctrl cannot delete a single prefix; the kept ones
//     are briefly unrouted, i.e. dropped). This phase only removes entries,
//     so every intermediate table is a subset of the old one, and at its end
//     the table is old ∩ new: a moving address routes to nobody.
//  2. Grant: set private key, listen port and fwmark if they changed, add new
//     peers, and add to existing peers only the prefixes they gain (no
//     ReplaceAllowedIPs, so their kept prefixes never blink), plus changed
//     endpoints and keepalives. This phase only adds entries of the new
//     table, so every intermediate table is a subset of the new one.
//
// Hence no address is ever routed to a peer that owns it in neither the old
// nor the new configuration, and an address that changes owner is dropped,
// never misdelivered, between its withdrawal and its grant: moves fail
// closed. Two calls rather than one ordered call, because a peer that both
// loses and gains prefixes would appear twice in one message, and a failed
// withdrawal must not be followed by grants. A peer whose endpoint,
// keepalive and allowed IPs already match appears in neither phase.
type plan struct {
	// Withdraw is nil when nothing has to be removed.
	Withdraw *wgtypes.Config
	// Grant is nil when nothing has to be added or changed.
	Grant   *wgtypes.Config
	Summary summary
}

// summary counts what a plan changes, for logs (never keys).
type summary struct {
	Added, Removed, Updated, Unchanged int
	PrivateKey, ListenPort, FwMark     bool
}

// empty reports whether the plan changes nothing.
func (p plan) empty() bool { return p.Withdraw == nil && p.Grant == nil }

// wantPeer is a validated, normalized desired peer.
type wantPeer struct {
	peer    mesh.Peer
	key     wgtypes.Key
	allowed []netip.Prefix // masked, unmapped, sorted, unique
	ka      int            // keepalive seconds
}

// diff computes the plan that turns cur into want. cur nil means a device
// without any configuration. sent holds the endpoint last written for each
// peer by this process (nil: none): WireGuard roams a peer's endpoint to the
// source of its authenticated packets (NAT), and a roamed endpoint is kept as
// long as the desired endpoint is the one already written. It is pure: no
// I/O, deterministic output (peers in public-key order).
func diff(cur *wgtypes.Device, want mesh.DeviceConfig, sent map[wgtypes.Key]netip.AddrPort) (plan, error) {
	if cur == nil {
		cur = &wgtypes.Device{}
	}
	// Last occurrence wins, should a device ever report a key twice.
	index := make(map[wgtypes.Key]int32, len(cur.Peers))
	for i := range cur.Peers {
		index[cur.Peers[i].PublicKey] = int32(i)
	}
	// A device without peers gets every one added, which validate does
	// best: scan pays off only when most peers are matched.
	var wants []wantPeer
	var gone []wgtypes.Key
	ok := false
	if len(index) > 0 {
		wants, gone, ok = scan(cur, want, sent, index)
	}
	if !ok {
		var err error
		if wants, err = validate(want); err != nil {
			return plan{}, err
		}
		gone = goneKeys(index, wants)
	}

	var p plan
	withdraw := &wgtypes.Config{}
	grant := &wgtypes.Config{}

	if wgtypes.Key(want.PrivateKey) != cur.PrivateKey {
		k := wgtypes.Key(want.PrivateKey)
		grant.PrivateKey = &k
		p.Summary.PrivateKey = true
	}
	if want.ListenPort != 0 && want.ListenPort != cur.ListenPort {
		port := want.ListenPort
		grant.ListenPort = &port
		p.Summary.ListenPort = true
	}
	if int64(want.FwMark) != int64(cur.FirewallMark) {
		mark := int(want.FwMark)
		grant.FirewallMark = &mark
		p.Summary.FwMark = true
	}

	// Peers scan found in sync are not in wants; they count as unchanged.
	p.Summary.Unchanged = len(want.Peers) - len(wants)
	var scratch []netip.Prefix
	for _, w := range wants {
		j, ok := index[w.key]
		if !ok {
			grant.Peers = append(grant.Peers, newPeerConfig(w))
			p.Summary.Added++
			continue
		}
		c := &cur.Peers[j]
		// have lives in a scratch buffer reused for every peer; intersect
		// and subtract copy what they keep.
		scratch = appendCurrentPrefixes(scratch[:0], c.AllowedIPs)
		have := scratch
		kept, lost := intersect(have, w.allowed)
		gained := subtract(w.allowed, have)

		changed := false
		if lost {
			withdraw.Peers = append(withdraw.Peers, wgtypes.PeerConfig{
				PublicKey:         w.key,
				UpdateOnly:        true,
				ReplaceAllowedIPs: true,
				AllowedIPs:        ipNets(kept),
			})
			changed = true
		}
		pc := wgtypes.PeerConfig{PublicKey: w.key, UpdateOnly: true}
		update := false
		if len(gained) > 0 {
			pc.AllowedIPs = ipNets(gained)
			update = true
		}
		roamed := c.Endpoint != nil && sent[w.key] == w.peer.Endpoint
		if w.peer.Endpoint.IsValid() && !sameEndpoint(c.Endpoint, w.peer.Endpoint) && !roamed {
			pc.Endpoint = udpAddr(w.peer.Endpoint)
			update = true
		}
		if int(c.PersistentKeepaliveInterval/time.Second) != w.ka {
			d := time.Duration(w.ka) * time.Second
			pc.PersistentKeepaliveInterval = &d
			update = true
		}
		if update {
			grant.Peers = append(grant.Peers, pc)
			changed = true
		}
		if changed {
			p.Summary.Updated++
		} else {
			p.Summary.Unchanged++
		}
	}

	// Removals go first, in key order for deterministic output.
	if len(gone) > 0 {
		removals := make([]wgtypes.PeerConfig, 0, len(gone)+len(withdraw.Peers))
		for _, k := range gone {
			removals = append(removals, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
		withdraw.Peers = append(removals, withdraw.Peers...)
		p.Summary.Removed = len(gone)
	}

	if len(withdraw.Peers) > 0 {
		p.Withdraw = withdraw
	}
	if len(grant.Peers) > 0 || grant.PrivateKey != nil || grant.ListenPort != nil || grant.FirewallMark != nil {
		p.Grant = grant
	}
	return p, nil
}

// goneKeys returns the keys of index that no peer of wants (sorted by key)
// has, sorted. Only when some current peer matched no desired one is
// wants searched for them, so a resync pays nothing here.
func goneKeys(index map[wgtypes.Key]int32, wants []wantPeer) []wgtypes.Key {
	matched := 0
	for _, w := range wants {
		if _, ok := index[w.key]; ok {
			matched++
		}
	}
	if matched == len(index) {
		return nil
	}
	var gone []wgtypes.Key
	for k := range index {
		if _, found := slices.BinarySearchFunc(wants, k, compareKey); !found {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	return gone
}

// scan is diff's fast path for the common reconcile, where few peers or
// none changed. It applies validate's checks and diff's comparisons in one
// pass over the desired peers in their given order, and returns only the
// peers that are new or may differ (validated, normalized, sorted by key,
// as validate would return them), and the current peers that are gone
// (sorted by key). Peers in sync cost a map lookup per key and prefix: no
// sort, no conversion to slices. Whenever it is unsure (an invalid
// configuration, a key listed twice, a prefix listed for two peers) it
// returns ok false, and diff takes the general path, which decides and
// reports exactly as before.
func scan(cur *wgtypes.Device, want mesh.DeviceConfig, sent map[wgtypes.Key]netip.AddrPort, index map[wgtypes.Key]int32) (wants []wantPeer, gone []wgtypes.Key, ok bool) {
	if want.PrivateKey.IsZero() || want.ListenPort < 0 || want.ListenPort > 65535 {
		return nil, nil, false
	}
	matched := make([]bool, len(cur.Peers))
	nmatched := 0
	// IPv4 prefixes, most of a cluster's, fit a uint64 key, which the
	// runtime's maps hash fastest.
	total4, total := 0, 0
	for i := range want.Peers {
		for _, pfx := range want.Peers[i].AllowedIPs {
			if pfx.Addr().Is4() || pfx.Addr().Is4In6() {
				total4++
			} else {
				total++
			}
		}
	}
	owner4 := make(map[uint64]int32, total4)
	owner := make(map[prefixKey]int32, total)
	// The normalized prefixes of every peer returned, carved out of one
	// array as in validate.
	var prefixes []netip.Prefix
	self := want.PrivateKey.PublicKey()
	var wantBuf, haveBuf []netip.Prefix
	for i := range want.Peers {
		pe := &want.Peers[i]
		if pe.PublicKey.IsZero() || pe.PublicKey == self ||
			pe.Keepalive < 0 || pe.Keepalive > 65535*time.Second ||
			(pe.Endpoint.IsValid() && pe.Endpoint.Port() == 0) {
			return nil, nil, false
		}
		key := wgtypes.Key(pe.PublicKey)
		wantBuf = wantBuf[:0]
		for _, pfx := range pe.AllowedIPs {
			if !pfx.IsValid() {
				return nil, nil, false
			}
			pfx = normPrefix(pfx)
			if !claim(owner4, owner, pfx, int32(i), wantBuf) {
				return nil, nil, false
			}
			wantBuf = append(wantBuf, pfx)
		}
		ep := netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		ka := int(pe.Keepalive / time.Second)
		j, found := index[key]
		if found {
			if matched[j] {
				return nil, nil, false
			}
			matched[j] = true
			nmatched++
			c := &cur.Peers[j]
			// The roaming lookup last: it is needed only when the
			// endpoint differs.
			if samePrefixes(c.AllowedIPs, wantBuf, &haveBuf) &&
				(!ep.IsValid() || sameEndpoint(c.Endpoint, ep) || (c.Endpoint != nil && sent[key] == ep)) &&
				int(c.PersistentKeepaliveInterval/time.Second) == ka {
				continue
			}
		}
		w := wantPeer{peer: *pe, key: key, ka: ka}
		w.peer.Endpoint = ep
		if len(wantBuf) > 0 {
			start := len(prefixes)
			prefixes = append(prefixes, wantBuf...)
			n := len(prefixes)
			w.allowed = sortPrefixes(prefixes[start:n:n])
		}
		wants = append(wants, w)
	}
	if nmatched < len(index) {
		for j := range cur.Peers {
			k := cur.Peers[j].PublicKey
			if !matched[j] && index[k] == int32(j) {
				gone = append(gone, k)
			}
		}
		slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	}
	// A key listed twice that is not a current peer's shows up as
	// neighbours once sorted.
	wants = sortByKey(wants)
	for i := 1; i < len(wants); i++ {
		if wants[i].key == wants[i-1].key {
			return nil, nil, false
		}
	}
	return wants, gone, true
}

// samePrefixes reports whether the valid prefixes of have, as a set, equal
// want (normalized, possibly repeated). Few prefixes per peer are the rule,
// and comparing each with each then beats sorting; buf is scratch for the
// sorted comparison of larger sets.
func samePrefixes(have []net.IPNet, want []netip.Prefix, buf *[]netip.Prefix) bool {
	const small = 8
	if len(have) > small || len(want) > small {
		h := appendCurrentPrefixes((*buf)[:0], have)
		*buf = h
		return slices.Equal(h, sortPrefixes(slices.Clone(want)))
	}
	var arr [small]netip.Prefix
	h := arr[:0]
	for _, n := range have {
		p, ok := prefixFromIPNet(n)
		if !ok {
			continue
		}
		if !slices.Contains(want, p) {
			return false
		}
		h = append(h, p)
	}
	for _, p := range want {
		if !slices.Contains(h, p) {
			return false
		}
	}
	return true
}

// prefixKey is a prefix as a map key without pointers: cheaper to hash
// than netip.Prefix, and a map of them is not scanned by the collector.
// The address's 16-byte form and the bit length with the family tell
// prefixes apart (a normalized prefix carries no zone).
type prefixKey struct {
	hi, lo uint64
	bits   uint64 // bit length, plus 1<<8 for IPv4
}

// claim records peer as the owner of the normalized prefix p, in owner4
// for IPv4 and owner for IPv6, and reports false if another peer owns it.
// earlier holds the peer's prefixes claimed so far.
func claim(owner4 map[uint64]int32, owner map[prefixKey]int32, p netip.Prefix, peer int32, earlier []netip.Prefix) bool {
	if len(earlier) <= 8 {
		// One hash operation rather than a lookup and an insert: a
		// prefix repeated within the peer is found in earlier, so a
		// map that does not grow means another peer has it.
		if slices.Contains(earlier, p) {
			return true
		}
		if p.Addr().Is4() {
			n := len(owner4)
			owner4[key4(p)] = peer
			return len(owner4) > n
		}
		n := len(owner)
		owner[keyOf(p)] = peer
		return len(owner) > n
	}
	if p.Addr().Is4() {
		k := key4(p)
		if o, dup := owner4[k]; dup && o != peer {
			return false
		}
		owner4[k] = peer
		return true
	}
	k := keyOf(p)
	if o, dup := owner[k]; dup && o != peer {
		return false
	}
	owner[k] = peer
	return true
}

// key4 is an IPv4 prefix as a map key: the address and the bit length.
func key4(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(binary.BigEndian.Uint32(a[:]))<<8 | uint64(p.Bits())
}

func keyOf(p netip.Prefix) prefixKey {
	a := p.Addr()
	b := a.As16()
	k := prefixKey{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), bits: uint64(p.Bits())}
	if a.Is4() {
		k.bits |= 1 << 8
	}
	return k
}

// validate checks the desired configuration and returns its peers
// normalized and sorted by public key. It rejects what WireGuard would
// silently resolve in a way nobody asked for: a peer listed twice, a prefix
// given to two peers (the last would win), a peer with the device's own key
// (wireguard-go drops it, so every Configure would re-add it).
func validate(want mesh.DeviceConfig) ([]wantPeer, error) {
	if want.PrivateKey.IsZero() {
		return nil, fmt.Errorf("private key is empty; the agent must load or create a key first")
	}
	if want.ListenPort < 0 || want.ListenPort > 65535 {
		return nil, fmt.Errorf("listen port %d: want 0..65535", want.ListenPort)
	}
	self := want.PrivateKey.PublicKey()
	seen := make(map[mesh.Key]string, len(want.Peers))
	total := 0
	for _, pe := range want.Peers {
		total += len(pe.AllowedIPs)
	}
	// Sized up front, and every peer's prefixes carved out of one array:
	// at thousands of peers, map growth and one slice per peer were most
	// of the cost of a resync.
	owner := make(map[netip.Prefix]string, total)
	prefixes := make([]netip.Prefix, 0, total)
	out := make([]wantPeer, 0, len(want.Peers))
	for _, pe := range want.Peers {
		name := pe.Node
		if name == "" {
			name = pe.PublicKey.String()
		}
		switch {
		case pe.PublicKey.IsZero():
			return nil, fmt.Errorf("peer %s: public key is empty", name)
		case pe.PublicKey == self:
			return nil, fmt.Errorf("peer %s: has this device's own public key", name)
		case seen[pe.PublicKey] != "":
			return nil, fmt.Errorf("peers %s and %s have the same public key", seen[pe.PublicKey], name)
		case pe.Keepalive < 0 || pe.Keepalive > 65535*time.Second:
			return nil, fmt.Errorf("peer %s: keepalive %v: want 0..65535s", name, pe.Keepalive)
		case pe.Endpoint.IsValid() && pe.Endpoint.Port() == 0:
			return nil, fmt.Errorf("peer %s: endpoint %v has port 0", name, pe.Endpoint)
		}
		seen[pe.PublicKey] = name
		w := wantPeer{peer: pe, key: wgtypes.Key(pe.PublicKey), ka: int(pe.Keepalive / time.Second)}
		start := len(prefixes)
		for _, pfx := range pe.AllowedIPs {
			if !pfx.IsValid() {
				return nil, fmt.Errorf("peer %s: invalid allowed IP prefix %v", name, pfx)
			}
			pfx = normPrefix(pfx)
			if o, dup := owner[pfx]; dup && o != name {
				return nil, fmt.Errorf("allowed IP %v is claimed by peers %s and %s", pfx, o, name)
			}
			owner[pfx] = name
			prefixes = append(prefixes, pfx)
		}
		if n := len(prefixes); n > start {
			// Capped, so that no append to one peer's prefixes can
			// overwrite the next peer's.
			w.allowed = sortPrefixes(prefixes[start:n:n])
		}
		w.peer.Endpoint = netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		out = append(out, w)
	}
	return sortByKey(out), nil
}

// sortByKey returns peers ordered by public key. It sorts indexes and
// permutes once rather than swapping the large wantPeer values (with their
// pointer write barriers) on every step of the sort.
func sortByKey(peers []wantPeer) []wantPeer {
	less := func(a, b wantPeer) int { return bytes.Compare(a.key[:], b.key[:]) }
	if slices.IsSortedFunc(peers, less) {
		return peers
	}
	order := make([]int32, len(peers))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return bytes.Compare(peers[a].key[:], peers[b].key[:]) })
	out := make([]wantPeer, len(peers))
	for i, j := range order {
		out[i] = peers[j]
	}
	return out
}

func compareKey(a wantPeer, k wgtypes.Key) int { return bytes.Compare(a.key[:], k[:]) }

func newPeerConfig(w wantPeer) wgtypes.PeerConfig {
	pc := wgtypes.PeerConfig{
		PublicKey:         w.key,
		ReplaceAllowedIPs: true,
		AllowedIPs:        ipNets(w.allowed),
	}
	if w.peer.Endpoint.IsValid() {
		pc.Endpoint = udpAddr(w.peer.Endpoint)
	}
	if w.ka != 0 {
		d := time.Duration(w.ka) * time.Second
		pc.PersistentKeepaliveInterval = &d
	}
	return pc
}

// normPrefix masks p and unmaps IPv4-mapped IPv6 prefixes, the form both
// WireGuard implementations report back.
func normPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked()
}

// prefixFromIPNet converts what wgctrl reports; ok is false for a malformed
// mask.
func prefixFromIPNet(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if bits == 32 {
		a = a.Unmap()
	}
	if a.BitLen() != bits {
		if a.Is4In6() && bits == 128 && ones >= 96 {
			return normPrefix(netip.PrefixFrom(a, ones)), true
		}
		return netip.Prefix{}, false
	}
	return normPrefix(netip.PrefixFrom(a, ones)), true
}

// currentPrefixes returns the valid prefixes of nets, sorted and unique.
func currentPrefixes(nets []net.IPNet) []netip.Prefix {
	return appendCurrentPrefixes(make([]netip.Prefix, 0, len(nets)), nets)
}

// appendCurrentPrefixes appends the valid prefixes of nets to out and
// returns them sorted and unique.
func appendCurrentPrefixes(out []netip.Prefix, nets []net.IPNet) []netip.Prefix {
	for _, n := range nets {
		if p, ok := prefixFromIPNet(n); ok {
			out = append(out, p)
		}
	}
	return sortPrefixes(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefix)
	return slices.Compact(ps)
}

// intersect returns the prefixes of have that are also in want, and whether
// any prefix of have is missing from want. Both inputs are sorted and unique.
// kept is only built when something is lost (the caller needs it only
// then), so the common unchanged peer costs no allocation.
func intersect(have, want []netip.Prefix) (kept []netip.Prefix, lost bool) {
	for _, p := range have {
		if _, found := slices.BinarySearchFunc(want, p, comparePrefix); !found {
			lost = true
			break
		}
	}
	if !lost {
		return nil, false
	}
	for _, p := range have {
		if _, found := slices.BinarySearchFunc(want, p, comparePrefix); found {
			kept = append(kept, p)
		}
	}
	return kept, true
}

// subtract returns the prefixes of a that are not in b (both sorted, unique).
func subtract(a, b []netip.Prefix) (rest []netip.Prefix) {
	for _, p := range a {
		if _, found := slices.BinarySearchFunc(b, p, comparePrefix); !found {
			rest = append(rest, p)
		}
	}
	return rest
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{
			IP:   p.Addr().AsSlice(),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		})
	}
	return out
}

func udpAddr(ap netip.AddrPort) *net.UDPAddr {
	return &net.UDPAddr{IP: ap.Addr().AsSlice(), Port: int(ap.Port()), Zone: ap.Addr().Zone()}
}

func sameEndpoint(cur *net.UDPAddr, want netip.AddrPort) bool {
	if cur == nil {
		return false
	}
	ap := cur.AddrPort()
	return ap.Addr().Unmap() == want.Addr().Unmap() && ap.Port() == want.Port()
}
