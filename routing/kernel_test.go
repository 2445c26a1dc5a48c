package routing

import (
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
