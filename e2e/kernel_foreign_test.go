package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Scenario 4 of issue 13, on a real kernel module: a wg-quick style wg0 (its
// own key, listen port, peer and address) is never adopted, reconfigured or
// deleted — not by the agent, not by `wgmesh cleanup` of the agent's
// interface, not by `wgmesh cleanup --interface wg0`. And a wgmesh link left
// by a previous --interface name is found: the agent under the new name
// refuses to start while it exists (naming it and the shared route table),
// so two instances never carry the same routes; `wgmesh cleanup --interface
// <old>` removes it with its routes and rules, and the new agent then starts.
func TestPrivilegedKernelForeignAndOldLinks(t *testing.T) {
	m := startKernelMesh(t, kernelMeshOptions{Kernel: []int{1}, Nodes: 2, NoAgents: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kern, user := m.Nodes[0], m.Nodes[1]
	if err := user.startAgent(ctx); err != nil {
		t.Fatal(err)
	}
	mustRun := func(cmd string) string {
		t.Helper()
		out, err := kern.exec(ctx, cmd)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	mustRun("wg genkey > /tmp/wg0.key && ip link add wg0 type wireguard && " +
		"wg set wg0 private-key /tmp/wg0.key listen-port 51999 peer $(wg genkey | wg pubkey) allowed-ips 10.99.0.0/24 endpoint 198.18.0.99:51999 && " +
		"ip addr add 10.99.0.1/24 dev wg0 && ip link set wg0 up")
	const wg0State = "wg show wg0 public-key; wg show wg0 listen-port; wg show wg0 allowed-ips; wg show wg0 endpoints; wg show wg0 fwmark; " +
		"ip -br addr show wg0; ip -d link show wg0 | grep -c alias || true; ip route show dev wg0"
	wg0 := mustRun(wg0State)
	checkWG0 := func(when string) {
		t.Helper()
		if got, err := kern.exec(ctx, wg0State); err != nil || got != wg0 {
			t.Errorf("wg0 changed %s (%v):\nbefore:\n%s\nafter:\n%s", when, err, wg0, got)
		}
	}

	// A previous run under another interface name, stopped the way an
	// upgrade stops it (SIGTERM leaves the data plane up).
	old := fmt.Sprintf("wo%sn1", m.ID())
	if _, err := kern.Guest.StartAgent(ctx, "--interface", old); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(ctx, func() error {
		out, err := kern.exec(ctx, m.wgmesh+" status --interface "+old+" -o json")
		if err == nil && !strings.Contains(strings.ReplaceAll(out, " ", ""), `"ready":true`) {
			err = errorf("old instance not ready: %s", out)
		}
		return err
	}); err != nil {
		t.Fatalf("%v\n%s", err, kern.agentLogTail(20))
	}
	checkWG0("while an agent ran next to it")
	if err := kern.Guest.SignalAgent(ctx, "TERM", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if out := mustRun("ip route show table 51820"); strings.TrimSpace(out) == "" {
		t.Fatalf("the old instance left no routes to find: the scenario tests nothing")
	}

	// The agent under the new name refuses, naming the old link.
	if _, err := kern.Guest.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(withTimeout(ctx, time.Minute), func() error {
		if pid, running := kern.Guest.AgentPid(ctx); running {
			return errorf("agent (pid %d) still running next to the old instance %s", pid, old)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, kern.agentLogTail(20))
	}
	log := tailFile(kern.Guest.AgentLog(), 20)
	if !strings.Contains(log, old) || !strings.Contains(log, "route table 51820") {
		t.Errorf("the refusal does not name the old instance %s and its route table:\n%s", old, log)
	}
	if out := mustRun("ip link show " + kern.Interface + " 2>&1 || true"); !strings.Contains(out, "does not exist") {
		t.Errorf("the refused agent created its interface anyway:\n%s", out)
	}

	// cleanup of wg0 refuses; cleanup of the old name removes it all.
	if out, err := kern.Guest.Wgmesh(ctx, "cleanup", "--interface", "wg0"); err == nil {
		t.Errorf("wgmesh cleanup --interface wg0 succeeded on a foreign interface:\n%s", out)
	}
	checkWG0("after wgmesh cleanup --interface wg0")
	if out, err := kern.Guest.Wgmesh(ctx, "cleanup", "--interface", old); err != nil {
		t.Fatalf("wgmesh cleanup --interface %s: %v\n%s", old, err, out)
	}
	if out := mustRun("ip link show " + old + " 2>&1 || true; ip route show table 51820; ip rule | grep -w 51820 || true"); !strings.Contains(out, "does not exist") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("after cleanup of %s, its link, routes or rules remain:\n%s", old, out)
	}
	checkWG0("after wgmesh cleanup of the old instance")

	// Now the agent starts under the new name and the mesh works.
	if _, err := kern.Guest.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	for _, kn := range m.Nodes {
		if err := kn.waitPeers(withTimeout(ctx, time.Minute)); err != nil {
			t.Fatalf("%v\n%s", err, kn.agentLogTail(20))
		}
	}
	for _, f := range families {
		if err := user.waitPingNode(ctx, kern, f); err != nil {
			t.Fatal(err)
		}
	}
	checkWG0("with the new agent running")
	if err := kern.Guest.SignalAgent(ctx, "TERM", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := kern.Guest.Wgmesh(ctx, "cleanup", "--interface", kern.Interface); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	checkWG0("after wgmesh cleanup of the agent's interface")
	requireNoPlaintext(t, m.stopCapture(t))
}
