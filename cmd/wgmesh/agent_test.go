package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wgmesh/wgmesh/internal/netnslab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// The test binary doubles as the wgmesh binary: with this variable set it
// runs main instead of the tests, so privileged tests can start agents in
// network namespaces (`ip netns exec ns <test binary> agent ...`) without a
// separate build.
const beWgmeshEnv = "WGMESH_TEST_BE_WGMESH"

func TestMain(m *testing.M) {
	if os.Getenv(beWgmeshEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// nsCmd runs the test binary as wgmesh inside network namespace ns.
func nsCmd(ns string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args...)...)
	cmd.Env = append(os.Environ(), beWgmeshEnv+"=1")
	return cmd
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestPrivilegedAgentPeersFile runs two agents in two network namespaces
// from one peers file and checks the whole life cycle through the binary's
// command line: pod traffic flows only through the tunnel, status names the
// peer, SIGTERM leaves the interface up, cleanup removes everything twice.
func TestPrivilegedAgentPeersFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ping", "wg"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	lab := netnslab.New(t, "wgmc", "a", "b")
	id := lab.ID
	dir := t.TempDir()
	type node struct {
		name, ns, iface, veth, underlay, pod, cidr string
		key                                        string
		agent                                      *exec.Cmd
		done                                       chan error
	}
	nodes := []*node{
		{name: "host-a", ns: lab.NS[0], iface: "wgmc" + id + "a", veth: "wgmv" + id + "a", underlay: "198.18.7.1", pod: "10.244.71.10", cidr: "10.244.71.0/24"},
		{name: "host-b", ns: lab.NS[1], iface: "wgmc" + id + "b", veth: "wgmv" + id + "b", underlay: "198.18.7.2", pod: "10.244.72.10", cidr: "10.244.72.0/24"},
	}
	for _, n := range nodes {
		// Interfaces in the namespace go with it (netnslab); the UAPI
		// socket file of the userspace backend does not.
		t.Cleanup(func() { os.Remove(filepath.Join("/var/run/wireguard", n.iface+".sock")) })
	}
	if err := netnslab.Veth(context.Background(), nodes[0].veth, nodes[0].ns, nodes[1].veth, nodes[1].ns); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		ip(t, "-n", n.ns, "addr", "add", n.underlay+"/24", "dev", n.veth)
		ip(t, "-n", n.ns, "link", "set", n.veth, "up")
		// The pod address lives on lo; no plaintext route to the other
		// node's pods exists, so a reply can only come through the tunnel.
		ip(t, "-n", n.ns, "addr", "add", n.pod+"/32", "dev", "lo")
		n.key = filepath.Join(dir, n.name+".key")
	}

	var peers strings.Builder
	peers.WriteString("nodes:\n")
	for _, n := range nodes {
		out, err := nsCmd(n.ns, "keygen", "--key-file", n.key).Output()
		if err != nil {
			t.Fatalf("keygen %s: %v", n.name, err)
		}
		// The agents run with the default --listen-port.
		fmt.Fprintf(&peers, "  - name: %s\n    publicKey: %q\n    endpoint: \"%s:%d\"\n    podCIDRs: [%q]\n    hostIPs: [%q]\n",
			n.name, strings.TrimSpace(string(out)), n.underlay, defaultListenPort, n.cidr, n.underlay)
	}
	peersFile := filepath.Join(dir, "peers.yaml")
	if err := os.WriteFile(peersFile, []byte(peers.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, n := range nodes {
		logf, err := os.Create(filepath.Join(dir, n.name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		n.agent = nsCmd(n.ns, "agent", "--node-name", n.name, "--peers-file", peersFile, "--key-file", n.key,
			"--interface", n.iface, "--backend", "userspace", "--ipv6=false", "--metrics-addr", "127.0.0.1:9587", "--log-level", "debug")
		n.agent.Stdout, n.agent.Stderr = logf, logf
		n.agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := n.agent.Start(); err != nil {
			t.Fatalf("start agent %s: %v", n.name, err)
		}
		n.done = make(chan error, 1)
		go func() { n.done <- n.agent.Wait(); logf.Close() }()
		t.Cleanup(func() {
			n.agent.Process.Kill()
			<-n.done
			if t.Failed() {
				log, _ := os.ReadFile(logf.Name())
				t.Logf("agent %s log:\n%s", n.name, log)
			}
		})
	}

	a, b := nodes[0], nodes[1]
	// Pod to pod through the tunnel; the agents need a moment to come up.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := exec.Command("ip", "netns", "exec", a.ns, "ping", "-c", "1", "-W", "1", "-I", a.pod, b.pod).Run()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pod-to-pod ping from %s to %s through the tunnel within 30s: %v", a.pod, b.pod, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Readiness and status by node name, from the agent.
	var st metrics.Status
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, err := nsCmd(a.ns, "status", "--interface", a.iface, "--metrics-addr", "127.0.0.1:9587", "-o", "json").Output()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("status json: %v\n%s", err, out)
		}
		if st.Ready || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !st.Ready || !st.AgentRunning || st.Node != a.name || st.Backend != "userspace" || st.LinkMTU == 0 {
		t.Errorf("status of %s: %+v", a.name, st)
	}
	if len(st.Peers) != 1 || st.Peers[0].Node != b.name || st.Peers[0].LastHandshake == nil || st.Peers[0].ReceiveBytes == 0 {
		t.Errorf("peers of %s: %+v, want %s with a handshake and traffic", a.name, st.Peers, b.name)
	}

	// rotate-key next to the running agent: it notices the file change and
	// reconfigures the interface with the new key, without a restart.
	out, err := nsCmd(a.ns, "rotate-key", "--key-file", a.key).Output()
	if err != nil {
		t.Fatalf("rotate-key: %v", err)
	}
	newPub := strings.TrimSpace(string(out))
	deadline = time.Now().Add(30 * time.Second)
	for {
		info, err := exec.Command("ip", "netns", "exec", a.ns, "wg", "show", a.iface, "public-key").Output()
		if err == nil && strings.TrimSpace(string(info)) == newPub {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("interface %s still has public key %q 30s after rotate-key, want %q (err %v)", a.iface, info, newPub, err)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// cleanup refuses while the agent runs, naming it, and changes nothing.
	refused, rerr := nsCmd(b.ns, "cleanup", "--interface", b.iface).CombinedOutput()
	if want := fmt.Sprintf("owned by a running wgmesh agent (pid %d)", b.agent.Process.Pid); rerr == nil || !strings.Contains(string(refused), want) {
		t.Errorf("cleanup while the agent runs: %v, want a refusal with %q:\n%s", rerr, want, refused)
	}
	if rules, _ := exec.Command("ip", "-n", b.ns, "rule").Output(); !strings.Contains(string(rules), "lookup 51820") {
		t.Errorf("refused cleanup removed the policy rule:\n%s", rules)
	}

	// SIGTERM: the agent exits 0 and the interface stays.
	if err := a.agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		if err != nil {
			t.Errorf("agent %s after SIGTERM: %v, want exit 0", a.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent %s did not stop within 30s of SIGTERM", a.name)
	}
	if err := exec.Command("ip", "-n", a.ns, "link", "show", a.iface).Run(); err != nil {
		t.Errorf("interface %s gone after SIGTERM; it must stay so traffic is dropped, not sent in plaintext", a.iface)
	}
	// Without the agent, status reads the interface itself... which has no
	// wireguard-go behind it now: it says so, and what that means.
	if out, err := nsCmd(a.ns, "status", "--interface", a.iface, "--metrics-addr", "127.0.0.1:9587").CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "AgentNotRunning") || !strings.Contains(string(out), "userspace") {
		t.Errorf("status without agent: %v, want the userspace interface described as without its agent:\n%s", err, out)
	}

	for i := range 2 {
		if out, err := nsCmd(a.ns, "cleanup", "--interface", a.iface).CombinedOutput(); err != nil {
			t.Errorf("cleanup #%d: %v\n%s", i+1, err, out)
		}
	}
	if err := exec.Command("ip", "-n", a.ns, "link", "show", a.iface).Run(); err == nil {
		t.Errorf("interface %s still there after cleanup", a.iface)
	}
	rules, _ := exec.Command("ip", "-n", a.ns, "rule").Output()
	if strings.Contains(string(rules), "lookup 51820") || strings.Contains(string(rules), "lookup 51821") {
		t.Errorf("policy rule still there after cleanup:\n%s", rules)
	}
}

// TestClusterRangesFromKubeadm: a kubeadm cluster needs no --cluster-cidrs:
// the agent's kube source reads kubeadm's podSubnet in the background and
// the reconciler's union with the flag's ranges neither loses nor repeats
// one.
func TestClusterRangesFromKubeadm(t *testing.T) {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kubeadm-config"},
		Data:       map[string]string{"ClusterConfiguration": "networking:\n  podSubnet: 10.244.0.0/16,fd00:10:244::/48\n"},
	}
	log := slog.New(slog.DiscardHandler)
	cfg := agentConfig{NodeName: "node1", ListenPort: 51820, Derive: mesh.DeriveOptions{IPv4: true, IPv6: true,
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.245.0.0/16")}}}
	src, err := newKubeSource(fake.NewClientset(cm), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ks := src.(*kube.Source)
	if st := ks.ClusterRanges(); !st.Pending {
		t.Errorf("before Run: %+v, want pending", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for ks.ClusterCIDRs() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("kubeadm's podSubnet never read: %+v", ks.ClusterRanges())
		}
		time.Sleep(10 * time.Millisecond)
	}
	o := cfg.Derive
	o.ClusterCIDRs = append(o.ClusterCIDRs, ks.ClusterCIDRs()...)
	d := mesh.Derive(mesh.Node{Name: "node1"}, nil, o)
	if got := fmt.Sprint(d.ClusterCIDRs); got != "[10.244.0.0/16 10.245.0.0/16 fd00:10:244::/48]" {
		t.Errorf("cluster ranges %s", got)
	}
}

// TestPrivilegedAgentRefusesExposedKey: the agent reads its key once, before
// it changes the host; a key file others can read fails the start, naming
// the file (never the key), and leaves no interface behind. (This guarantee
// was the reconciler's until the key moved to one place in runAgent.)
func TestPrivilegedAgentRefusesExposedKey(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	ns, iface := "wgmk"+id, "wgmk"+id
	exec.Command("ip", "netns", "del", ns).Run() // a killed earlier run
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	dir := t.TempDir()
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "private.key")
	if err := os.WriteFile(keyFile, []byte(priv.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	peersFile := filepath.Join(dir, "peers.yaml")
	peers := "nodes:\n  - name: host-a\n    endpoint: \"198.18.7.1:51820\"\n    podCIDRs: [\"10.244.71.0/24\"]\n"
	if err := os.WriteFile(peersFile, []byte(peers), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := nsCmd(ns, "agent", "--node-name", "host-a", "--peers-file", peersFile, "--key-file", keyFile,
		"--interface", iface, "--backend", "userspace", "--ipv6=false", "--metrics-addr", "")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("agent started with a 0644 key file:\n%s", out)
	}
	if !strings.Contains(string(out), keyFile) || !strings.Contains(string(out), "group or others") {
		t.Errorf("the error does not name the key file and the reason:\n%s", out)
	}
	if strings.Contains(string(out), priv.String()) {
		t.Error("the private key is in the output")
	}
	if err := exec.Command("ip", "-n", ns, "link", "show", iface).Run(); err == nil {
		t.Errorf("interface %s exists after the refused start", iface)
	}
}
