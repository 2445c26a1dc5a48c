package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// k8sRouteTable is the agents' default --route-table.
const k8sRouteTable = 51820

// k8sLab is a namespace lab whose agents learn the mesh from a real
// kube-apiserver running in the lab's control-plane namespace, as the wgmesh
// DaemonSet's service account (impersonated, with the node-name extra a bound
// token carries) under the deploy base's RBAC and admission policy.
type k8sLab struct {
	*lab.Lab
	server *apiserver.Server
	admin  kubernetes.Interface
	// adminKubeconfig is a kubeconfig for the cluster admin; use it only
	// from inside a lab namespace (the API server's address is a lab one).
	adminKubeconfig string
	capture         *lab.Capture
	wgmesh          string

	mu          sync.Mutex
	agents      map[string]*lab.Agent
	kubeconfigs map[string]string
}

type k8sLabOptions struct {
	// Nodes is the number of lab nodes (3 when zero).
	Nodes int
	// Registered is how many of them (the first ones) get a Node object at
	// start; the others wait in the lab for a join. Zero: all.
	Registered int
	// Without names registered nodes that run no agent.
	Without []string
	// AgentArgs are extra flags for every agent.
	AgentArgs []string
}

// startK8sLab builds the lab, starts the capture on its switch, the API
// server in its control-plane namespace, applies the deploy base, registers
// the nodes as kubelet and the controller manager would (pod CIDRs of both
// families, underlay InternalIP) and starts the agents, returning once every
// agent has its peers and reports ready. Everything is removed when the
// test ends: agents first, then the API server, then the lab.
func startK8sLab(t *testing.T, o k8sLabOptions) *k8sLab {
	t.Helper()
	labRequireRoot(t)
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Registered == 0 {
		o.Registered = o.Nodes
	}
	bin := labWgmeshBinary(t)
	bctx, bcancel := context.WithTimeout(context.Background(), k8sBuildTimeout)
	binDir, err := apiserver.Build(bctx)
	bcancel()
	if err != nil {
		t.Fatalf("build kube-apiserver: %v", err)
	}
	l := newTestLab(t, lab.Options{Nodes: o.Nodes, ControlPlane: true, Wgmesh: bin})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	k := &k8sLab{Lab: l, wgmesh: bin, agents: map[string]*lab.Agent{}, kubeconfigs: map[string]string{}}
	began := time.Now()
	k.server, err = apiserver.Start(ctx, apiserver.Options{Dir: t.TempDir(), BinDir: binDir, NetNS: l.CP.NS, BindAddress: l.CP.Addr})
	if err != nil {
		t.Fatalf("start kube-apiserver in %s: %v", l.CP.NS, err)
	}
	// The capture runs from before the first agent to the end, API traffic
	// included (it carries no pod address, so it never counts as
	// plaintext). It starts only after the API server: apiserver.Start
	// locks an OS thread for kube-apiserver's lifetime and lets it exit
	// with the process, and a tcpdump forked earlier from that same thread
	// would get its parent-death SIGKILL when StopAPIServer ends it.
	if k.capture, err = l.StartCapture(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.server.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	// Registered last, runs first: agents stop while the API still answers.
	t.Cleanup(k.stopAgents)
	t.Logf("measured: kube-apiserver in %s ready after %s at %s", l.CP.NS, time.Since(began).Round(time.Millisecond), k.server.URL())

	k.admin = k8sClient(t, k.server, apiserver.Admin)
	if k.adminKubeconfig, err = k.server.Kubeconfig(apiserver.Admin); err != nil {
		t.Fatal(err)
	}
	k8sApplyDeploy(t, ctx, k.server)
	for _, n := range l.Nodes[:o.Registered] {
		k.register(t, ctx, n)
	}
	if o.Registered >= 2 {
		// The agents must run under the policy, not before it is in force.
		k8sWaitPolicyActive(t, ctx, k8sAgentClient(t, k.server, l.Nodes[0].Name), l.Nodes[1].Name)
	}
	var managed []*lab.Node
	for _, n := range l.Nodes[:o.Registered] {
		if slices.Contains(o.Without, n.Name) {
			continue
		}
		if _, err := n.Keygen(ctx); err != nil {
			t.Fatal(err)
		}
		managed = append(managed, n)
	}
	started := time.Now()
	for _, n := range managed {
		k.startAgent(t, n, o.AgentArgs...)
	}
	k.waitMesh(t, ctx, managed)
	t.Logf("measured: %d agents started in kube mode; all peers programmed and ready after %s", len(managed), time.Since(started).Round(time.Millisecond))
	return k
}

// register creates n's Node object as the admin.
func (k *k8sLab) register(t *testing.T, ctx context.Context, n *lab.Node) {
	t.Helper()
	k8sCreateNode(t, ctx, k.admin, k8sNode{
		Name:       n.Name,
		PodCIDRs:   []string{n.PodCIDR4.String(), n.PodCIDR6.String()},
		InternalIP: n.Underlay.String(),
	})
}

// startAgent starts n's agent (stopping a previous one first) with a
// kubeconfig acting as the wgmesh service account on n.
func (k *k8sLab) startAgent(t *testing.T, n *lab.Node, extra ...string) *lab.Agent {
	t.Helper()
	k.mu.Lock()
	old, kc := k.agents[n.Name], k.kubeconfigs[n.Name]
	k.mu.Unlock()
	if old != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := old.Stop(ctx)
		cancel()
		if err != nil {
			t.Errorf("stop the previous agent on %s: %v", n.Name, err)
		}
	}
	if kc == "" {
		imp := apiserver.Agent(n.Name)
		var err error
		if kc, err = k.server.KubeconfigImpersonating(imp.User, imp.Groups, imp.Extra); err != nil {
			t.Fatal(err)
		}
	}
	a, err := k.StartAgentKube(n, kc, extra...)
	if err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	k.agents[n.Name], k.kubeconfigs[n.Name] = a, kc
	k.mu.Unlock()
	return a
}

