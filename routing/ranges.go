package routing

import (
	"net/netip"
	"slices"
)

// ipRange is an inclusive address range of one family: the form in which
// nftables interval sets hold prefixes. Overlapping and adjacent prefixes
// merge into one range, because the kernel rejects overlapping intervals.
type ipRange struct {
	From, To netip.Addr
}

// String renders the range as a prefix when it is exactly one, else as
// "from-to" (both are nft element syntax).
func (r ipRange) String() string {
	for bits := 0; bits <= r.From.BitLen(); bits++ {
		p := netip.PrefixFrom(r.From, bits)
		if p.Masked().Addr() == r.From && lastAddr(p) == r.To {
			return p.String()
		}
	}
	return r.From.String() + "-" + r.To.String()
}

// lastAddr is the highest address of p. It works on arrays, not slices:
// rangesOf calls it for every strict source on every Apply.
func lastAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	if !p.IsValid() {
		return netip.Addr{}
	}
	if a := p.Addr(); a.Is4() {
		b := a.As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

// setHostBits sets every bit of b after the first bits ones.
func setHostBits(b []byte, bits int) {
	for i := bits; i < len(b)*8; {
		if i%8 == 0 {
			b[i/8] = 0xff
			i += 8
			continue
		}
		b[i/8] |= 0x80 >> (i % 8)
		i++
	}
}

// rangesOf merges the prefixes of family f into sorted, disjoint,
// non-adjacent ranges.
func rangesOf(ps []netip.Prefix, f family) []ipRange {
	var rs []ipRange
	n := 0
	for _, p := range ps {
		if p.IsValid() && familyOf(p.Addr()) == f {
			n++
		}
	}
	if n > 0 {
		rs = make([]ipRange, 0, n)
	}
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		if familyOf(p.Addr()) != f {
			continue
		}
		rs = append(rs, ipRange{p.Addr(), lastAddr(p)})
	}
	// Derive's strict sources come sorted.
	byFrom := func(a, b ipRange) int { return a.From.Compare(b.From) }
	if !slices.IsSortedFunc(rs, byFrom) {
		slices.SortFunc(rs, byFrom)
	}
	return rangesMerge(rs)
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 prefix loses when
// unmapped (96), else 0.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return min(96, p.Bits())
	}
	return 0
}

// interval is one element of an nftables interval set: a start, or the
// exclusive end of the preceding range.
type interval struct {
	Key netip.Addr
	End bool
}

// intervals turns ranges into interval set elements. A range reaching the
// family's highest address has no end element: it is open to the top.
func intervals(rs []ipRange) []interval {
	var out []interval
	for _, r := range rs {
		out = append(out, interval{Key: r.From})
		if next := r.To.Next(); next.IsValid() {
			out = append(out, interval{Key: next, End: true})
		}
	}
	return out
}

// rangesOfIntervals is the inverse of intervals for what the kernel returns:
// elements in any order. Stray end elements (such as the leading "0.0.0.0
// interval end" the nft tool adds) are ignored; a start without an end
// extends to the highest address.
func rangesOfIntervals(els []interval) []ipRange {
	els = slices.Clone(els)
	slices.SortFunc(els, func(a, b interval) int {
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		// At the same key an end closes the previous range before a start
		// opens the next one.
		switch {
		case a.End == b.End:
			return 0
		case a.End:
			return -1
		}
		return 1
	})
	var out []ipRange
	var open *netip.Addr
	for _, e := range els {
		switch {
		case !e.End && open == nil:
			k := e.Key
			open = &k
		case e.End && open != nil:
			if prev := e.Key.Prev(); prev.IsValid() && prev.Compare(*open) >= 0 {
				out = append(out, ipRange{*open, prev})
			}
			open = nil
		}
	}
	if open != nil {
		out = append(out, ipRange{*open, highest(familyOf(*open))})
	}
	return rangesMerge(out)
}

func highest(f family) netip.Addr {
	if f == v4 {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	var b [16]byte
	for i := range b {
		b[i] = 0xff
	}
	return netip.AddrFrom16(b)
}

// rangesMerge joins adjacent or overlapping ranges sorted by From: a range
// starting inside the previous one or right after it extends it. It merges
// in place, overwriting rs; an empty rs gives nil.
func rangesMerge(rs []ipRange) []ipRange {
	var out []ipRange
	if len(rs) > 0 {
		out = rs[:0]
	}
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if next := last.To.Next(); !next.IsValid() || r.From.Compare(next) <= 0 {
				if r.To.Compare(last.To) > 0 {
					last.To = r.To
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

// diffRanges returns the ranges only in want (add) and only in have (del).
func diffRanges(have, want []ipRange) (add, del []ipRange) {
	if slices.Equal(have, want) {
		// The usual resync: no set needs building.
		return nil, nil
	}
	haveSet, wantSet := setOf(have), setOf(want)
	for _, w := range want {
		if !haveSet[w] {
			add = append(add, w)
		}
	}
	for _, h := range have {
		if !wantSet[h] {
			del = append(del, h)
		}
	}
	return add, del
}
