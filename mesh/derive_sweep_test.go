package mesh

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/wgmesh/wgmesh/internal/prefixes"
)

// The overlap sweep (sortClaims, prefixes.Parents, sweepOverlaps) is
// Derive's fastest-moving part; these tests hold it to an obviously correct
// quadratic reference, as wireguard-go holds its allowed-IPs trie to a
// slow table.

// sweptDeriver runs Derive's steps up to and including the overlap sweep
// and returns the deriver with the sweep's problems only.
func sweptDeriver(self Node, nodes []Node, o DeriveOptions) *deriver {
	d := &deriver{o: o, selfName: self.Name, selfKey: self.PublicKey}
	d.collectSelf(self, nodes)
	d.collectOthers(nodes)
	d.findConflicts()
	d.collectKeepOutside()
	d.collectClaims()
	d.checkOwnAndKeepOutside()
	d.problems = nil
	d.sweepOverlaps()
	return d
}

// checkSweep asserts that the sweep's results equal the reference's: the
// visiting order is every claim once, sorted by prefix, owner name and
// kind; a claim is contested exactly when a claim of another node
// overlaps it; and each contested claim is reported once, in that order,
// naming one such claim.
func checkSweep(t *testing.T, self Node, nodes []Node, o DeriveOptions) {
	t.Helper()
	d := sweptDeriver(self, nodes, o)
	owner := func(i int) string { return d.cands[d.claims[i].owner].node.Name }

	ref := make([]int, len(d.claims))
	for i := range ref {
		ref[i] = i
	}
	slices.SortStableFunc(ref, func(a, b int) int {
		if c := prefixes.Compare(d.claims[a].prefix, d.claims[b].prefix); c != 0 {
			return c
		}
		if c := strings.Compare(owner(a), owner(b)); c != 0 {
			return c
		}
		return compareBool(d.claims[a].host, d.claims[b].host)
	})
	// Claims that compare equal are interchangeable: compare what the
	// order determines, not the indexes.
	sortKey := func(i int) string { c := d.claims[i]; return fmt.Sprint(c.prefix, owner(i), c.host) }
	if len(d.order) != len(ref) {
		t.Fatalf("order visits %d claims, want %d", len(d.order), len(ref))
	}
	seen := make([]bool, len(d.claims))
	for k, i := range d.order {
		if seen[i] {
			t.Fatalf("order visits claim %d twice", i)
		}
		seen[i] = true
		if got, want := sortKey(i), sortKey(ref[k]); got != want {
			t.Fatalf("order[%d] is %s, want %s", k, got, want)
		}
	}

	var wantProblems []string
	for _, i := range d.order {
		c := d.claims[i]
		var partners []string
		for j, o := range d.claims {
			if o.owner != c.owner && o.prefix.Overlaps(c.prefix) {
				partners = append(partners, fmt.Sprintf("%s overlaps %s of node %q; neither claim is programmed", describe(c), describe(o), owner(j)))
			}
		}
		if c.contested != (len(partners) > 0) {
			t.Fatalf("%s of node %q: contested %v, but %d claims of other nodes overlap it", describe(c), owner(i), c.contested, len(partners))
		}
		if len(partners) > 0 {
			wantProblems = append(wantProblems, strings.Join(partners, "\n"))
		}
	}
	if len(d.problems) != len(wantProblems) {
		t.Fatalf("sweep reported %d problems, want %d: %v", len(d.problems), len(wantProblems), d.problems)
	}
	for k, p := range d.problems {
		if p.Reason != ReasonCIDROverlap || !slices.Contains(strings.Split(wantProblems[k], "\n"), p.Detail) {
			t.Fatalf("problem %d is %+v, want one of\n%s", k, p, wantProblems[k])
		}
	}
}

// sweepFuzzInput turns fuzz bytes into Derive arguments with FuzzDerive's
// generator: few names, keys and prefixes, so overlaps are common.
func sweepFuzzInput(data []byte) (Node, []Node, DeriveOptions) {
	in := &fuzzInput{b: data}
	o := in.options()
	self := in.node()
	var nodes []Node
	for range in.next() % 10 {
		nodes = append(nodes, in.node())
	}
	return self, nodes, o
}

// randomSweepCluster is a cluster of tens to hundreds of nodes whose pod
// CIDRs and host IPs fall in a small range at many lengths, so equal,
// nested and disjoint claims are all common, and both of sortClaims' ways
// (merging up to maxRuns sorted runs, or one plain sort) are taken.
func randomSweepCluster(r *rand.Rand) (Node, []Node, DeriveOptions) {
	o := DeriveOptions{IPv4: true, IPv6: r.IntN(2) == 0, HostEncryption: r.IntN(2) == 0}
	maxClaims := []int{1, 2, 4, maxRuns, maxRuns + 3}[r.IntN(5)]
	pod := func() netip.Prefix {
		if r.IntN(4) == 0 {
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x44, 0, byte(r.IntN(64))}), 58+r.IntN(8)).Masked()
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(64)), byte(r.IntN(256))}), 18+r.IntN(8)).Masked()
	}
	mk := func(i int) Node {
		n := Node{Name: fmt.Sprintf("n%03d", r.IntN(400)), PublicKey: key(byte(1 + i%250)),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 51820)}
		for range r.IntN(maxClaims + 1) {
			if r.IntN(5) == 0 {
				n.HostIPs = append(n.HostIPs, netip.AddrFrom4([4]byte{10, 244, byte(r.IntN(64)), byte(r.IntN(256))}))
			} else {
				n.PodCIDRs = append(n.PodCIDRs, pod())
			}
		}
		return n
	}
	self := mk(0)
	self.Name = "self"
	self.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.245.0.0/24")}
	nodes := []Node{self}
	for i := range 20 + r.IntN(280) {
		nodes = append(nodes, mk(i+1))
	}
	return self, nodes, o
}

// TestSweepOverlapsReference is FuzzSweepOverlaps' short deterministic run
// in the normal tests, plus clusters too large for the fuzz generator.
func TestSweepOverlapsReference(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 1))
	for range 1000 {
		data := make([]byte, r.IntN(160))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		self, nodes, o := sweepFuzzInput(data)
		checkSweep(t, self, nodes, o)
	}
	for range 40 {
		self, nodes, o := randomSweepCluster(r)
		checkSweep(t, self, nodes, o)
	}
}

func FuzzSweepOverlaps(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x03, 0, 1, 0x0c, 2, 0x2e, 1, 0x09, 1, 5, 1, 3, 0x0c, 2, 0x34, 0x2c, 1, 0x11, 1, 2, 4, 0x14, 1, 0x1e, 0, 0x09})
	f.Add([]byte("the fuzzer grows this into many nodes with shared keys, names and prefixes"))
	f.Fuzz(func(t *testing.T, data []byte) {
		self, nodes, o := sweepFuzzInput(data)
		checkSweep(t, self, nodes, o)
	})
}