func (k *k8sLab) agent(name string) *lab.Agent {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.agents[name]
}

// stopAgents stops every agent in parallel, reporting unclean exits.
func (k *k8sLab) stopAgents() {
	var wg sync.WaitGroup
	for _, a := range k.Agents() {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_ = a.Stop(ctx) // Lab.Close reports nothing either; the log has it
		})
	}
	wg.Wait()
}

// waitMesh waits until every node in managed has exactly the others as
// peers and its agent reports ready.
func (k *k8sLab) waitMesh(t *testing.T, ctx context.Context, managed []*lab.Node) {
	t.Helper()
	for _, n := range managed {
		var want []*lab.Node
		for _, p := range managed {
			if p != n {
				want = append(want, p)
			}
		}
		if err := n.WaitPeers(withTimeout(ctx, 90*time.Second), want...); err != nil {
			t.Fatalf("agent on %s did not configure its peers from the API: %v\n%s", n.Name, err, k.agent(n.Name).LogTail(30))
		}
	}
	for _, n := range managed {
		if err := n.WaitReady(withTimeout(ctx, 60*time.Second)); err != nil {
			t.Fatalf("agent on %s not ready: %v\n%s", n.Name, err, k.agent(n.Name).LogTail(30))
		}
	}
}

// stopCapture stops the capture and fails the test if it missed packets.
func (k *k8sLab) stopCapture(t *testing.T) lab.CaptureResult {
	t.Helper()
	// A tcpdump that died early leaves a file without its statistics, and
	// Stop cannot tell why; say whether it was still running.
	if !k8sProcessWithArg("tcpdump", k.capture.Path) {
		t.Errorf("the capture's tcpdump (writing %s) ended before the test stopped it: the scenario's tail is not captured", k.capture.Path)
	}
	r, err := k.capture.Stop()
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	if r.KernelDropped > 0 {
		t.Errorf("capture dropped %d packets: a zero plaintext count would not be trustworthy", r.KernelDropped)
	}
	return r
}

// k8sPeerKeys lists the public keys of n's WireGuard peers (`wg show IFACE
// peers` prints no private key, unlike `dump`).
func k8sPeerKeys(ctx context.Context, n *lab.Node) ([]string, error) {
	out, err := n.Exec(ctx, "wg", "show", n.Interface, "peers")
	if err != nil {
		return nil, err
	}
	keys := strings.Fields(out)
	sort.Strings(keys)
	return keys, nil
}

// k8sRoutesMentioning returns the routes of n's wgmesh table that name one
// of the prefixes.
func k8sRoutesMentioning(ctx context.Context, n *lab.Node, prefixes ...netip.Prefix) ([]string, error) {
	routes, err := n.Routes(ctx, k8sRouteTable)
	if err != nil {
		return nil, err
	}
	var hit []string
	for _, r := range routes {
		for _, p := range prefixes {
			if slices.Contains(strings.Fields(r), p.String()) {
				hit = append(hit, r)
			}
		}
	}
	return hit, nil
}

// k8sStatus is the part of `wgmesh status -o json` these tests read.
type k8sStatus struct {
	Node         string `json:"node"`
	Backend      string `json:"backend"`
	PublicKey    string `json:"publicKey"`
	Strict       bool   `json:"strict"`
	Ready        bool   `json:"ready"`
	AgentRunning bool   `json:"agentRunning"`
	Peers        []struct {
		Node       string   `json:"node"`
		PublicKey  string   `json:"publicKey"`
		AllowedIPs []string `json:"allowedIPs"`
	} `json:"peers"`
	Unencrypted []string     `json:"unencryptedNodes"`
	Problems    []k8sProblem `json:"problems"`
	raw         string
}

