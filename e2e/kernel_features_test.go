package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/uml"
)

// Scenario 6 of issue 13, first half: a kernel without CONFIG_XFRM_USER and
// without CONFIG_NFT_OBJREF. The agent must still run the kernel backend (the
// router opens rtnetlink only), keep strict mode in force (the guard rules
// drop, counting per rule) and say exactly what is missing in its status; the
// mesh works and nothing crosses the wire in plaintext.
func TestPrivilegedKernelMissingXfrmObjref(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2, Variant: uml.NoXfrmNoObjref, NoWait: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	st, out, err := kern.waitReady(ctx)
	if err != nil {
		t.Fatalf("agent on a kernel without XFRM_USER and NFT_OBJREF: %v\n%s\nagent log:\n%s", err, out, kern.agentLogTail(30))
	}
	if st.Backend != "kernel" || !st.Strict {
		t.Errorf("backend %q strict %v; want kernel, strict", st.Backend, st.Strict)
	}
	said := strings.Join(st.RoutingWarnings, "\n")
	for _, want := range []string{"CONFIG_NFT_OBJREF", "still drop every plaintext pod packet"} {
		if !strings.Contains(said, want) {
			t.Errorf("status warnings do not say %q:\n%s", want, said)
		}
	}
	t.Logf("status warning: %s", said)
	if !strings.Contains(tailFile(kern.Guest.AgentLog(), 200), "CONFIG_NFT_OBJREF") {
		t.Errorf("the agent's log does not name CONFIG_NFT_OBJREF")
	}
	// The guard rules are in place and drop.
	table := "wgmesh_" + kern.Interface
	nft, err := kern.exec(ctx, "nft list table inet "+table)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(nft, `counter name`) || strings.Count(nft, "counter packets") < 4 || strings.Count(nft, " drop\n") < 4 {
		t.Errorf("want 4 guard rules counting per rule and dropping:\n%s", nft)
	}
	for _, f := range families {
		if err := user.waitPingNode(ctx, kern, f); err != nil {
			t.Fatal(err)
		}
		if err := kern.waitPingNode(ctx, user, f); err != nil {
			t.Fatal(err)
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// Scenario 6, second half: a kernel without nf_tables at all. Strict mode
// cannot be enforced, so it must not be claimed: the agent fails the
// reconcile (not ready) with an error naming CONFIG_NF_TABLES and saying
// strict mode is not in force, and pod traffic is still routed only into the
// tunnel — nothing crosses the wire in plaintext.
func TestPrivilegedKernelMissingNftables(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2, Variant: uml.NoNftables, NoWait: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	st, out, err := kern.waitStatus(ctx, func(st kernelStatus) error {
		if st.LastReconcile == nil || st.LastReconcile.Error == "" {
			return errorf("no reconcile error yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("agent on a kernel without nf_tables: %v\n%s\nagent log:\n%s", err, out, kern.agentLogTail(30))
	}
	if st.Ready {
		t.Errorf("ready although strict mode cannot be enforced")
	}
	msg := st.LastReconcile.Error
	for _, want := range []string{"CONFIG_NF_TABLES", "strict mode is NOT in force"} {
		if !strings.Contains(msg, want) {
			t.Errorf("reconcile error does not say %q:\n%s", want, msg)
		}
	}
	t.Logf("reconcile error: %s", msg)
	for _, f := range families {
		if err := user.waitPingNode(ctx, kern, f); err != nil {
			t.Fatal(err)
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}
