package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Scenario 6 of issue #11: two wgmesh instances on one host. Instance A is
// the lab's mesh (defaults: table 51820, priority 99, mark 0x20000, port
// 51820, metrics :9587). Instance B is a second, bare-host mesh on the same
// node namespaces with every parameter of its own; its "pods" are the
// nodes' own tunnel addresses in 10.244.(200+k).0/24 and
// fd00:10:244:(200+k)::/64, which the nodes' main tables also route in
// plaintext (as the lab does for A's pods), so a missing rule or route of
// B's shows up on the wire.

const (
	instBTable   = 51830 // host-route table 51831; A has 51820 and 51821
	instBPref    = 98
	instBMark    = "0x40000"
	instBPort    = 51821
	instBMetrics = "127.0.0.1:9588"
)

// instBCIDRs are node k's CIDRs in instance B.
func instBCIDRs(k int) (netip.Prefix, netip.Prefix) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(200 + k), 0}), 24),
		netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", 200+k))
}

// instBArgs are the agent flags of instance B on node k (besides the lab's
// own --interface, --key-file, --listen-port and --peers-file).
func instBArgs(k int) []string {
	c4, c6 := instBCIDRs(k)
	return []string{
		"--route-table", fmt.Sprint(instBTable), "--rule-priority", fmt.Sprint(instBPref),
		"--fwmark", instBMark, "--metrics-addr", instBMetrics,
		"--tunnel-address", c4.Addr().Next().String() + "," + c6.Addr().Next().String(),
	}
}

// instBPlainRoutes is the Neighbour hook: every node's main table routes
// the other nodes' B CIDRs over the underlay in plaintext.
func instBPlainRoutes(ctx context.Context, l *lab.Lab) error {
	for _, n := range l.Nodes {
		for _, m := range l.Nodes {
			if m == n {
				continue
			}
			c4, c6 := instBCIDRs(m.Index)
			if _, err := sh(ctx, n.NS, fmt.Sprintf("ip route add %s via %s dev eth0; ip -6 route add %s via %s dev eth0",
				c4, m.Underlay, c6, m.LinkLocal)); err != nil {
				return err
			}
		}
	}
	return nil
}

// instanceB is the second mesh: one lab.Node copy per node with B's
// interface, port, key, peers file and CIDRs, and one agent each.
type instanceB struct {
	nodes  []*lab.Node
	agents []*lab.Agent
}

func startInstanceB(t *testing.T, ctx context.Context, m *labMesh) *instanceB {
	t.Helper()
	ib := &instanceB{}
	for _, n := range m.Nodes {
		b := *n
		b.Interface = fmt.Sprintf("wb%sn%d", m.ID(), n.Index)
		b.ListenPort = instBPort
		b.Dir = filepath.Join(n.Dir, "instb")
		if err := os.MkdirAll(b.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		b.KeyFile = filepath.Join(b.Dir, "private.key")
		b.PeersFile = filepath.Join(b.Dir, "peers.yaml")
		b.PodCIDR4, b.PodCIDR6 = instBCIDRs(n.Index)
		b.Gateway4, b.Gateway6 = b.PodCIDR4.Addr().Next(), b.PodCIDR6.Addr().Next()
		bp := &b
		bp.Pods = []*lab.Pod{{Node: bp, Name: n.Name + "-instb", NS: n.NS, Addr4: b.Gateway4, Addr6: b.Gateway6}}
		if _, err := bp.Keygen(ctx); err != nil {
			t.Fatal(err)
		}
		ib.nodes = append(ib.nodes, bp)
	}
	var entries []lab.PeerEntry
	for _, b := range ib.nodes {
		entries = append(entries, b.Entry())
	}
	for _, b := range ib.nodes {
		if err := b.WritePeersFile(entries); err != nil {
			t.Fatal(err)
		}
		a, err := m.StartAgent(b, instBArgs(b.Index)...)
		if err != nil {
			t.Fatal(err)
		}
		ib.agents = append(ib.agents, a)
	}
	for i, b := range ib.nodes {
		if err := b.WaitPeers(ctx, ib.nodes[1-i]); err != nil {
			t.Fatalf("instance B on %s did not configure its peer: %v\n%s", b.Name, err, ib.agents[i].LogTail(30))
		}
	}
	return ib
}

// hostState is what a refused start must leave exactly as it was: rules,
// routes of every table, links and nftables tables of a node.
func hostState(t *testing.T, ctx context.Context, ns string) string {
	t.Helper()
	return mustSh(t, ctx, ns, "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all; "+
		"ip -o link show | cut -d' ' -f2; nft list tables")
}

// monitor records `ip monitor route rule` and `nft monitor` in a namespace
// until stopped: every change to a rule, a route or an nftables object.
type monitor struct {
	cancel context.CancelFunc
	cmds   []*exec.Cmd
	outs   []*bytes.Buffer
}

func startMonitor(t *testing.T, ns string) *monitor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mo := &monitor{cancel: cancel}
	for _, args := range [][]string{{"ip", "-o", "monitor", "route", "rule"}, {"nft", "monitor"}} {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start %v: %v", args, err)
		}
		mo.cmds = append(mo.cmds, cmd)
		mo.outs = append(mo.outs, &out)
	}
	t.Cleanup(func() { mo.stop() })
	// Give the monitors a moment to subscribe before the scenario acts.
	time.Sleep(300 * time.Millisecond)
	return mo
}

