package routing

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// prefixesFrom decodes fuzz input: each 6-byte chunk is an IPv4 prefix
// (4 address bytes, 1 length byte, 1 ignored), or with the high bit of the
// last byte set, the first 5 bytes seed an IPv6 prefix inside
// fd00:10:244::/48.
func prefixesFrom(data []byte) []netip.Prefix {
	var out []netip.Prefix
	for len(data) >= 6 {
		c := data[:6]
		data = data[6:]
		if c[5]&0x80 == 0 {
			a := netip.AddrFrom4([4]byte{c[0], c[1], c[2], c[3]})
			out = append(out, netip.PrefixFrom(a, int(c[4])%33))
			continue
		}
		b := [16]byte{0xfd, 0x00, 0x00, 0x10, 0x02, 0x44, c[0], c[1], c[2], c[3]}
		out = append(out, netip.PrefixFrom(netip.AddrFrom16(b), 48+int(c[4])%81))
	}
	return out
}

func checkRanges(t *testing.T, rs []ipRange, f family) {
	t.Helper()
	for i, r := range rs {
		if familyOf(r.From) != f || familyOf(r.To) != f || r.To.Compare(r.From) < 0 {
			t.Fatalf("range %d %v malformed", i, r)
		}
		if i > 0 {
			if next := rs[i-1].To.Next(); !next.IsValid() || next.Compare(r.From) >= 0 {
				t.Fatalf("ranges %v and %v overlap or touch", rs[i-1], r)
			}
		}
	}
}

func FuzzRanges(f *testing.F) {
	f.Add([]byte{10, 244, 2, 0, 24, 0, 10, 244, 3, 0, 24, 0})                   // adjacent: merge
	f.Add([]byte{10, 244, 0, 0, 16, 0, 10, 244, 9, 0, 24, 0})                   // contained
	f.Add([]byte{0, 0, 0, 0, 0, 0})                                             // everything
	f.Add([]byte{255, 255, 255, 255, 32, 0})                                    // top address
	f.Add([]byte{0, 2, 0, 0, 64, 0x80, 0, 3, 0, 0, 64, 0x80, 1, 0, 0, 0, 0, 0}) // IPv6 pair
	f.Fuzz(func(t *testing.T, data []byte) {
		ps := prefixesFrom(data)
		for _, fam := range []family{v4, v6} {
			rs := rangesOf(ps, fam)
			checkRanges(t, rs, fam)
			covered := func(a netip.Addr) bool {
				for _, r := range rs {
					if r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0 {
						return true
					}
				}
				return false
			}
			for _, p := range ps {
				if familyOf(p.Addr()) == fam && (!covered(p.Masked().Addr()) || !covered(lastAddr(p))) {
					t.Fatalf("prefix %v not covered by %v", p, rs)
				}
			}
			// What the kernel hands back decodes to what was written.
			if back := rangesOfIntervals(intervals(rs)); !cmp.Equal(back, rs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
				t.Fatalf("intervals round trip: %v -> %v", rs, back)
			}
			for _, r := range rs {
				if s := r.String(); !containsDash(s) {
					p, err := netip.ParsePrefix(s)
					if err != nil || p.Addr() != r.From || lastAddr(p) != r.To {
						t.Fatalf("range %v renders as %q", r, s)
					}
				}
			}
		}
	})
}

func containsDash(s string) bool {
	for _, c := range s {
		if c == '-' {
			return true
		}
	}
	return false
}

// FuzzRangesOfIntervals feeds arbitrary element lists, as a foreign or
// damaged set could hold, to the decoder: it must never panic and must
// return well-formed ranges.
func FuzzRangesOfIntervals(f *testing.F) {
	f.Add([]byte{0, 10, 244, 2, 0, 1, 10, 244, 3, 0})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 10, 0, 0, 0, 1, 10, 0, 0, 1})
	f.Add([]byte{0, 255, 255, 255, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var els []interval
		for len(data) >= 5 {
			els = append(els, interval{Key: netip.AddrFrom4([4]byte{data[1], data[2], data[3], data[4]}), End: data[0]&1 == 1})
			data = data[5:]
		}
		checkRanges(t, rangesOfIntervals(els), v4)
	})
}

func TestRangeString(t *testing.T) {
	for _, c := range []struct {
		r    ipRange
		want string
	}{
		{ipRange{addr("10.244.2.0"), addr("10.244.3.255")}, "10.244.2.0/23"},
		{ipRange{addr("10.244.2.0"), addr("10.244.4.255")}, "10.244.2.0-10.244.4.255"},
		{ipRange{addr("0.0.0.0"), addr("255.255.255.255")}, "0.0.0.0/0"},
		{ipRange{addr("fd00:10:244:2::"), addr("fd00:10:244:3:ffff:ffff:ffff:ffff")}, "fd00:10:244:2::/63"},
	} {
		if got := c.r.String(); got != c.want {
			t.Errorf("%v.String() = %q, want %q", c.r, got, c.want)
		}
	}
	if got := intervals([]ipRange{{addr("255.255.255.0"), addr("255.255.255.255")}}); len(got) != 1 || got[0].End {
		t.Errorf("a range reaching the top must have no end element: %v", got)
	}
}
