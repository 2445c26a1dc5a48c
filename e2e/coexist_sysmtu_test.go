package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/lab"
	"golang.org/x/sys/unix"
)

// The coexistence scenarios of the host-wide sysctls (issue #11, scenario 2)
// and of the MTU (scenario 4, and scenario 5's pod interface MTU warning).

// TPROXY service of the scenario: Cilium's and Istio's way of handing
// traffic to a local proxy. The mark 0x200/0xf00 and table 2004 are
// Cilium's ("to proxy" and its proxy routing table).
const (
	tproxyVIP   = "10.96.0.10"
	tproxyPort  = 8080
	tproxyLocal = 15001
	tproxyTable = 2004
	tproxyMark  = "0x200/0xf00"
	tproxyNFT   = "wgmcxtproxy" // the neighbour's own nft table
	tproxyReply = "tproxy says hello"
)

// TestPrivilegedCoexistTPROXY: a TPROXY service on node1 (a fwmark rule into
// a table with `local 0.0.0.0/0 dev lo`, an nft tproxy rule, a transparent
// listener) answers a client on node2. It must keep answering while the
// agent runs and after `wgmesh cleanup`, and the agent must leave every
// src_valid_mark on node1 — `all`, `default` and every interface that is not
// its own — as it found it. Pod traffic is encrypted meanwhile.
//
// With net.ipv4.conf.all.src_valid_mark=1 the kernel validates the source
// of each marked SYN with the mark: the reverse lookup then hits table
// 2004, finds a local route instead of a unicast one and drops the packet
// as a martian, so every connection to the service times out.
func TestPrivilegedCoexistTPROXY(t *testing.T) {
	labRequireRoot(t)
	var svc *tproxyService
	var before map[string]string
	m := startCoexist(t, labMeshOptions{
		Neighbour: func(ctx context.Context, l *lab.Lab) error {
			var err error
			if svc, err = startTPROXY(ctx, l.Nodes[0], l.Nodes[1]); err != nil {
				return err
			}
			t.Cleanup(svc.Close)
			// The service works before wgmesh arrives, or the scenario
			// would prove nothing.
			if ok, fails := svc.probe(ctx, 5); ok != 5 {
				return fmt.Errorf("TPROXY service before the agent: %d/5 answered: %v", ok, fails)
			}
			before, err = srcValidMarks(ctx, l.Nodes[0].NS)
			return err
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1, n2 := m.Nodes[0], m.Nodes[1]

	for _, fam := range families {
		if err := waitPing(withTimeout(ctx, 30*time.Second), n1.Pods[0], n2.Pods[0].Addr(fam)); err != nil {
			t.Errorf("IPv%d pod1 -> pod2 with the TPROXY service next to the agent: %v", fam, err)
		}
	}
	ok, fails := svc.probe(ctx, 10)
	t.Logf("measured: TPROXY service with the agent running: %d/10 connections answered", ok)
	if ok != 10 {
		t.Errorf("TPROXY service with the agent running: %d/10 connections answered, e.g. %v", ok, fails)
	}
	compareSrcValidMarks(t, ctx, n1, "with the agent running", before)
	requireNoPlaintext(t, m.stopCapture(t))

	// Uninstall: stop the agent, then `wgmesh cleanup` with its options.
	if err := m.agents[n1.Name].Stop(withTimeout(ctx, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if out, err := n1.Wgmesh(ctx, "cleanup", "--interface", n1.Interface); err != nil {
		t.Fatalf("wgmesh cleanup on %s: %v\n%s", n1.Name, err, out)
	}
	ok, fails = svc.probe(ctx, 10)
	t.Logf("measured: TPROXY service after wgmesh cleanup: %d/10 connections answered", ok)
	if ok != 10 {
		t.Errorf("TPROXY service after wgmesh cleanup: %d/10 connections answered, e.g. %v", ok, fails)
	}
	compareSrcValidMarks(t, ctx, n1, "after wgmesh cleanup", before)
}

// tproxyService is the neighbour of the TPROXY scenario: a transparent
// listener on node `on` behind an nft tproxy rule, and a client on node
// `client` that reaches the service address through `on`.
type tproxyService struct {
	ln     net.Listener
	client *lab.Node
	wg     sync.WaitGroup
}

// startTPROXY installs the service the way a service mesh's node proxy
// does: policy rule, local route table, nft tproxy rule, transparent
// listener, and on the client a route to the service address via `on`.
func startTPROXY(ctx context.Context, on, client *lab.Node) (*tproxyService, error) {
	script := fmt.Sprintf(`
ip rule add pref 9 fwmark %[1]s lookup %[2]d
ip route add local 0.0.0.0/0 dev lo table %[2]d
nft -f - <<EOF
table ip %[3]s {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		ip daddr %[4]s tcp dport %[5]d meta mark set 0x200 tproxy to :%[6]d accept
	}
}
EOF
`, tproxyMark, tproxyTable, tproxyNFT, tproxyVIP, tproxyPort, tproxyLocal)
	if out, err := sh(ctx, on.NS, script); err != nil {
		return nil, fmt.Errorf("install TPROXY on %s: %w\n%s", on.Name, err, out)
	}
	if out, err := sh(ctx, client.NS, fmt.Sprintf("ip route add %s/32 via %s dev eth0", tproxyVIP, on.Underlay)); err != nil {
		return nil, fmt.Errorf("route to the service on %s: %w\n%s", client.Name, err, out)
	}
	var ln net.Listener
	err := lab.InNetNS(on.NS, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", tproxyLocal))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transparent listener on %s: %w", on.Name, err)
	}
	s := &tproxyService{ln: ln, client: client}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// serve answers every connection with tproxyReply and the address the
// client dialled (the transparent socket's local address).
func (s *tproxyService) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s from %s\n", tproxyReply, c.LocalAddr())
		c.Close()
	}
}

func (s *tproxyService) Close() {
	s.ln.Close()
	s.wg.Wait()
}

// probe makes n connections from the client to the service address, each
// allowed 2 s, and returns how many got the service's answer and why the
// others failed.
func (s *tproxyService) probe(ctx context.Context, n int) (ok int, fails []string) {
	dst := fmt.Sprintf("%s:%d", tproxyVIP, tproxyPort)
	for range n {
		var c net.Conn
		err := lab.InNetNS(s.client.NS, func() error {
			var err error
			d := net.Dialer{Timeout: 2 * time.Second}
			c, err = d.DialContext(ctx, "tcp4", dst)
			return err
		})
		if err != nil {
			fails = append(fails, err.Error())
			continue
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		want := fmt.Sprintf("%s from %s", tproxyReply, dst)
		if err != nil || !strings.Contains(string(b), want) {
			fails = append(fails, fmt.Sprintf("answer %q (want %q): %v", b, want, err))
			continue
		}
		ok++
	}
	return ok, fails
}

// srcValidMarks reads net.ipv4.conf.*.src_valid_mark in namespace ns, by
// interface ("all", "default", then the links).
func srcValidMarks(ctx context.Context, ns string) (map[string]string, error) {
	out, err := sh(ctx, ns, `for f in /proc/sys/net/ipv4/conf/*/src_valid_mark; do echo "$f $(cat "$f")"; done`)
	if err != nil {
		return nil, err
	}
	marks := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		marks[filepath.Base(filepath.Dir(f[0]))] = f[1]
	}
	if _, ok := marks["all"]; !ok {
		return nil, fmt.Errorf("in %s: no net.ipv4.conf.all.src_valid_mark in %q", ns, out)
	}
	return marks, nil
}

// compareSrcValidMarks fails the test when a src_valid_mark of node n that
// existed in before has another value now. The agent's own interface did
// not exist before and is not compared.
func compareSrcValidMarks(t *testing.T, ctx context.Context, n *lab.Node, when string, before map[string]string) {
	t.Helper()
	now, err := srcValidMarks(ctx, n.NS)
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for dev, v := range before {
		if now[dev] != v {
			changed = append(changed, fmt.Sprintf("%s %s -> %s", dev, v, now[dev]))
		}
	}
	sort.Strings(changed)
	t.Logf("measured: src_valid_mark on %s %s: all=%s, %d of %d values changed %v", n.Name, when, now["all"], len(changed), len(before), changed)
	if len(changed) > 0 {
		t.Errorf("%s: net.ipv4.conf.*.src_valid_mark changed on %s: %s", when, n.Name, strings.Join(changed, ", "))
	}
}

// underlayMTU is the underlay MTU of the MTU scenario: small enough that the
// automatic tunnel MTU (1300 − 60 = 1240 over IPv4, 1300 − 80 = 1220 over
// IPv6) falls below IPv6's minimum of 1280.
const underlayMTU = 1300

// TestPrivilegedCoexistMTU: on a 1300-byte underlay with dual-stack pods and
// the automatic MTU, pod traffic of both families works — pings, full-sized
// pings with DF, 8 MiB TCP transfers — over an IPv4 and over an IPv6
// underlay, and `wgmesh status`, /readyz and the log name the clamp to
// 1280. Over the IPv4 underlay the pods keep the lab's MTU 1420, above Pod
// MTU: status names cni0 and the pod's veth; over the IPv6 underlay the
// pods use 1280 and nothing is named.
func TestPrivilegedCoexistMTU(t *testing.T) {
	labRequireRoot(t)
	for _, tc := range []struct {
		name     string
		ipv6     bool
		overhead int
		podMTU   int
	}{
		{name: "ipv4-underlay", overhead: 60, podMTU: 1420},
		{name: "ipv6-underlay", ipv6: true, overhead: 80, podMTU: 1280},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startCoexist(t, labMeshOptions{
				Options:   lab.Options{IPv6Underlay: tc.ipv6, PodMTU: tc.podMTU},
				Neighbour: setUnderlayMTU(underlayMTU),
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			n1, n2 := m.Nodes[0], m.Nodes[1]
			auto := underlayMTU - tc.overhead

			for _, fam := range families {
				for _, p := range [][2]*lab.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[0], n1.Pods[0]}} {
					err := waitPing(withTimeout(ctx, 30*time.Second), p[0], p[1].Addr(fam))
					if err != nil {
						t.Errorf("IPv%d %s -> %s on a %d-byte underlay: %v", fam, p[0].Name, p[1].Name, underlayMTU, err)
						continue
					}
					// Full-sized packets: the tunnel MTU minus the
					// headers, so the outer packets exceed the underlay
					// MTU and must be fragmented.
					size := 1280 - 48
					if fam == 4 {
						size = 1280 - 28
					}
					r, err := p[0].Exec(ctx, "ping", fmt.Sprintf("-%d", fam), "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", fmt.Sprint(size), p[1].Addr(fam).String())
					if err != nil {
						t.Errorf("IPv%d %s -> %s, %d-byte payload (a full 1280-byte packet): %v\n%s", fam, p[0].Name, p[1].Name, size, err, r)
					}
				}
			}
			// Bulk traffic: the userspace backend batches datagrams with
			// UDP GSO, which the kernel refuses for datagrams above the
			// underlay MTU; they must leave in fragments all the same.
			for _, fam := range []int{6, 4} {
				res, err := lab.Transfer(withTimeout(ctx, 90*time.Second), n1.Pods[0], n2.Pods[0], n2.Pods[0].Addr(fam), 8<<20)
				if err != nil {
					t.Errorf("IPv%d transfer pod1 -> pod2: %v", fam, err)
					continue
				}
				t.Logf("measured: %s: IPv%d transfer pod1 -> pod2: %s", tc.name, fam, res)
				if !res.OK() {
					t.Errorf("IPv%d transfer pod1 -> pod2 corrupted: %s", fam, res)
				}
			}

			clamp := fmt.Sprintf("tunnel MTU %d (underlay eth0 MTU %d − %d) < 1280 needed for IPv6: using 1280", auto, underlayMTU, tc.overhead)
			for _, n := range m.Nodes {
				st := nodeStatusJSON(t, ctx, n)
				warns := sysmtuWarnings(st)
				t.Logf("measured: %s: %s linkMTU %v podMTU %v ready %v warnings %q", tc.name, n.Name, st["linkMTU"], st["podMTU"], st["ready"], warns)
				if st["linkMTU"] != float64(1280) || st["podMTU"] != float64(1280) {
					t.Errorf("%s: linkMTU %v podMTU %v, want 1280 (clamped for IPv6)", n.Name, st["linkMTU"], st["podMTU"])
				}
				if !sysmtuHas(warns, clamp) {
					t.Errorf("%s: status routing warnings %q lack %q", n.Name, warns, clamp)
				}
				podWarn := sysmtuIndex(warns, "Pod MTU")
				switch {
				case tc.podMTU > 1280 && podWarn < 0:
					t.Errorf("%s: pods have MTU %d > Pod MTU 1280, but no status warning names it: %q", n.Name, tc.podMTU, warns)
				case tc.podMTU > 1280:
					for _, s := range []string{"cni0", "veth1", fmt.Sprint(tc.podMTU), "Pod MTU 1280"} {
						if !strings.Contains(warns[podWarn], s) {
							t.Errorf("%s: pod MTU warning %q lacks %q", n.Name, warns[podWarn], s)
						}
					}
				case podWarn >= 0:
					t.Errorf("%s: pods have MTU %d <= Pod MTU 1280, yet: %q", n.Name, tc.podMTU, warns[podWarn])
				}
				out, err := n.Exec(ctx, "curl", "-s", "--max-time", "5", "http://127.0.0.1:9587/readyz")
				if err != nil || !strings.HasPrefix(out, "ok") || !strings.Contains(out, clamp) {
					t.Errorf("%s: /readyz answered %q (%v), want ok naming %q", n.Name, out, err, clamp)
				}
				if log := m.agents[n.Name].Log(); !strings.Contains(log, "< 1280 needed for IPv6") {
					t.Errorf("%s: the agent log does not name the MTU clamp:\n%s", n.Name, m.agents[n.Name].LogTail(20))
				}
			}
			requireNoPlaintext(t, m.stopCapture(t))
		})
	}
}

// setUnderlayMTU returns a Neighbour hook that sets every node's eth0 and
// the switch's ports to mtu, as a cloud network with a small MTU would.
func setUnderlayMTU(mtu int) func(ctx context.Context, l *lab.Lab) error {
	return func(ctx context.Context, l *lab.Lab) error {
		var errs []error
		for _, n := range l.Nodes {
			if _, err := sh(ctx, l.Switch, fmt.Sprintf("ip link set %s mtu %d", n.Name, mtu)); err != nil {
				errs = append(errs, err)
			}
			if _, err := sh(ctx, n.NS, fmt.Sprintf("ip link set eth0 mtu %d", mtu)); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
}

// sysmtuWarnings extracts routingWarnings from a status document.
func sysmtuWarnings(st map[string]any) []string {
	raw, _ := st["routingWarnings"].([]any)
	var out []string
	for _, w := range raw {
		if s, ok := w.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func sysmtuHas(warns []string, s string) bool { return sysmtuIndex(warns, s) >= 0 }

// sysmtuIndex is the index of the first warning containing s, -1 if none.
func sysmtuIndex(warns []string, s string) int {
	for i, w := range warns {
		if strings.Contains(w, s) {
			return i
		}
	}
	return -1
}
