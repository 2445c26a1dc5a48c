package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Scenario 1 of issue 13: `--backend auto` picks kernel WireGuard where the
// module exists (the UML guests) and userspace where it does not (the host's
// namespace node); the mixed mesh carries IPv4 and IPv6 between all pairs,
// 8 MiB each way with matching checksums, and nothing crosses the wire in
// plaintext.
func TestPrivilegedKernelMixedMesh(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1, 2}, AgentArgs: []string{"--backend", "auto"}})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	for _, kn := range m.Nodes {
		want := kn.kind()
		st, out, err := kn.waitReady(ctx)
		if err != nil {
			t.Fatalf("%s: status: %v\n%s\n%s", kn.Name, err, out, kn.agentLogTail(30))
		}
		if st.Backend != want {
			t.Errorf("%s: status says backend %q, want %q (--backend auto)", kn.Name, st.Backend, want)
		}
		if !st.Strict || len(st.Peers) != len(m.Nodes)-1 {
			t.Errorf("%s: strict %v, %d peers in status; want strict and %d", kn.Name, st.Strict, len(st.Peers), len(m.Nodes)-1)
		}
		wg, err := kn.exec(ctx, "wg show "+kn.Interface)
		if err != nil || strings.Count(wg, "peer: ") != len(m.Nodes)-1 {
			t.Errorf("%s: wg show: %v\n%s", kn.Name, err, wg)
		}
		// The kernel backend's interface is a real wireguard link; the
		// userspace one is a TUN.
		link, err := kn.exec(ctx, "ip -d link show "+kn.Interface)
		if err != nil || strings.Contains(link, "wireguard") != (want == "kernel") {
			t.Errorf("%s: `ip -d link` does not match backend %s: %v\n%s", kn.Name, want, err, link)
		}
		t.Logf("%s: backend %s, ready, %d peers", kn.Name, st.Backend, len(st.Peers))
	}

	const size = 8 << 20
	port := 5300
	for _, a := range m.Nodes {
		for _, b := range m.Nodes {
			if a == b {
				continue
			}
			for _, f := range families {
				if err := a.waitPingNode(ctx, b, f); err != nil {
					t.Fatalf("%v\n%s", err, a.agentLogTail(20))
				}
				port++
				took, err := a.transfer(ctx, b, f, port, size)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("measured: %s (%s) -> %s (%s) IPv%d: 8 MiB in %s, checksums match", a.Name, a.kind(), b.Name, b.kind(), f, took.Round(time.Millisecond))
			}
		}
	}
	r := m.stopCapture(t)
	requireNoPlaintext(t, r)
}
