package device

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// refDiff is diff written the obvious way, with no fast path and quadratic
// set operations, as wireguard-go keeps a slow table to check its
// allowed-IPs trie against. diff must return exactly what it returns.
func refDiff(cur *wgtypes.Device, want mesh.DeviceConfig, sent map[wgtypes.Key]netip.AddrPort) (plan, error) {
	if cur == nil {
		cur = &wgtypes.Device{}
	}
	if want.PrivateKey.IsZero() {
		return plan{}, fmt.Errorf("private key is empty; the agent must load or create a key first")
	}
	if want.ListenPort < 0 || want.ListenPort > 65535 {
		return plan{}, fmt.Errorf("listen port %d: want 0..65535", want.ListenPort)
	}
	self := want.PrivateKey.PublicKey()
	seen := map[mesh.Key]string{}
	owner := map[netip.Prefix]string{}
	type peer struct {
		p       mesh.Peer
		allowed []netip.Prefix
	}
	var peers []peer
	for _, pe := range want.Peers {
		name := pe.Node
		if name == "" {
			name = pe.PublicKey.String()
		}
		switch {
		case pe.PublicKey.IsZero():
			return plan{}, fmt.Errorf("peer %s: public key is empty", name)
		case pe.PublicKey == self:
			return plan{}, fmt.Errorf("peer %s: has this device's own public key", name)
		case seen[pe.PublicKey] != "":
			return plan{}, fmt.Errorf("peers %s and %s have the same public key", seen[pe.PublicKey], name)
		case pe.Keepalive < 0 || pe.Keepalive > 65535*time.Second:
			return plan{}, fmt.Errorf("peer %s: keepalive %v: want 0..65535s", name, pe.Keepalive)
		case pe.Endpoint.IsValid() && pe.Endpoint.Port() == 0:
			return plan{}, fmt.Errorf("peer %s: endpoint %v has port 0", name, pe.Endpoint)
		}
		seen[pe.PublicKey] = name
		var allowed []netip.Prefix
		for _, q := range pe.AllowedIPs {
			if !q.IsValid() {
				return plan{}, fmt.Errorf("peer %s: invalid allowed IP prefix %v", name, q)
			}
			q = normPrefix(q)
			if o, dup := owner[q]; dup && o != name {
				return plan{}, fmt.Errorf("allowed IP %v is claimed by peers %s and %s", q, o, name)
			}
			owner[q] = name
			allowed = refAdd(allowed, q)
		}
		pe.Endpoint = netip.AddrPortFrom(pe.Endpoint.Addr().Unmap(), pe.Endpoint.Port())
		peers = append(peers, peer{pe, allowed})
	}
	slices.SortFunc(peers, func(a, b peer) int { return bytes.Compare(a.p.PublicKey[:], b.p.PublicKey[:]) })

	// find returns the current peer with key k: the last one, should the
	// device report k twice.
	find := func(k wgtypes.Key) *wgtypes.Peer {
		var c *wgtypes.Peer
		for i := range cur.Peers {
			if cur.Peers[i].PublicKey == k {
				c = &cur.Peers[i]
			}
		}
		return c
	}
	var p plan
	withdraw, grant := &wgtypes.Config{}, &wgtypes.Config{}
	if k := wgtypes.Key(want.PrivateKey); k != cur.PrivateKey {
		grant.PrivateKey, p.Summary.PrivateKey = &k, true
	}
	if port := want.ListenPort; port != 0 && port != cur.ListenPort {
		grant.ListenPort, p.Summary.ListenPort = &port, true
	}
	if mark := int(want.FwMark); int64(want.FwMark) != int64(cur.FirewallMark) {
		grant.FirewallMark, p.Summary.FwMark = &mark, true
	}
	var gone []wgtypes.Key
	for _, c := range cur.Peers {
		if !slices.ContainsFunc(peers, func(w peer) bool { return wgtypes.Key(w.p.PublicKey) == c.PublicKey }) && !slices.Contains(gone, c.PublicKey) {
			gone = append(gone, c.PublicKey)
		}
	}
	slices.SortFunc(gone, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range gone {
		withdraw.Peers = append(withdraw.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
	}
	p.Summary.Removed = len(gone)
	for _, w := range peers {
		k := wgtypes.Key(w.p.PublicKey)
		ka := int(w.p.Keepalive / time.Second)
		c := find(k)
		if c == nil {
			pc := wgtypes.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true, AllowedIPs: ipNets(w.allowed)}
			if w.p.Endpoint.IsValid() {
				pc.Endpoint = udpAddr(w.p.Endpoint)
			}
			if ka != 0 {
				d := time.Duration(ka) * time.Second
				pc.PersistentKeepaliveInterval = &d
			}
			grant.Peers = append(grant.Peers, pc)
			p.Summary.Added++
			continue
		}
		var have []netip.Prefix
		for _, n := range c.AllowedIPs {
			if q, ok := prefixFromIPNet(n); ok {
				have = refAdd(have, q)
			}
		}
		var kept, gained []netip.Prefix
		lost := false
		for _, q := range have {
			if slices.Contains(w.allowed, q) {
				kept = append(kept, q)
			} else {
				lost = true
			}
		}
		for _, q := range w.allowed {
			if !slices.Contains(have, q) {
				gained = append(gained, q)
			}
		}
		changed := false
		if lost {
			withdraw.Peers = append(withdraw.Peers, wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true, ReplaceAllowedIPs: true, AllowedIPs: ipNets(kept)})
			changed = true
		}
		pc := wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true}
		if len(gained) > 0 {
			pc.AllowedIPs = ipNets(gained)
		}
		var at netip.AddrPort
		if c.Endpoint != nil {
			at = c.Endpoint.AddrPort()
			at = netip.AddrPortFrom(at.Addr().Unmap(), at.Port())
		}
		if w.p.Endpoint.IsValid() && at != w.p.Endpoint && (c.Endpoint == nil || sent[k] != w.p.Endpoint) {
			pc.Endpoint = udpAddr(w.p.Endpoint)
		}
		if int(c.PersistentKeepaliveInterval/time.Second) != ka {
			d := time.Duration(ka) * time.Second
			pc.PersistentKeepaliveInterval = &d
		}
		if pc.AllowedIPs != nil || pc.Endpoint != nil || pc.PersistentKeepaliveInterval != nil {
			grant.Peers = append(grant.Peers, pc)
			changed = true
		}
		if changed {
			p.Summary.Updated++
		} else {
			p.Summary.Unchanged++
		}
	}
	if len(withdraw.Peers) > 0 {
		p.Withdraw = withdraw
	}
	if len(grant.Peers) > 0 || grant.PrivateKey != nil || grant.ListenPort != nil || grant.FirewallMark != nil {
		p.Grant = grant
	}
	return p, nil
}

