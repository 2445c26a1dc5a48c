package device

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/internal/prefixes"
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
	v, err := validate(want, cur, index)
	if err != nil {
		return plan{}, err
	}
	wants, gone := pending(cur, want, v, sent, index)

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

	// Peers pending found in sync are not in wants; they count as unchanged.
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
		if endpointChanged(c, w.key, w.peer.Endpoint, sent) {
			pc.Endpoint = udpAddr(w.peer.Endpoint)
			update = true
		}
		if keepaliveChanged(c, w.ka) {
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

// endpointChanged reports whether the current peer c (key k) must be set
// to the desired endpoint ep (unmapped): ep is valid, c is elsewhere, and c
// was not roamed there from the endpoint this process last wrote (sent).
func endpointChanged(c *wgtypes.Peer, k wgtypes.Key, ep netip.AddrPort, sent map[wgtypes.Key]netip.AddrPort) bool {
	if !ep.IsValid() || sameEndpoint(c.Endpoint, ep) {
		return false
	}
	// The roaming lookup last: it is needed only when the endpoint differs.
	roamed := c.Endpoint != nil && sent[k] == ep
	return !roamed
}

// keepaliveChanged reports whether the current peer c's keepalive differs
// from ka seconds.
func keepaliveChanged(c *wgtypes.Peer, ka int) bool {
	return int(c.PersistentKeepaliveInterval/time.Second) != ka
}

// pending is diff's fast path, and only speed: of the validated desired
// peers it drops those diff would find unchanged (allowed IPs, endpoint and
// keepalive as desired) before any sorting or copying, and returns the
// others normalized, with their allowed IPs sorted and unique, ordered by
// key; and the current peers that are gone, sorted by key. The common
// reconcile, where few peers or none changed, then costs a map lookup and
// a small comparison per peer.
func pending(cur *wgtypes.Device, want mesh.DeviceConfig, v valid, sent map[wgtypes.Key]netip.AddrPort, index map[wgtypes.Key]int32) (wants []wantPeer, gone []wgtypes.Key) {
	// Sized for the peers sure to be new; the prefixes of every peer
	// returned are carved out of one array.
	wants = make([]wantPeer, 0, len(want.Peers)-v.matched)
	all := make([]netip.Prefix, 0, v.newPrefixes)
	var buf, haveBuf []netip.Prefix
	for i := range want.Peers {
		pe := &want.Peers[i]
		buf = appendNormalized(buf[:0], pe.AllowedIPs)
		k := wgtypes.Key(pe.PublicKey)
		ka := int(pe.Keepalive / time.Second)
		ep := netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		if j, found := index[k]; found {
			c := &cur.Peers[j]
			if samePrefixes(c.AllowedIPs, buf, &haveBuf) && !endpointChanged(c, k, ep, sent) && !keepaliveChanged(c, ka) {
				continue
			}
		}
		w := wantPeer{peer: *pe, key: k, ka: ka}
		w.peer.Endpoint = ep
		if len(buf) > 0 {
			start := len(all)
			all = append(all, buf...)
			// Capped, so that no append to one peer's prefixes can
			// overwrite the next peer's.
			w.allowed = prefixes.Sort(all[start:len(all):len(all)])
		}
		wants = append(wants, w)
	}
	if v.matched < len(index) {
		for j := range cur.Peers {
			k := cur.Peers[j].PublicKey
			if v.claimedBy[j] < 0 && index[k] == int32(j) {
				gone = append(gone, k)
			}
		}
		slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	}
	return sortByKey(wants), gone
}

// appendNormalized appends the valid prefixes of ps, normalized, to dst.
func appendNormalized(dst, ps []netip.Prefix) []netip.Prefix {
	for _, p := range ps {
		if p.IsValid() {
			dst = append(dst, normPrefix(p))
		}
	}
	return dst
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
		return slices.Equal(h, prefixes.Sort(slices.Clone(want)))
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

// valid is what validate learnt of a desired configuration.
type valid struct {
	// claimedBy[j] is the desired peer with the key of the current peer j
	// (the index's last of that key), -1 if none; matched counts them.
	claimedBy []int32
	matched   int
	// newPrefixes counts the allowed IPs of desired peers that are not
	// current peers.
	newPrefixes int
}

// validate is the one check of a desired configuration. It rejects what
// WireGuard would silently resolve in a way nobody asked for: a peer listed
// twice, a prefix given to two peers (the last would win), a peer with the
// device's own key (wireguard-go drops it, so every Configure would re-add
// it). The first problem in the given order is the one reported. cur and
// index (its peers by key) only make a repeated key cheap to find.
func validate(want mesh.DeviceConfig, cur *wgtypes.Device, index map[wgtypes.Key]int32) (valid, error) {
	if want.PrivateKey.IsZero() {
		return valid{}, fmt.Errorf("private key is empty; the agent must load or create a key first")
	}
	if want.ListenPort < 0 || want.ListenPort > 65535 {
		return valid{}, fmt.Errorf("listen port %d: want 0..65535", want.ListenPort)
	}
	self := want.PrivateKey.PublicKey()
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
	v := valid{claimedBy: make([]int32, len(cur.Peers))}
	for j := range v.claimedBy {
		v.claimedBy[j] = -1
	}
	// Keys of current peers are found repeated through claimedBy; only
	// new ones need this map.
	var seen map[wgtypes.Key]int32
	// Sized up front and keyed without pointers: at thousands of peers,
	// map growth and hashing were most of the cost of a resync. IPv4
	// prefixes, most of a cluster's, have keys packed in a uint64.
	claimed4 := make(map[uint64]struct{}, total4)
	claimed := make(map[prefixes.Key]struct{}, total)
	var mine []netip.Prefix
	for i := range want.Peers {
		pe := &want.Peers[i]
		key := wgtypes.Key(pe.PublicKey)
		first := int32(-1)
		j, current := index[key]
		if current {
			first = v.claimedBy[j]
		} else if f, ok := seen[key]; ok {
			first = f
		}
		switch {
		case pe.PublicKey.IsZero():
			return valid{}, fmt.Errorf("peer %s: public key is empty", peerName(pe))
		case pe.PublicKey == self:
			return valid{}, fmt.Errorf("peer %s: has this device's own public key", peerName(pe))
		case first >= 0:
			return valid{}, fmt.Errorf("peers %s and %s have the same public key", peerName(&want.Peers[first]), peerName(pe))
		case pe.Keepalive < 0 || pe.Keepalive > mesh.MaxKeepalive:
			return valid{}, fmt.Errorf("peer %s: keepalive %v: want 0..65535s", peerName(pe), pe.Keepalive)
		case pe.Endpoint.IsValid() && pe.Endpoint.Port() == 0:
			return valid{}, fmt.Errorf("peer %s: endpoint %v has port 0", peerName(pe), pe.Endpoint)
		}
		if current {
			v.claimedBy[j] = int32(i)
			v.matched++
		} else {
			if seen == nil {
				seen = make(map[wgtypes.Key]int32)
			}
			seen[key] = int32(i)
			v.newPrefixes += len(pe.AllowedIPs)
		}
		mine = mine[:0]
		for _, pfx := range pe.AllowedIPs {
			if !pfx.IsValid() {
				return valid{}, fmt.Errorf("peer %s: invalid allowed IP prefix %v", peerName(pe), pfx)
			}
			pfx = normPrefix(pfx)
			// One hash operation: a map that does not grow has seen the
			// prefix before, and only then is its earlier claimant
			// looked for.
			var again bool
			if k := prefixes.KeyOf(pfx); pfx.Addr().Is4() {
				k4, _ := k.Packed4()
				n := len(claimed4)
				claimed4[k4] = struct{}{}
				again = len(claimed4) == n
			} else {
				n := len(claimed)
				claimed[k] = struct{}{}
				again = len(claimed) == n
			}
			if again && !slices.Contains(mine, pfx) {
				if o := lastClaimant(want.Peers[:i], pfx); o != peerName(pe) {
					return valid{}, fmt.Errorf("allowed IP %v is claimed by peers %s and %s", pfx, o, peerName(pe))
				}
			}
			mine = append(mine, pfx)
		}
	}
	return v, nil
}

// peerName names a desired peer in errors: its node, else its public key.
func peerName(pe *mesh.Peer) string {
	if pe.Node != "" {
		return pe.Node
	}
	return pe.PublicKey.String()
}

// lastClaimant is the name of the last of the validated peers before
// that claims p (normalized). Peers of one name may share a prefix:
// WireGuard sees one owner either way.
func lastClaimant(before []mesh.Peer, p netip.Prefix) string {
	for k := len(before) - 1; k >= 0; k-- {
		for _, q := range before[k].AllowedIPs {
			if normPrefix(q) == p {
				return peerName(&before[k])
			}
		}
	}
	return ""
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
	return prefixes.Sort(out)
}

// intersect returns the prefixes of have that are also in want, and whether
// any prefix of have is missing from want. Both inputs are sorted and unique.
// kept is only built when something is lost (the caller needs it only
// then), so the common unchanged peer costs no allocation.
func intersect(have, want []netip.Prefix) (kept []netip.Prefix, lost bool) {
	for _, p := range have {
		if _, found := slices.BinarySearchFunc(want, p, prefixes.Compare); !found {
			lost = true
			break
		}
	}
	if !lost {
		return nil, false
	}
	for _, p := range have {
		if _, found := slices.BinarySearchFunc(want, p, prefixes.Compare); found {
			kept = append(kept, p)
		}
	}
	return kept, true
}

// subtract returns the prefixes of a that are not in b (both sorted, unique).
func subtract(a, b []netip.Prefix) (rest []netip.Prefix) {
	for _, p := range a {
		if _, found := slices.BinarySearchFunc(b, p, prefixes.Compare); !found {
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
