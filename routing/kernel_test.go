package routing

import (
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"testing"

	"golang.org/x/sys/unix"
)

// The router's netlink handle must open rtnetlink only: a kernel without
// CONFIG_XFRM_USER refuses an XFRM socket, and netlink.NewHandleAt opens one
// unless told the families (found against a UML kernel, issue 13).
func TestKernelNetlinkHandleOnlyRoute(t *testing.T) {
	k, err := newKernel(Options{Interface: "wgmesh0"}, nsCurrent)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if !k.nl.SupportsNetlinkFamily(unix.NETLINK_ROUTE) {
		t.Error("handle does not open NETLINK_ROUTE, which every router op uses")
	}
	for _, f := range []struct {
		name string
		num  int
	}{{"NETLINK_XFRM", unix.NETLINK_XFRM}, {"NETLINK_NETFILTER", unix.NETLINK_NETFILTER}} {
		if k.nl.SupportsNetlinkFamily(f.num) {
			t.Errorf("handle opens %s, which the router never uses and a minimal kernel may lack", f.name)
		}
	}
}

// Without CONFIG_NFT_OBJREF a guard rule counts in a per-rule counter, and
// the drop counts are the sum of those (issue 13).
func TestGuardExprsPerRuleCounter(t *testing.T) {
	set := &nftables.Set{Name: nftEncrypt4}
	named := guardExprs(v4, expr.MetaKeyOIFNAME, "wgmesh0", nftDaddr[v4], set, nftCounterEgress)
	perRule := guardExprs(v4, expr.MetaKeyOIFNAME, "wgmesh0", nftDaddr[v4], set, "")
	if len(named) != len(perRule) {
		t.Fatalf("named %d expressions, per-rule %d: the rules must differ only in how they count", len(named), len(perRule))
	}
	for i := range named {
		o, isRef := named[i].(*expr.Objref)
		_, isCounter := perRule[i].(*expr.Counter)
		if isRef != isCounter {
			t.Errorf("expression %d: named %T, per-rule %T", i, named[i], perRule[i])
		}
		if isRef && o.Name != nftCounterEgress {
			t.Errorf("objref names %q, want %q", o.Name, nftCounterEgress)
		}
		if _, ok := perRule[i].(*expr.Objref); ok {
			t.Errorf("per-rule rule still references a named counter at %d", i)
		}
	}
	if _, ok := perRule[len(perRule)-1].(*expr.Verdict); !ok {
		t.Error("per-rule rule does not end in a verdict: it must still drop")
	}
	rules := []*nftables.Rule{
		{Exprs: []expr.Any{&expr.Counter{Packets: 3}, &expr.Verdict{Kind: expr.VerdictDrop}}},
		{Exprs: []expr.Any{&expr.Meta{}}},
		{Exprs: []expr.Any{&expr.Counter{Packets: 4}}},
	}
	if n := sumCounters(rules); n != 7 {
		t.Errorf("sumCounters = %d, want 7", n)
	}
	if w := noObjrefWarning("wgmesh"); !strings.Contains(w, "CONFIG_NFT_OBJREF") || !strings.Contains(w, "still drop") {
		t.Errorf("warning %q does not say what is missing and what still holds", w)
	}
}
