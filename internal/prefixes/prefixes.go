// Package prefixes is the IP-prefix machinery that mesh, device and routing
// share: one order (Compare), one pointer-free key (Key) for maps and fast
// sorts, and the few set operations Derive needs at thousands of nodes. It
// holds no policy: what a prefix means is the caller's business.
package prefixes

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// Compare orders prefixes by address (netip.Addr.Compare: by family, IPv4
// first, then by value), then by length, shorter first. Sorted this way, a
// prefix inside another follows it, after any prefixes inside both.
func Compare(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// Sort sorts ps by Compare in place and drops repeated prefixes; it returns
// ps shortened.
func Sort(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, Compare)
	return slices.Compact(ps)
}

// Key is a prefix without the pointer a netip.Addr holds: cheap to hash as
// a map key, not scanned by the garbage collector, and compared without
// calls. Keys are equal exactly when the prefixes are (prefixes carry no
// zone), and Key.Compare orders them as Compare orders the prefixes.
type Key struct {
	hi, lo uint64
	// alen is the address's bit length (0 if invalid, 32, 128): the first
	// thing netip.Addr.Compare looks at.
	alen uint8
	// bits is the prefix length plus one (0: an invalid length).
	bits uint8
}

// KeyOf returns p's key.
func KeyOf(p netip.Prefix) Key {
	a := p.Addr()
	b := a.As16()
	return Key{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), alen: uint8(a.BitLen()), bits: uint8(p.Bits() + 1)}
}

// AddrKey returns the key of the single-address prefix of a, its zone
// dropped: keys of addresses order as netip.Addr.Compare orders the
// addresses without their zones.
func AddrKey(a netip.Addr) Key { return KeyOf(netip.PrefixFrom(a, a.BitLen())) }

// Packed4 returns the key of an IPv4 prefix packed into a uint64 (the
// address and the length), which the runtime's maps hash fastest and store
// in half the space; ok is false for any other prefix.
func (k Key) Packed4() (packed uint64, ok bool) {
	if k.alen != 32 {
		return 0, false
	}
	// lo is ::ffff:a.b.c.d's low half: the address in its low 32 bits.
	return k.lo<<8 | uint64(k.bits), true
}

// Compare orders k and o as Compare orders their prefixes.
func (k Key) Compare(o Key) int {
	switch {
	case k.alen != o.alen:
		return cmp.Compare(k.alen, o.alen)
	case k.hi != o.hi:
		return cmp.Compare(k.hi, o.hi)
	case k.lo != o.lo:
		return cmp.Compare(k.lo, o.lo)
	}
	return cmp.Compare(k.bits, o.bits)
}

// Search returns the index of the first key of sorted (ordered by
// Key.Compare) that does not order before k: len(sorted) if there is none.
func Search(sorted []Key, k Key) int {
	lo, hi := 0, len(sorted)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if sorted[m].Compare(k) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Parents returns, for each item of sorted (ordered by Compare of their
// prefixes, repeats allowed), the index of the innermost earlier item whose
// prefix contains (or equals) its own, or -1 if none does. Two prefixes
// overlap only if one contains the other, so every overlap in the list is
// an item and one of its parent's chain; a stack of nested prefixes finds
// them in one pass. prefix gives an item's prefix, so that callers need
// not copy theirs.
func Parents[T any](sorted []T, prefix func(T) netip.Prefix) []int {
	parents := make([]int, len(sorted))
	var stack []int
	for i, x := range sorted {
		a := prefix(x).Addr()
		for len(stack) > 0 && !prefix(sorted[stack[len(stack)-1]]).Contains(a) {
			stack = stack[:len(stack)-1]
		}
		parents[i] = -1
		if len(stack) > 0 {
			parents[i] = stack[len(stack)-1]
		}
		stack = append(stack, i)
	}
	return parents
}

// Outermost sorts ps in place and drops every prefix inside (or equal to)
// another; it returns ps shortened.
func Outermost(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, Compare)
	kept := ps[:0]
	for _, p := range ps {
		// Sorted by address, shorter first: a prefix inside another follows
		// it directly or after prefixes inside it too.
		if n := len(kept); n > 0 && kept[n-1].Contains(p.Addr()) {
			continue
		}
		kept = append(kept, p)
	}
	return kept
}

// Subtract appends to dst the prefixes that cover r (masked) except the
// holes: r itself if no hole overlaps it, nothing if one contains it, else
// both halves, each minus the holes. Only holes overlapping r are passed
// on, so the cost is O(holes × prefix length).
func Subtract(dst []netip.Prefix, r netip.Prefix, holes []netip.Prefix) []netip.Prefix {
	var in []netip.Prefix
	for _, h := range holes {
		if h.Overlaps(r) {
			if h.Bits() <= r.Bits() {
				return dst
			}
			in = append(in, h)
		}
	}
	if len(in) == 0 {
		return append(dst, r)
	}
	lo := netip.PrefixFrom(r.Addr(), r.Bits()+1)
	dst = Subtract(dst, lo, in)
	return Subtract(dst, netip.PrefixFrom(upperHalf(r), r.Bits()+1), in)
}

// upperHalf returns the first address of the upper half of the masked
// prefix p (p.Bits() < its address's length).
func upperHalf(p netip.Prefix) netip.Addr {
	bit := p.Bits()
	if p.Addr().Is4() {
		b := p.Addr().As4()
		b[bit/8] |= 0x80 >> (bit % 8)
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	b[bit/8] |= 0x80 >> (bit % 8)
	return netip.AddrFrom16(b)
}