// refAdd inserts q into the sorted, unique list ps (by address, then
// length) unless it is there.
func refAdd(ps []netip.Prefix, q netip.Prefix) []netip.Prefix {
	for i, p := range ps {
		if p == q {
			return ps
		}
		if c := p.Addr().Compare(q.Addr()); c > 0 || (c == 0 && p.Bits() > q.Bits()) {
			return slices.Insert(ps, i, q)
		}
	}
	return append(ps, q)
}

// diffInput turns bytes into a device, a desired configuration and the
// endpoints sent, from small pools so that shared keys, names and
// prefixes, repeats, mapped and unmasked forms and invalid values are all
// common.
func diffInput(data []byte) (*wgtypes.Device, mesh.DeviceConfig, map[wgtypes.Key]netip.AddrPort) {
	i := 0
	next := func() int {
		if i >= len(data) {
			return 0
		}
		i++
		return int(data[i-1])
	}
	keys := []mesh.Key{testKey(10), testKey(11), testKey(12), testKey(13), testKey(14), {}, privA.PublicKey()}
	names := []string{"x", "y", "z", ""}
	pool := []netip.Prefix{pfx("10.244.1.0/24")[0], pfx("10.244.1.7/24")[0], pfx("10.244.1.0/25")[0],
		pfx("::ffff:10.244.1.0/120")[0], pfx("fd00::/64")[0], pfx("fd00::1/64")[0], pfx("198.18.0.5/32")[0],
		pfx("10.244.2.0/24")[0], pfx("fd00:1::/64")[0], {}}
	eps := []netip.AddrPort{{}, epX, epY, epY2, netip.MustParseAddrPort("[::ffff:198.18.0.10]:51820"), netip.MustParseAddrPort("198.18.0.7:0")}
	kas := []time.Duration{0, keep25, 1500 * time.Millisecond, -time.Second, 70000 * time.Second}
	ipnet := func() net.IPNet {
		switch b := next(); b % 8 {
		case 0:
			return net.IPNet{IP: net.ParseIP("10.244.3.0"), Mask: nil} // malformed
		case 1:
			return net.IPNet{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(120, 128)} // mapped, 16-byte
		default:
			q := pool[b%len(pool)]
			if !q.IsValid() {
				q = pool[0]
			}
			return ipNets([]netip.Prefix{q})[0]
		}
	}
	cur := &wgtypes.Device{PrivateKey: wgk([]mesh.Key{privA, privB}[next()%2]), ListenPort: []int{0, 51820}[next()%2], FirewallMark: next() % 2}
	for range next() % 6 {
		p := wgtypes.Peer{PublicKey: wgk(keys[next()%5]), PersistentKeepaliveInterval: kas[next()%3]}
		if ep := eps[next()%5]; ep.IsValid() {
			p.Endpoint = udpAddr(ep)
		}
		for range next() % 4 {
			p.AllowedIPs = append(p.AllowedIPs, ipnet())
		}
		cur.Peers = append(cur.Peers, p)
	}
	want := mesh.DeviceConfig{ListenPort: []int{0, 51820, 51821, 70000}[next()%4], FwMark: uint32(next() % 2)}
	// Mostly valid: the invalid pool entries are the last few.
	if b := next(); b%16 != 0 {
		want.PrivateKey = []mesh.Key{privA, privB}[b%2]
	}
	strict := next()%4 != 0
	pick := func(n, valid int) int {
		if strict {
			return next() % valid
		}
		return next() % n
	}
	for range next() % 7 {
		pe := mesh.Peer{Node: names[next()%len(names)], PublicKey: keys[pick(len(keys), 5)],
			Endpoint: eps[pick(len(eps), 5)], Keepalive: kas[pick(len(kas), 3)]}
		for range next() % 4 {
			pe.AllowedIPs = append(pe.AllowedIPs, pool[pick(len(pool), len(pool)-1)])
		}
		want.Peers = append(want.Peers, pe)
	}
	sent := map[wgtypes.Key]netip.AddrPort{}
	for _, k := range keys[:5] {
		if b := next(); b%3 != 0 {
			sent[wgk(k)] = eps[b%5]
		}
	}
	return cur, want, sent
}

