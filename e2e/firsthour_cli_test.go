package e2e_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// The operator's first hour (issue 17), the CLI helper's items: a stale
// configuration is visible (item 2), the CLI tells the truth (item 3) and
// the default tunnel address is unicast (item 5). Two-node labs: the
// smallest mesh in which one node talks to another.

// statusConditions returns the reasons of `wgmesh status -o json`'s
// conditions on n, and whether it reports ready.
func statusConditions(t *testing.T, ctx context.Context, n *lab.Node) (reasons []string, ready bool) {
	t.Helper()
	doc := nodeStatusJSON(t, ctx, n)
	conds, _ := doc["conditions"].([]any)
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok {
			reasons = append(reasons, fmt.Sprint(m["reason"]))
		}
	}
	ready, _ = doc["ready"].(bool)
	return reasons, ready
}

// waitCondition polls n's status for up to d until want reports true.
func waitCondition(ctx context.Context, d time.Duration, t *testing.T, n *lab.Node, what string, want func(reasons []string, ready bool) bool) error {
	t.Helper()
	var last string
	// The status command runs under ctx, not the poll's deadline, so that
	// the deadline ends the wait rather than killing a status command.
	err := lab.Poll(withTimeout(ctx, d), 300*time.Millisecond, func(context.Context) (bool, error) {
		reasons, ready := statusConditions(t, ctx, n)
		last = fmt.Sprintf("ready %v, conditions %v", ready, reasons)
		return want(reasons, ready), nil
	})
	if err != nil {
		return fmt.Errorf("%s: %s never happened (last: %s): %w", n.Name, what, last, err)
	}
	return nil
}

func hasReason(reasons []string, r string) bool {
	for _, x := range reasons {
		if x == r {
			return true
		}
	}
	return false
}

// nodeHTTP fetches an agent endpoint inside the node's namespace (the
// agent's default --metrics-addr) and returns the HTTP code and body.
func nodeHTTP(t *testing.T, ctx context.Context, n *lab.Node, path string) (string, string) {
	t.Helper()
	out := mustSh(t, ctx, n.NS, "curl -s -w '\\n%{http_code}' http://127.0.0.1:9587"+path)
	i := strings.LastIndex(out, "\n")
	return strings.TrimSpace(out[i+1:]), out[:i]
}

// TestPrivilegedFirstHourStaleConfig: after rotate-key in peers-file mode
// (the file still has the old key) the agent keeps running with the new key
// but is not ready, says why (PublishFailed) in status, /readyz and
// wgmesh_stale; writing the new key into the file clears it. An invalid
// peers file likewise (SourceInvalid) while the last good configuration
// stays in force.
func TestPrivilegedFirstHourStaleConfig(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Options: lab.Options{Nodes: 2, Prefix: "wgmfc"}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]

	if _, err := n1.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitCondition(ctx, 30*time.Second, t, n1, "PublishFailed after rotate-key", func(r []string, ready bool) bool {
		return hasReason(r, "PublishFailed") && !ready
	}); err != nil {
		t.Fatal(err)
	}
	if code, body := nodeHTTP(t, ctx, n1, "/readyz"); code != "503" || !strings.Contains(body, "stale: PublishFailed") {
		t.Errorf("%s /readyz after rotate-key = %s %q, want 503 with a stale: PublishFailed line", n1.Name, code, body)
	}
	if _, body := nodeHTTP(t, ctx, n1, "/metrics"); !strings.Contains(body, `wgmesh_stale{reason="PublishFailed"} 1`) ||
		!strings.Contains(body, "wgmesh_source_last_success_timestamp_seconds ") {
		t.Errorf("%s /metrics lacks wgmesh_stale{reason=\"PublishFailed\"} 1 or the last-success timestamp", n1.Name)
	}
	out, _ := n1.Wgmesh(ctx, "status", "--interface", n1.Interface)
	if !strings.Contains(out, "STALE:") || !strings.Contains(out, "PublishFailed") {
		t.Errorf("wgmesh status on %s does not show the stale condition:\n%s", n1.Name, out)
	}

	// The operator's config management distributes the new key: clear.
	if err := m.WritePeersFiles(m.Entries()); err != nil {
		t.Fatal(err)
	}
	if err := waitCondition(ctx, 40*time.Second, t, n1, "ready again after the file got the new key", func(r []string, ready bool) bool {
		return len(r) == 0 && ready
	}); err != nil {
		t.Error(err)
	}

	// An invalid file: the last good configuration stays, the agent says so.
	if err := os.WriteFile(n1.PeersFile, []byte("nodes:\n  - name: [unterminated\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := waitCondition(ctx, 30*time.Second, t, n1, "SourceInvalid after an invalid peers file", func(r []string, ready bool) bool {
		return hasReason(r, "SourceInvalid") && !ready
	}); err != nil {
		t.Error(err)
	}
	if err := n1.WaitPeers(withTimeout(ctx, 10*time.Second), n2); err != nil {
		t.Errorf("the last good configuration did not stay in force on %s: %v", n1.Name, err)
	}
	if err := n1.WritePeersFile(m.Entries()); err != nil {
		t.Fatal(err)
	}
	if err := waitCondition(ctx, 30*time.Second, t, n1, "ready again after the file was fixed", func(r []string, ready bool) bool {
		return len(r) == 0 && ready
	}); err != nil {
		t.Error(err)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedFirstHourMissingPeersFile: an agent whose --peers-file does
// not exist stops at once with an error naming the path, and creates
// nothing (no interface, no key file).
func TestPrivilegedFirstHourMissingPeersFile(t *testing.T) {
	labRequireRoot(t)
	l := newTestLab(t, lab.Options{Nodes: 1, Prefix: "wgmfc", Wgmesh: labWgmeshBinary(t)})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := l.Nodes[0]
	if _, err := os.Stat(n.PeersFile); err == nil {
		t.Fatalf("the lab wrote %s; this test needs it absent", n.PeersFile)
	}
	a, err := l.StartAgent(n)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Exited():
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent with a missing --peers-file %s still runs after 20s (it waits forever):\n%s", n.PeersFile, a.LogTail(10))
	}
	if log := a.Log(); !strings.Contains(log, n.PeersFile) || !strings.Contains(log, "no such file") {
		t.Errorf("the agent's error does not name the missing file %s:\n%s", n.PeersFile, a.LogTail(10))
	}
	if out, err := n.Exec(ctx, "ip", "link", "show", n.Interface); err == nil {
		t.Errorf("the failed start left interface %s behind:\n%s", n.Interface, out)
	}
	if _, err := os.Stat(n.KeyFile); err == nil {
		t.Errorf("the failed start created the key file %s", n.KeyFile)
	}
}

