package mesh

// The machinery that keeps Derive fast at thousands of nodes: sorted
// indexes and merges over the deriver's state. The rules are in derive.go;
// nothing here decides what is programmed.

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"

	"github.com/wgmesh/wgmesh/internal/prefixes"
)

// byKey compares the candidates managed by public key, for groups.
func (d *deriver) byKey(managed []int) func(a, b int) int {
	keyHeads := make([]uint64, len(d.cands))
	for _, i := range managed {
		keyHeads[i] = binary.BigEndian.Uint64(d.cands[i].node.PublicKey[:8])
	}
	return func(a, b int) int {
		// The keys' leading bytes as integers decide almost always.
		if ha, hb := keyHeads[a], keyHeads[b]; ha != hb {
			return cmp.Compare(ha, hb)
		}
		return bytes.Compare(d.cands[a].node.PublicKey[:], d.cands[b].node.PublicKey[:])
	}
}

// byEndpoint compares the candidates managed with a usable endpoint by
// endpoint (netip.AddrPort.Compare's order), for groups.
func (d *deriver) byEndpoint(managed []int) func(a, b int) int {
	// Pointer-free keys of the endpoints' addresses compare without calls;
	// only equal ones need the zone and port.
	epKeys := make([]prefixes.Key, len(d.cands))
	for _, i := range managed {
		if d.cands[i].endpointOK {
			epKeys[i] = prefixes.AddrKey(d.cands[i].endpoint.Addr())
		}
	}
	return func(a, b int) int {
		if c := epKeys[a].Compare(epKeys[b]); c != 0 {
			return c
		}
		ea, eb := d.cands[a].endpoint, d.cands[b].endpoint
		if c := strings.Compare(ea.Addr().Zone(), eb.Addr().Zone()); c != 0 {
			return c
		}
		return cmp.Compare(ea.Port(), eb.Port())
	}
}

// groups sorts the members of idx that pass keep by cmpFn and calls settle
// with each group of two or more equal ones, sorted by name.
func (d *deriver) groups(idx []int, keep func(int) bool, cmpFn func(a, b int) int, settle func(group []int)) {
	s := make([]int, 0, len(idx))
	for _, i := range idx {
		if keep(i) {
			s = append(s, i)
		}
	}
	slices.SortFunc(s, func(a, b int) int {
		if c := cmpFn(a, b); c != 0 {
			return c
		}
		return strings.Compare(d.cands[a].node.Name, d.cands[b].node.Name)
	})
	for start := 0; start < len(s); {
		end := start + 1
		for end < len(s) && cmpFn(s[start], s[end]) == 0 {
			end++
		}
		if end-start > 1 {
			settle(s[start:end])
		}
		start = end
	}
}

// searchKeep returns the index of the first keep-outside address >= a.
func (d *deriver) searchKeep(a netip.Addr) int {
	if a.Zone() != "" {
		i, _ := slices.BinarySearchFunc(d.keep, a, func(k keepOut, a netip.Addr) int { return k.addr.Compare(a) })
		return i
	}
	// Without a zone, a orders after every address whose key is less, and
	// not after any other: zoned addresses order after their unzoned form.
	return prefixes.Search(d.keepKeys, prefixes.AddrKey(a))
}

// isEndpointOrOption reports whether a is an endpoint or an option's
// keep-outside address (host IPs do not count: they may be claims).
func (d *deriver) isEndpointOrOption(a netip.Addr) bool {
	for i := d.searchKeep(a); i < len(d.keep) && d.keep[i].addr == a; i++ {
		if !d.keep[i].host {
			return true
		}
	}
	return false
}

// ownOverlap returns an own claim overlapping p and whether that claim
// contains p. Own claims are sorted and pairwise disjoint, so the only
// candidates are the one starting where p starts, the last one starting
// before p (which may contain p) and the first one starting after p (which
// p may contain).
func (d *deriver) ownOverlap(p netip.Prefix) (o claim, inside, ok bool) {
	i, found := slices.BinarySearchFunc(d.own, p.Addr(), func(c claim, a netip.Addr) int { return c.prefix.Addr().Compare(a) })
	switch {
	case found:
		return d.own[i], d.own[i].prefix.Bits() <= p.Bits(), true
	case i > 0 && d.own[i-1].prefix.Contains(p.Addr()):
		return d.own[i-1], true, true
	case i < len(d.own) && p.Contains(d.own[i].prefix.Addr()):
		return d.own[i], false, true
	}
	return claim{}, false, false
}