// stop ends the monitors and returns the event lines they printed.
func (mo *monitor) stop() []string {
	mo.cancel()
	var lines []string
	for i, c := range mo.cmds {
		_ = c.Wait()
		for _, l := range strings.Split(mo.outs[i].String(), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		mo.outs[i].Reset()
	}
	mo.cmds = nil
	return lines
}

type pingJob struct {
	name string
	from *lab.Pod
	dst  netip.Addr
}

// pingAll runs the jobs concurrently, count pings each at interval, while
// during runs; it returns the lost pings per job.
func pingAll(t *testing.T, ctx context.Context, jobs []pingJob, count int, interval time.Duration, during func()) map[string]int {
	t.Helper()
	lost := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := j.from.Ping(ctx, j.dst, count, interval)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("ping %s: %v", j.name, err)
				lost[j.name] = count
				return
			}
			lost[j.name] = r.Sent - r.Received
		}()
	}
	if during != nil {
		during()
	}
	wg.Wait()
	return lost
}

// TestPrivilegedCoexistTwoInstances runs two meshes on the same two nodes,
// pings through both at 20 Hz while every agent resyncs several times
// (SIGHUP), and then runs `wgmesh cleanup` for one of them: no plaintext,
// no lost ping, no rule, route or nftables change during the resyncs, and
// the other instance keeps its rules, routes, filter, interface and traffic.
func TestPrivilegedCoexistTwoInstances(t *testing.T) {
	labRequireRoot(t)
	m := startCoexist(t, labMeshOptions{Neighbour: instBPlainRoutes})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ib := startInstanceB(t, ctx, m)
	n1, n2 := m.Nodes[0], m.Nodes[1]
	b1, b2 := ib.nodes[0], ib.nodes[1]
	jobs := []pingJob{
		{"A node1->node2 v4", n1.Pods[0], n2.Pods[0].Addr4},
		{"A node2->node1 v6", n2.Pods[0], n1.Pods[0].Addr6},
		{"B node1->node2 v4", b1.Pods[0], b2.Pods[0].Addr4},
		{"B node2->node1 v6", b2.Pods[0], b1.Pods[0].Addr6},
	}
	for _, j := range jobs {
		if err := waitPing(ctx, j.from, j.dst); err != nil {
			t.Fatalf("%s before the resyncs: %v", j.name, err)
		}
	}
	settled := m.plaintextSoFar(t)
	t.Logf("measured: both instances up: capture %s", settled)

	// Every agent resyncs six times while the pings run.
	agents := []*lab.Agent{m.agents[n1.Name], ib.agents[0], m.agents[n2.Name], ib.agents[1]}
	mon := startMonitor(t, n1.NS)
	lost := pingAll(t, ctx, jobs, 200, 50*time.Millisecond, func() {
		for range 6 {
			for _, a := range agents {
				if err := a.Signal(syscall.SIGHUP); err != nil {
					t.Errorf("SIGHUP %s: %v", a.Node.Interface, err)
				}
				time.Sleep(350 * time.Millisecond)
			}
		}
	})
	events := mon.stop()
	during := m.plaintextSoFar(t)
	t.Logf("measured: 24 resyncs: lost pings %v; %d rule/route/nft events on node1; capture %s", lost, len(events), during)
	for name, n := range lost {
		if n != 0 {
			t.Errorf("%s: %d of 200 pings lost during the resyncs", name, n)
		}
	}
	if len(events) > 0 {
		t.Errorf("%d rule, route or nftables changes on node1 while nothing changed (churn), e.g.\n%s",
			len(events), strings.Join(events[:min(len(events), 12)], "\n"))
	}
	if during.Plaintext > settled.Plaintext {
		t.Errorf("%d plaintext pod packets during the resyncs", during.Plaintext-settled.Plaintext)
	}

	// `wgmesh cleanup` of instance B on node1 leaves instance A intact.
	if err := ib.agents[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Without the routing flags: the interface records them.
	out, err := n1.Wgmesh(ctx, "cleanup", "--interface", b1.Interface)
	if err != nil {
		t.Fatalf("wgmesh cleanup of instance B on node1: %v\n%s", err, out)
	}
	state := mustSh(t, ctx, n1.NS, "ip -4 rule; ip -6 rule; ip -4 route show table 51820; ip -6 route show table 51820; nft list ruleset; ip -o link show")
	for _, want := range []string{"lookup 51820", "dev " + n1.Interface, fmt.Sprintf("iifname != %q", n1.Interface)} {
		if !strings.Contains(state, want) {
			t.Errorf("after cleanup of instance B, node1 lacks instance A's %q:\n%s", want, state)
		}
	}
	for _, gone := range []string{fmt.Sprint("lookup ", instBTable), b1.Interface} {
		if strings.Contains(state, gone) {
			t.Errorf("after cleanup of instance B, node1 still has %q:\n%s", gone, state)
		}
	}
	lost = pingAll(t, ctx, jobs[:2], 40, 50*time.Millisecond, nil)
	t.Logf("measured: after cleanup of instance B on node1: instance A lost pings %v", lost)
	for name, n := range lost {
		if n != 0 {
			t.Errorf("%s: %d of 40 pings lost after cleanup of the other instance", name, n)
		}
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// refusedAgent starts a second agent on node n with args and expects it to
// exit with an error at once; it returns the output.
func refusedAgent(t *testing.T, ctx context.Context, n *lab.Node, keyFile string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	all := append([]string{"agent", "--node-name", n.Name, "--peers-file", n.PeersFile, "--key-file", keyFile}, args...)
	out, err := n.Wgmesh(ctx, all...)
	switch {
	case ctx.Err() != nil:
		t.Errorf("wgmesh %s: not refused: still running after 15s\n%s", strings.Join(args, " "), lastN(out, 15))
	case err == nil:
		t.Errorf("wgmesh %s: exited 0, want a refusal\n%s", strings.Join(args, " "), lastN(out, 15))
	}
	return out
}

func lastN(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestPrivilegedCoexistInstanceClash starts a second agent on a node next
// to a running one with the same route table, the same listen port, the
// same interface, and a listen port a foreign userspace WireGuard
// (wireguard-go) uses; each must be refused before anything changes, with a
// message naming the other owner. `wgmesh cleanup` of the running
// instance is refused too.
func TestPrivilegedCoexistInstanceClash(t *testing.T) {
	labRequireRoot(t)
	if _, err := exec.LookPath("wireguard-go"); err != nil {
		t.Skip("wireguard-go not installed")
	}
	m := startCoexist(t, labMeshOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	n1 := m.Nodes[0]
	aPid := m.agents[n1.Name].Pid()

	// A foreign userspace WireGuard device on port 51840, as Kilo,
	// KubeSpan or a wg-quick with wireguard-go would have.
	foreign := "fg" + m.ID()
	fg := exec.Command("ip", "netns", "exec", n1.NS, "wireguard-go", "-f", foreign)
	fg.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1")
	fg.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := fg.Start(); err != nil {
		t.Fatalf("start wireguard-go: %v", err)
	}
	t.Cleanup(func() {
		_ = fg.Process.Kill()
		_ = fg.Wait()
		_ = os.Remove(filepath.Join("/var/run/wireguard", foreign+".sock"))
	})
	if err := lab.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := sh(ctx, n1.NS, "wg set "+foreign+" listen-port 51840")
		return err == nil, err
	}); err != nil {
		t.Fatalf("foreign wireguard-go %s: %v", foreign, err)
	}

	keyFile := filepath.Join(t.TempDir(), "second.key")
	before := hostState(t, ctx, n1.NS)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"same route table", []string{"--interface", "wc" + m.ID() + "a", "--listen-port", "51830", "--route-table", "51820",
			"--rule-priority", "97", "--fwmark", "0x80000", "--metrics-addr", "127.0.0.1:9590"},
			[]string{"route table 51820", n1.Interface}},
		{"same listen port", []string{"--interface", "wc" + m.ID() + "b", "--listen-port", "51820", "--route-table", "51830",
			"--rule-priority", "97", "--fwmark", "0x80000", "--metrics-addr", "127.0.0.1:9590"},
			[]string{"listen port 51820", n1.Interface}},
		{"same interface", []string{"--interface", n1.Interface, "--listen-port", "51831", "--route-table", "51831",
			"--rule-priority", "97", "--fwmark", "0x80000", "--metrics-addr", "127.0.0.1:9590"},
			[]string{n1.Interface, fmt.Sprintf("pid %d", aPid)}},
		{"foreign WireGuard on the port", []string{"--interface", "wc" + m.ID() + "d", "--listen-port", "51840", "--route-table", "51832",
			"--rule-priority", "97", "--fwmark", "0x80000", "--metrics-addr", "127.0.0.1:9590"},
			[]string{"listen port 51840", "WireGuard interface " + foreign, "not wgmesh"}},
	}
	for _, c := range cases {
		out := refusedAgent(t, ctx, n1, keyFile, c.args...)
		t.Logf("%s: %s", c.name, lastN(out, 1))
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: the refusal does not name %q:\n%s", c.name, w, lastN(out, 10))
			}
		}
		if after := hostState(t, ctx, n1.NS); after != before {
			t.Errorf("%s: the host changed although the start was refused:\nbefore:\n%s\nafter:\n%s", c.name, before, after)
			before = after
		}
		if _, err := os.Stat(keyFile); err == nil {
			t.Errorf("%s: the refused agent created its key file %s", c.name, keyFile)
			_ = os.Remove(keyFile)
		}
	}

	// cleanup of the running instance is refused, naming the agent.
	out, err := n1.Wgmesh(ctx, "cleanup", "--interface", n1.Interface)
	t.Logf("cleanup while the agent runs: %v: %s", err, lastN(out, 1))
	if err == nil {
		t.Errorf("wgmesh cleanup --interface %s succeeded while agent pid %d runs", n1.Interface, aPid)
	} else if !strings.Contains(out, fmt.Sprintf("pid %d", aPid)) {
		t.Errorf("cleanup refusal does not name the running agent (pid %d):\n%s", aPid, out)
	}
	// cleanup of a non-wgmesh interface, or of an absent one with the
	// running instance's (default) table, is refused naming the reason.
	for _, c := range []struct{ iface, want string }{
		{foreign, "not created by wgmesh"},
		{"wc" + m.ID() + "z", "route table 51820 is used by wgmesh instance " + n1.Interface},
	} {
		out, err := n1.Wgmesh(ctx, "cleanup", "--interface", c.iface)
		t.Logf("cleanup --interface %s: %v: %s", c.iface, err, lastN(out, 1))
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("wgmesh cleanup --interface %s = %v, want a refusal naming %q:\n%s", c.iface, err, c.want, out)
		}
	}
	if after := hostState(t, ctx, n1.NS); after != before {
		t.Errorf("refused cleanup changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Instance A still works.
	if err := waitPing(ctx, n1.Pods[0], m.Nodes[1].Pods[0].Addr4); err != nil {
		t.Errorf("instance A after the refused starts: %v", err)
	}
	requireNoPlaintext(t, m.stopCapture(t))
}

// instanceNFTTable is the nftables table (family inet) of the wgmesh
// instance on interface iface, as routing.NFTTableName names it; lab
// interface names are letters and digits, which need no escaping. (The e2e
// module does not import package routing.)
func instanceNFTTable(iface string) string { return "wgmesh_" + iface }