// TestPrivilegedFirstHourBusyMetricsPort: a second instance whose
// --metrics-addr is taken (by the first agent) is refused before it changes
// anything: no interface, no rule, no table, and the first one keeps
// running.
func TestPrivilegedFirstHourBusyMetricsPort(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Options: lab.Options{Nodes: 2, Prefix: "wgmfc"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1 := m.Nodes[0]
	second := n1.Interface + "b"
	actx := withTimeout(ctx, 20*time.Second)
	out, err := n1.Wgmesh(actx, "agent", "--node-name", n1.Name, "--peers-file", n1.PeersFile,
		"--interface", second, "--key-file", n1.KeyFile+".b", "--listen-port", fmt.Sprint(n1.ListenPort+10),
		"--route-table", "51830", "--host-route-table", "51831", "--rule-priority", "97")
	if err == nil || actx.Err() != nil {
		t.Fatalf("a second agent on the busy metrics address started (or still ran after 20s):\n%s", out)
	}
	if !strings.Contains(out, "metrics address") {
		t.Errorf("the refusal does not name the metrics address:\n%s", out)
	}
	if o, err := n1.Exec(ctx, "ip", "link", "show", second); err == nil {
		t.Errorf("the refused start left interface %s:\n%s", second, o)
	}
	if o := mustSh(t, ctx, n1.NS, "ip rule; ip -6 rule"); strings.Contains(o, "51830") {
		t.Errorf("the refused start left a rule for table 51830:\n%s", o)
	}
	if _, err := os.Stat(n1.KeyFile + ".b"); err == nil {
		t.Errorf("the refused start created its key file")
	}
	if !m.agents[n1.Name].Running() {
		t.Errorf("the first agent on %s stopped", n1.Name)
	}
}

// TestPrivilegedFirstHourTunnelAddress: the default IPv6 tunnel address is
// the pod CIDR's first address + 1 (also the pods' gateway on cni0 in the
// lab), not the subnet-router anycast address; the host reaches remote pods
// from it, and an old-default address left on the interface (a node
// upgraded from the previous version) is removed once the new one is there.
func TestPrivilegedFirstHourTunnelAddress(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Options: lab.Options{Nodes: 2, Prefix: "wgmfc"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]
	anycast := n1.PodCIDR6.Addr()
	want := anycast.Next()

	addrs := mustSh(t, ctx, n1.NS, "ip -6 addr show dev "+n1.Interface+" scope global")
	if !strings.Contains(addrs, " "+want.String()+"/128 ") || strings.Contains(addrs, " "+anycast.String()+"/128 ") {
		t.Fatalf("%s's IPv6 tunnel address: want %s/128 and not the subnet-router anycast %s/128:\n%s", n1.Name, want, anycast, addrs)
	}
	if v4 := mustSh(t, ctx, n1.NS, "ip -4 addr show dev "+n1.Interface); !strings.Contains(v4, " "+n1.PodCIDR4.Addr().String()+"/32 ") {
		t.Errorf("%s's IPv4 tunnel address: want %s/32 (unchanged):\n%s", n1.Name, n1.PodCIDR4.Addr(), v4)
	}
	dst := n2.Pods[0].Addr6
	if rt := mustSh(t, ctx, n1.NS, "ip -6 route get "+dst.String()); !strings.Contains(rt, "src "+want.String()+" ") {
		t.Errorf("route from %s to %s does not take src %s:\n%s", n1.Name, dst, want, rt)
	}
	if out, err := sh(ctx, n1.NS, "ping -6 -c 3 -i 0.3 -W 2 "+dst.String()); err != nil {
		t.Errorf("host %s -> pod %s from the tunnel address: %v\n%s", n1.Name, dst, err, out)
	}

	// The old default, as a node upgraded from the previous version has it.
	mustSh(t, ctx, n1.NS, "ip -6 addr add "+anycast.String()+"/128 dev "+n1.Interface+" nodad")
	if err := m.agents[n1.Name].Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	err := lab.Poll(withTimeout(ctx, 30*time.Second), 300*time.Millisecond, func(ctx context.Context) (bool, error) {
		out, err := sh(ctx, n1.NS, "ip -6 addr show dev "+n1.Interface+" scope global")
		return err == nil && !strings.Contains(out, " "+anycast.String()+"/128 ") && strings.Contains(out, " "+want.String()+"/128 "), err
	})
	if err != nil {
		t.Errorf("the old tunnel address %s stayed on %s: %v\n%s", anycast, n1.Name, err, m.agents[n1.Name].LogTail(10))
	}
	if out, err := sh(ctx, n1.NS, "ping -6 -c 3 -i 0.3 -W 2 "+dst.String()); err != nil {
		t.Errorf("after the change, host %s -> pod %s: %v\n%s", n1.Name, dst, err, out)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// TestPrivilegedFirstHourCLI: the CLI behaves like kubectl and tells the
// truth: bare wgmesh is a usage error, --version exists, status -o json
// always prints a document, status names the interface the agent serves,
// status describes a userspace interface whose agent stopped, and cleanup
// validates its flags as the agent does and says what it removed and what
// it did not find.
func TestPrivilegedFirstHourCLI(t *testing.T) {
	labRequireRoot(t)
	m := startLabMesh(t, labMeshOptions{Options: lab.Options{Nodes: 2, Prefix: "wgmfc"}, AgentArgs: []string{"--backend", "userspace"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]

	if out, err := n1.Wgmesh(ctx); err == nil || !strings.Contains(out, "Available Commands") {
		t.Errorf("bare wgmesh: %v, want the help and a non-zero exit:\n%s", err, out)
	}
	if out, err := n1.Wgmesh(ctx, "--version"); err != nil || !strings.HasPrefix(out, "wgmesh ") {
		t.Errorf("wgmesh --version: %v\n%s", err, out)
	}
	out, err := n2.Wgmesh(ctx, "status", "--interface", "wgnone0")
	if err == nil || !strings.Contains(out, "--interface "+n2.Interface) {
		t.Errorf("status for an interface the agent does not serve: %v, want a hint to pass --interface %s:\n%s", err, n2.Interface, out)
	}
	out, err = n2.Wgmesh(ctx, "status", "-o", "json", "--interface", "wgnone0")
	if err == nil || !strings.Contains(out, `"kind": "Error"`) {
		t.Errorf("status -o json on failure: %v, want a kind Error document:\n%s", err, out)
	}

	if err := m.agents[n1.Name].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	out, err = n1.Wgmesh(ctx, "status", "--interface", n1.Interface)
	if err != nil || !strings.Contains(out, "AgentNotRunning") {
		t.Errorf("status of a userspace interface without its agent: %v, want it described:\n%s", err, out)
	}
	out, err = n1.Wgmesh(ctx, "cleanup", "--interface", n1.Interface, "--fwmark", "0x3000")
	if err == nil || !strings.Contains(out, "single nonzero bit") {
		t.Errorf("cleanup --fwmark 0x3000 (two bits, refused by the agent): %v, want the agent's refusal:\n%s", err, out)
	}
	if o, _ := n1.Exec(ctx, "ip", "link", "show", n1.Interface); !strings.Contains(o, n1.Interface) {
		t.Fatalf("a refused cleanup removed the interface")
	}
	out, err = n1.Wgmesh(ctx, "cleanup", "--interface", n1.Interface)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	for _, want := range []string{"removed: interface " + n1.Interface, "removed: 4 policy rules", "removed: nftables table", "wgmesh routes"} {
		if !strings.Contains(out, want) {
			t.Errorf("cleanup output lacks %q:\n%s", want, out)
		}
	}
	out, err = n1.Wgmesh(ctx, "cleanup", "--interface", n1.Interface)
	if err != nil || !strings.Contains(out, "not found: interface "+n1.Interface) || strings.Contains(out, "removed:") {
		t.Errorf("second cleanup: %v, want every item not found:\n%s", err, out)
	}
}
