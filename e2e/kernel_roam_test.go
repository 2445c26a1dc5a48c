package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Scenario 3 of issue 13: the userspace node is reachable only at an address
// other than the one it publishes (as behind a NAT): the kernel node cannot
// reach the published 198.18.0.12, and the userspace node sends from
// 198.18.0.112, so WireGuard on the kernel node roams the peer there. An
// agent restart on the kernel node (SIGTERM; the interface stays) must not
// pull the endpoint back to the published address: after the restart and
// several reconciles the endpoint is still the roamed one and traffic flows.
func TestPrivilegedKernelRoamedEndpointSurvivesRestart(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2, NoAgents: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	const roamedAddr = "198.18.0.112"
	if _, err := user.exec(ctx, "ip addr add "+roamedAddr+"/15 dev eth0 && ip route add "+kern.Underlay.String()+"/32 dev eth0 src "+roamedAddr); err != nil {
		t.Fatal(err)
	}
	if _, err := kern.exec(ctx, "ip route add blackhole "+user.Underlay.String()+"/32"); err != nil {
		t.Fatal(err)
	}
	for _, kn := range m.Nodes {
		if err := kn.startAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, kn := range m.Nodes {
		if err := kn.waitPeers(ctx); err != nil {
			t.Fatal(err)
		}
	}
	endpoint := func() string {
		peers, err := kern.wgPeers(ctx)
		if err != nil || len(peers) != 1 {
			t.Fatalf("peers of the kernel node: %v %v", peers, err)
		}
		return peers[0].Endpoint
	}
	if err := user.waitPingNode(ctx, kern, 4); err != nil {
		t.Fatal(err)
	}
	if ep := endpoint(); !strings.HasPrefix(ep, roamedAddr+":") {
		t.Fatalf("the kernel node's peer endpoint is %s before the restart, want the roamed %s: the scenario tests nothing", ep, roamedAddr)
	}
	if err := kern.Guest.SignalAgent(ctx, "TERM", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := kern.Guest.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := kern.waitReady(ctx); err != nil {
		t.Fatalf("%v\n%s", err, kern.agentLogTail(20))
	}
	// The first reconcile ran before ready; give a few more the chance to
	// pull the endpoint back.
	time.Sleep(5 * time.Second)
	if ep := endpoint(); !strings.HasPrefix(ep, roamedAddr+":") {
		t.Errorf("after the restart the peer's endpoint is %s: pulled back from the roamed %s\n%s", ep, roamedAddr, kern.agentLogTail(20))
	}
	r, err := kern.ping(ctx, user, 4, 20, 50*time.Millisecond)
	if err != nil || r.Received != r.Sent {
		t.Errorf("ping kernel -> userspace after the restart: %s %v", r, err)
	}
	t.Logf("measured: endpoint after restart %s; ping %s", endpoint(), r)
	requireNoPlaintext(t, m.stopCapture(t))
}