// checkDiffReference asserts diff == refDiff: the same plan, or the same
// error.
func checkDiffReference(t *testing.T, cur *wgtypes.Device, want mesh.DeviceConfig, sent map[wgtypes.Key]netip.AddrPort) {
	t.Helper()
	wantPlan, wantErr := refDiff(cur, want, sent)
	got, err := diff(cur, want, sent)
	if fmt.Sprint(err) != fmt.Sprint(wantErr) {
		t.Fatalf("diff error %v, reference %v", err, wantErr)
	}
	if d := cmp.Diff(wantPlan, got, cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("diff differs from the reference (-reference +diff):\n%s", d)
	}
}

// mutated is a changed copy of the large configuration cfg: some peers
// dropped, moved prefixes, new endpoints and keepalives, new peers.
func mutated(r *rand.Rand, cfg mesh.DeviceConfig) mesh.DeviceConfig {
	out := cfg
	out.Peers = nil
	for _, p := range cfg.Peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		switch r.IntN(40) {
		case 0:
			continue
		case 1:
			p.AllowedIPs = p.AllowedIPs[1:]
		case 2:
			p.Endpoint = epY2
		case 3:
			p.Keepalive = keep25
		case 4:
			p.AllowedIPs = append(p.AllowedIPs, p.AllowedIPs[0]) // repeated
		}
		out.Peers = append(out.Peers, p)
	}
	for i := range r.IntN(3) {
		var k mesh.Key
		k[0], k[5] = byte(i), 0xee
		out.Peers = append(out.Peers, mesh.Peer{Node: fmt.Sprint("new-", i), PublicKey: k, Endpoint: epX,
			AllowedIPs: pfx(fmt.Sprintf("10.250.%d.0/24", i))})
	}
	r.Shuffle(len(out.Peers), func(i, j int) { out.Peers[i], out.Peers[j] = out.Peers[j], out.Peers[i] })
	return out
}

// TestDiffMatchesReference is FuzzDiffReference's short deterministic run
// in the normal tests, plus large configurations with a few changes (the
// fast path's case).
func TestDiffMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 2))
	for range 3000 {
		data := make([]byte, r.IntN(64))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		cur, want, sent := diffInput(data)
		checkDiffReference(t, cur, want, sent)
	}
	base := benchConfig(300)
	cur, sent := appliedDevice(base)
	for range 20 {
		checkDiffReference(t, cur, mutated(r, base), sent)
	}
	checkDiffReference(t, nil, base, nil)
}

func FuzzDiffReference(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 3, 0, 1, 1, 2, 2, 3, 1, 2, 0, 1, 2, 2, 1, 1, 3, 0, 2, 2, 1, 0, 3, 5, 1, 1, 1, 1})
	f.Add([]byte("a device with peers that move prefixes, roam and repeat keys"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cur, want, sent := diffInput(data)
		checkDiffReference(t, cur, want, sent)
		// The same, with the desired peers in another order.
		h := fnv.New64a()
		h.Write(data)
		r := rand.New(rand.NewPCG(h.Sum64(), 2))
		r.Shuffle(len(want.Peers), func(i, j int) { want.Peers[i], want.Peers[j] = want.Peers[j], want.Peers[i] })
		checkDiffReference(t, cur, want, sent)
	})
}