// maxRuns bounds the number of sorted runs sortClaims merges; nodes with
// more claims than that are rare, and a plain sort serves them.
const maxRuns = 8

// sortClaims returns the indexes of d.claims sorted by prefix, equal
// prefixes by owner name (so the partner named in a Problem does not depend
// on the input order), then pod CIDR before host IP. Run r holds
// every node's r-th claim: a node's claims are sorted, and clusters hand
// out pod CIDRs and host IPs in order, so each run is often sorted already
// (which the sort finds in linear time) and merging a few runs costs far
// fewer comparisons than sorting everything at once. Claims that compare
// equal are interchangeable in every output, so which comes first does not
// matter.
func (d *deriver) sortClaims() []int {
	// Pointer-free copies of the prefixes compare without calls.
	keys := make([]prefixes.Key, len(d.claims))
	for i := range d.claims {
		keys[i] = prefixes.KeyOf(d.claims[i].prefix)
	}
	compare := func(a, b int) int {
		if c := keys[a].Compare(keys[b]); c != 0 {
			return c
		}
		ca, cb := &d.claims[a], &d.claims[b]
		if c := strings.Compare(d.cands[ca.owner].node.Name, d.cands[cb.owner].node.Name); c != 0 {
			return c
		}
		return compareBool(ca.host, cb.host)
	}
	order := make([]int, 0, len(d.claims))
	runs := 0
	for i := range d.cands {
		runs = max(runs, d.cands[i].claimEnd-d.cands[i].claimStart)
	}
	if runs <= 1 || runs > maxRuns {
		for i := range d.claims {
			order = append(order, i)
		}
		slices.SortFunc(order, compare)
		return order
	}
	// ends[r] is where run r ends in order; it starts where run r-1 ends.
	ends := make([]int, runs)
	for r := range runs {
		start := len(order)
		for i := range d.cands {
			if c := &d.cands[i]; c.claimStart+r < c.claimEnd {
				order = append(order, c.claimStart+r)
			}
		}
		slices.SortFunc(order[start:], compare)
		ends[r] = len(order)
	}
	heads := make([]int, runs)
	for r := 1; r < runs; r++ {
		heads[r] = ends[r-1]
	}
	merged := make([]int, 0, len(order))
	for {
		best := -1
		for r := range runs {
			if heads[r] < ends[r] && (best < 0 || compare(order[heads[r]], order[heads[best]]) < 0) {
				best = r
			}
		}
		if best < 0 {
			return merged
		}
		merged = append(merged, order[heads[best]])
		heads[best]++
	}
}

// routeMerger merges routes sorted by destination into one list with one
// route per destination: the fixed lists, in which on equal destinations
// the earlier list wins, and the routes passed to add in order, which lose
// to both.
type routeMerger struct {
	out   []Route
	fixed [3][]Route
}

// add emits the fixed routes up to r's destination, then r unless one of
// them or an earlier r had its destination.
func (m *routeMerger) add(r Route) {
	m.flush(&r.Dst)
	m.emit(r)
}

// finish emits the remaining fixed routes and returns the merged list.
func (m *routeMerger) finish() []Route {
	m.flush(nil)
	return m.out
}

// flush emits the fixed routes whose destination orders before or equal to
// *upTo, or all of them if upTo is nil.
func (m *routeMerger) flush(upTo *netip.Prefix) {
	for {
		best := -1
		for i, l := range m.fixed {
			if len(l) > 0 && (best < 0 || prefixes.Compare(l[0].Dst, m.fixed[best][0].Dst) < 0) {
				best = i
			}
		}
		if best < 0 || (upTo != nil && prefixes.Compare(m.fixed[best][0].Dst, *upTo) > 0) {
			return
		}
		m.emit(m.fixed[best][0])
		m.fixed[best] = m.fixed[best][1:]
	}
}

func (m *routeMerger) emit(r Route) {
	if n := len(m.out); n == 0 || m.out[n-1].Dst != r.Dst {
		m.out = append(m.out, r)
	}
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}
