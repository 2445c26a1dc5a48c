package prefixes

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// The references below are deliberately naive (quadratic, or address by
// address): they must not share the package's cleverness.

// refParent is the innermost earlier prefix containing sorted[i]: of the
// earlier ones containing it, the longest, the last of equal ones.
func refParent(sorted []netip.Prefix, i int) int {
	best := -1
	for j := range i {
		if sorted[j].Bits() <= sorted[i].Bits() && sorted[j].Contains(sorted[i].Addr()) &&
			(best < 0 || sorted[j].Bits() >= sorted[best].Bits()) {
			best = j
		}
	}
	return best
}

// refOutermost keeps each prefix that no other one contains, once.
func refOutermost(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, p := range ps {
		inside := false
		for j, q := range ps {
			if j != i && q.Bits() <= p.Bits() && q.Contains(p.Addr()) && (q.Bits() < p.Bits() || j < i) {
				inside = true
			}
		}
		if !inside {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, Compare)
	return out
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}

// gen draws prefixes from a small space (10.0.0.0/28 and fd00::/124 at
// every length, a few zoned or mapped addresses, the invalid prefix), so
// that equal, nested and disjoint prefixes are all common.
func gen(next func() byte) netip.Prefix {
	b := next()
	x := next()
	switch b % 8 {
	case 0:
		return netip.Prefix{}
	case 1:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 10, 15: x & 15}), 124+int(x>>4)%5) // IPv4-mapped
	case 2, 3, 4:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, x & 15}), 28+int(x>>4)%5).Masked()
	}
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 15: x & 15}), 124+int(x>>4)%5).Masked()
}

// check asserts fast == reference for every function of the package on ps.
func check(t *testing.T, ps []netip.Prefix) {
	t.Helper()
	for _, a := range ps {
		for _, b := range ps {
			want := a.Addr().Compare(b.Addr())
			if want == 0 {
				want = sign(a.Bits() - b.Bits())
			}
			if got := Compare(a, b); got != want {
				t.Fatalf("Compare(%v, %v) = %d, want %d", a, b, got, want)
			}
			if got := KeyOf(a).Compare(KeyOf(b)); got != want {
				t.Fatalf("KeyOf(%v).Compare(KeyOf(%v)) = %d, want %d", a, b, got, want)
			}
			pa, okA := KeyOf(a).Packed4()
			pb, okB := KeyOf(b).Packed4()
			if okA != (a.Addr().Is4()) || (okA && okB && (pa == pb) != (a == b)) {
				t.Fatalf("Packed4 of %v, %v = %#x %v, %#x %v", a, b, pa, okA, pb, okB)
			}
			if (KeyOf(a) == KeyOf(b)) != (a == b) {
				t.Fatalf("KeyOf(%v) == KeyOf(%v) is %v, the prefixes' == %v", a, b, KeyOf(a) == KeyOf(b), a == b)
			}
		}
	}
	var valid []netip.Prefix
	for _, p := range ps {
		if p.IsValid() {
			valid = append(valid, p.Masked())
		}
	}
	sorted := slices.Clone(valid)
	slices.SortStableFunc(sorted, Compare)
	parents := Parents(sorted, func(p netip.Prefix) netip.Prefix { return p })
	for i := range sorted {
		if want := refParent(sorted, i); parents[i] != want {
			t.Fatalf("Parents(%v)[%d] = %d, want %d", sorted, i, parents[i], want)
		}
	}
	keys := make([]Key, len(sorted))
	for i, p := range sorted {
		keys[i] = KeyOf(p)
	}
	for _, p := range ps {
		want := 0
		for want < len(sorted) && Compare(sorted[want], p) < 0 {
			want++
		}
		if got := Search(keys, KeyOf(p)); got != want {
			t.Fatalf("Search(%v, %v) = %d, want %d", sorted, p, got, want)
		}
	}
	if got, want := Outermost(slices.Clone(valid)), refOutermost(Sort(slices.Clone(valid))); !slices.Equal(got, want) {
		t.Fatalf("Outermost(%v) = %v, want %v", valid, got, want)
	}
	// Subtract: the first prefix minus the others, address by address.
	if len(valid) > 0 {
		r, holes := valid[0], valid[1:]
		got := Subtract(nil, r, holes)
		for _, p := range got {
			if !r.Contains(p.Addr()) || p.Bits() < r.Bits() {
				t.Fatalf("Subtract(%v, %v) returned %v, not inside %v", r, holes, p, r)
			}
		}
		for a := r.Addr(); r.Contains(a); a = a.Next() {
			inHole := slices.ContainsFunc(holes, func(h netip.Prefix) bool { return h.Contains(a) })
			covered := 0
			for _, p := range got {
				if p.Contains(a) {
					covered++
				}
			}
			if covered > 1 || (covered == 1) == inHole {
				t.Fatalf("Subtract(%v, %v) = %v: %v covered %d times, in a hole: %v", r, holes, got, a, covered, inHole)
			}
		}
	}
}

func fromBytes(data []byte) []netip.Prefix {
	i := 0
	next := func() byte {
		if i >= len(data) {
			return 0
		}
		i++
		return data[i-1]
	}
	var ps []netip.Prefix
	for range int(next()) % 24 {
		ps = append(ps, gen(next))
	}
	return ps
}

// TestAgainstReference is the fuzz test's deterministic short run.
func TestAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 3))
	for range 2000 {
		data := make([]byte, 1+r.IntN(48))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		check(t, fromBytes(data))
	}
}

func FuzzAgainstReference(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{8, 2, 0x00, 2, 0x10, 3, 0x20, 5, 0x01, 5, 0x41, 0, 0, 1, 0x03, 2, 0x47})
	f.Fuzz(func(t *testing.T, data []byte) { check(t, fromBytes(data)) })
}