// k8sProblem is one problem in `wgmesh status -o json`.
type k8sProblem struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

// k8sOthers lists nodes except n.
func k8sOthers(nodes []*lab.Node, n *lab.Node) []*lab.Node {
	var out []*lab.Node
	for _, m := range nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// k8sPodPairs lists every ordered pair of the nodes' first pods.
func k8sPodPairs(nodes []*lab.Node) [][2]*lab.Pod {
	var pairs [][2]*lab.Pod
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				pairs = append(pairs, [2]*lab.Pod{a.Pods[0], b.Pods[0]})
			}
		}
	}
	return pairs
}

func (s k8sStatus) peerNodes() []string {
	var names []string
	for _, p := range s.Peers {
		names = append(names, p.Node)
	}
	sort.Strings(names)
	return names
}

// k8sAgentStatus runs `wgmesh status -o json` inside n's namespace.
func k8sAgentStatus(ctx context.Context, n *lab.Node) (k8sStatus, error) {
	var st k8sStatus
	out, err := n.Wgmesh(ctx, "status", "--interface", n.Interface, "-o", "json")
	if err != nil {
		return st, err
	}
	i := strings.Index(out, "{")
	if i < 0 {
		return st, fmt.Errorf("node %s: wgmesh status -o json printed no JSON: %q", n.Name, out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &st); err != nil {
		return st, fmt.Errorf("node %s: wgmesh status -o json: %w", n.Name, err)
	}
	st.raw = out[i:]
	return st, nil
}

// verify runs `wgmesh verify --kubeconfig <admin>` inside the control-plane
// namespace, so it dials the API server there and never from the host.
func (k *k8sLab) verify(ctx context.Context, extra ...string) (string, int, error) {
	args := append([]string{"netns", "exec", k.CP.NS, k.wgmesh, "verify", "--kubeconfig", k.adminKubeconfig}, extra...)
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode(), nil
	}
	return string(out), 0, err
}

// warningEvents lists the Warning Events recorded on Node name.
func (k *k8sLab) warningEvents(ctx context.Context, name string) ([]corev1.Event, error) {
	l, err := k.admin.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + name})
	if err != nil {
		return nil, err
	}
	var out []corev1.Event
	for _, e := range l.Items {
		if e.Type == corev1.EventTypeWarning {
			out = append(out, e)
		}
	}
	return out, nil
}

// k8sPercentiles returns the median and the maximum of ds.
func k8sPercentiles(ds []time.Duration) (p50, maxD time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		p50 = s[len(s)/2]
	} else {
		p50 = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return p50, s[len(s)-1]
}

// k8sOutage is how long TestPrivilegedK8sAPIServerOutage keeps the API server
// down: $WGMESH_E2E_APISERVER_OUTAGE (a Go duration), 60s by default.
func k8sOutage(t *testing.T) time.Duration {
	t.Helper()
	s := strings.TrimSpace(os.Getenv("WGMESH_E2E_APISERVER_OUTAGE"))
	if s == "" {
		return 60 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		t.Fatalf("WGMESH_E2E_APISERVER_OUTAGE=%q: want a Go duration of at least 1s (e.g. 60s)", s)
	}
	return d
}

// k8sNftCovers reports whether an element of a set in `nft list table`
// output contains addr. nft merges adjacent intervals on output
// (10.244.2.0/24 and 10.244.3.0/24 print as 10.244.2.0/23, three in a row as
// a range a-b), so a plain text search for a prefix misses entries.
func k8sNftCovers(nftOut string, addr netip.Addr) bool {
	for _, line := range strings.Split(nftOut, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, "elements = {"); i >= 0 {
			line = line[i+len("elements = {"):]
		}
		for _, tok := range strings.FieldsFunc(line, func(r rune) bool { return r == ',' || r == '{' || r == '}' || r == ' ' || r == '\t' }) {
			if p, err := netip.ParsePrefix(tok); err == nil && p.Contains(addr) {
				return true
			}
			if lo, hi, ok := strings.Cut(tok, "-"); ok {
				a, err1 := netip.ParseAddr(lo)
				b, err2 := netip.ParseAddr(hi)
				if err1 == nil && err2 == nil && a.Compare(addr) <= 0 && addr.Compare(b) <= 0 {
					return true
				}
			}
			if a, err := netip.ParseAddr(tok); err == nil && a == addr {
				return true
			}
		}
	}
	return false
}

// k8sProcessWithArg reports whether a live process runs program with arg
// among its arguments.
func k8sProcessWithArg(program, arg string) bool {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, d := range dirs {
		b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == program && slices.Contains(args, arg) {
			return true
		}
	}
	return false
}
