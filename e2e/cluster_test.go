package e2e_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wgmesh/wgmesh/e2e/cluster"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// TestPrivilegedCluster runs wgmesh as users install it on a real 3-node
// cluster (e2e/cluster: kubelet, containerd, runc, CNI, kube-proxy,
// controller manager, scheduler) and walks through the scenarios of issue
// #12 on that one cluster, in order; each subtest asserts that no plaintext
// pod packet crossed the underlay while it ran.
func TestPrivilegedCluster(t *testing.T) {
	labRequireRoot(t)
	for _, tool := range []string{"containerd", "runc", "ctr", "nsenter", "unshare", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("privileged cluster: %s not installed", tool)
		}
	}
	bin := labWgmeshBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	begin := time.Now()
	c, err := cluster.New(ctx, cluster.Options{Wgmesh: bin, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	t.Logf("cluster of %d nodes up after %v (lab %s)", len(c.Nodes), time.Since(begin).Round(time.Second), c.Dir())

	cl := &clusterRun{t: t, c: c}
	if !t.Run("Rollout", func(t *testing.T) { cl.rollout(t, ctx) }) {
		return // the other scenarios need the mesh
	}
	t.Run("Services", func(t *testing.T) { cl.services(t, ctx) })
	t.Run("LogsExec", func(t *testing.T) { cl.logsExec(t, ctx) })
	t.Run("NodePort", func(t *testing.T) { cl.nodePort(t, ctx) })
	t.Run("RollingUpdate", func(t *testing.T) { cl.rollingUpdate(t, ctx) })
	t.Run("Drain", func(t *testing.T) { cl.drain(t, ctx) })
	t.Run("Rejoin", func(t *testing.T) { cl.rejoin(t, ctx) })
	t.Run("Unscheduled", func(t *testing.T) { cl.unscheduled(t, ctx) })
	// Last: it removes wgmesh from the cluster.
	t.Run("Uninstall", func(t *testing.T) { cl.uninstall(t, ctx) })
}

type clusterRun struct {
	t       *testing.T
	c       *cluster.Cluster
	workers []corev1.Pod // one workload pod per node, by node index
	overlay string       // the kustomize overlay last applied, as the user keeps it
}

// capture runs fn with a capture on the underlay and fails t if any
// plaintext pod packet crossed it.
func (r *clusterRun) capture(t *testing.T, ctx context.Context, name string, fn func()) {
	t.Helper()
	cap, err := r.c.Lab.StartCaptureFile(ctx, r.c.Dir()+"/"+name+".pcap")
	if err != nil {
		t.Fatal(err)
	}
	fn()
	res, err := cap.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: underlay capture: %v", name, res)
	requireNoPlaintext(t, res)
}

// rollout is scenario 1: the DaemonSet installed as README says rolls out on
// every node, agents publish their keys with their own bound token, the
// admission policy confines each agent to its own Node, and pods of a
// Deployment on different nodes reach each other over IPv4 and IPv6.
func (r *clusterRun) rollout(t *testing.T, ctx context.Context) {
	c := r.c
	if _, err := c.BuildAgentImage(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	r.capture(t, ctx, "rollout", func() {
		begin := time.Now()
		overlay, out, err := c.Install(ctx, "v1")
		if err != nil {
			t.Fatal(err)
		}
		r.overlay = overlay
		t.Logf("kubectl apply -k:\n%s", out)
		if out, err := c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh", "--timeout=5m"); err != nil {
			r.dumpAgents(t, ctx)
			t.Fatalf("rollout: %v", err)
		} else {
			t.Logf("rolled out after %v: %s", time.Since(begin).Round(time.Second), strings.TrimSpace(out))
		}
		agents := r.agentPods(t, ctx)
		if len(agents) != len(c.Nodes) {
			t.Fatalf("%d agent pods, want one per node (%d)", len(agents), len(c.Nodes))
		}
		for node, p := range agents {
			if !podReady(&p) {
				t.Errorf("agent pod %s on %s not Ready", p.Name, node)
			}
		}
		// Annotations: published by the agents themselves, through their
		// pods' service account tokens (no other identity in the lab has
		// a reason to write them).
		if err := lab.Poll(ctx, time.Second, func(ctx context.Context) (bool, error) {
			for _, n := range c.Nodes {
				node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
				if err != nil || node.Annotations["wgmesh.io/public-key"] == "" {
					return false, nil
				}
			}
			return true, nil
		}); err != nil {
			t.Fatalf("not every node got a wgmesh.io/public-key annotation: %v", err)
		}
		r.checkBoundToken(t, ctx, agents)
		r.startWorkers(t, ctx)
		r.checkPodMesh(t, ctx)
	})
}

// services is scenario 2: pods reach the kubernetes Service (the API server
// behind kube-proxy's ClusterIP, with the pod's own token) and a
// hostNetwork server on another node, with nothing in plaintext.
func (r *clusterRun) services(t *testing.T, ctx context.Context) {
	c := r.c
	server := c.Nodes[1]
	host := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "host-server", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:    server.Name,
			HostNetwork: true,
			Containers: []corev1.Container{{
				Name: "server", Image: cluster.WorkloadImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"serve", ":18080"},
			}},
		},
	}
	if _, err := c.Admin.CoreV1().Pods("default").Create(ctx, host, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "wait", "--for=condition=Ready", "pod/host-server", "--timeout=3m"); err != nil {
		t.Fatal(err)
	}
	r.capture(t, ctx, "services", func() {
		for i, w := range r.workers {
			out, err := c.Kubectl(ctx, "exec", w.Name, "--", "/workload", "kube", "/version")
			if err != nil || !strings.Contains(out, `"gitVersion"`) {
				t.Errorf("pod %s on %s → kubernetes Service: %v %s", w.Name, w.Spec.NodeName, err, out)
			}
			if c.Nodes[i] == server {
				continue
			}
			url := "http://" + net.JoinHostPort(server.Underlay.String(), "18080") + "/"
			out, err = c.Kubectl(ctx, "exec", w.Name, "--", "/workload", "get", url)
			if err != nil {
				t.Errorf("pod %s on %s → hostNetwork server on %s (%s): %v", w.Name, w.Spec.NodeName, server.Name, url, err)
				continue
			}
			// The server sees the pod's own address: no masquerading
			// hides plaintext from the capture.
			if !strings.Contains(out, " "+w.Status.PodIP+":") {
				t.Errorf("hostNetwork server saw %q, want the client pod's address %s", out, w.Status.PodIP)
			}
		}
	})
}

// agentSoftMemoryLimit is 90 % of the DaemonSet's memory limit (256Mi), in
// bytes: the Go soft memory limit the agent takes from its cgroup.
const agentSoftMemoryLimit = (256 << 20) * 9 / 10

// logsExec is scenario 8: what an operator does first works against the
// agent pods — kubectl logs and kubectl exec … wgmesh status.
func (r *clusterRun) logsExec(t *testing.T, ctx context.Context) {
	c := r.c
	for node, p := range r.agentPods(t, ctx) {
		logs, err := c.Kubectl(ctx, "-n", "wgmesh", "logs", p.Name)
		if err != nil {
			t.Errorf("kubectl logs %s: %v", p.Name, err)
		} else if !strings.Contains(logs, `"msg"`) {
			t.Errorf("kubectl logs %s: no JSON log lines:\n%s", p.Name, lastN(logs, 10))
		} else if want := fmt.Sprintf(`"limit_bytes":%d`, agentSoftMemoryLimit); !strings.Contains(logs, want) {
			// The DaemonSet's memory limit reaches the agent through its
			// cgroup: the Go soft limit is 90 % of it.
			t.Errorf("kubectl logs %s: no Go memory limit from the container's (%s):\n%s", p.Name, want, lastN(logs, 20))
		}
		status, err := c.Kubectl(ctx, "-n", "wgmesh", "exec", p.Name, "--", "wgmesh", "status")
		if err != nil {
			t.Errorf("kubectl exec %s -- wgmesh status: %v", p.Name, err)
			continue
		}
		for _, n := range c.Nodes {
			if n.Name != node && !strings.Contains(status, n.Name) {
				t.Errorf("wgmesh status on %s does not mention peer %s:\n%s", node, n.Name, status)
			}
		}
		if node == c.Nodes[0].Name {
			t.Logf("kubectl exec %s -- wgmesh status:\n%s", p.Name, status)
		}
	}
}

// rollingUpdate is scenario 4: a new image tag rolls through the
// DaemonSet one node at a time while every worker pod probes the worker on
// the next node (a new TCP connection every 100 ms); nothing crosses the
// underlay in plaintext, and the longest outage seen by each probe is the
// interruption an upgrade costs — logged for the README.
func (r *clusterRun) rollingUpdate(t *testing.T, ctx context.Context) {
	c := r.c
	if _, err := c.BuildAgentImage(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	before := r.agentPods(t, ctx)
	type probe struct {
		from, to string
		cmd      *exec.Cmd
		mu       sync.Mutex
		up       bool
		gaps     []int64
		down     bool
	}
	var probes []*probe
	pctx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	for i, w := range r.workers {
		to := r.workers[(i+1)%len(r.workers)]
		url := "http://" + net.JoinHostPort(to.Status.PodIP, "8080") + "/"
		p := &probe{from: w.Spec.NodeName, to: to.Spec.NodeName}
		// -i with a pipe that stays open: the probe ends when kubectl
		// does (its standard input closes), not 10 minutes later in the
		// middle of the next scenarios.
		p.cmd = c.KubectlCmd(pctx, "exec", "-i", w.Name, "--", "/workload", "probe", url, "10m")
		stdin, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		defer stdin.Close()
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				p.mu.Lock()
				switch {
				case len(f) == 1 && f[0] == "up":
					p.up = true
				case len(f) == 2 && f[0] == "down":
					p.down = true
				case len(f) == 2 && (f[0] == "gap" || f[0] == "still-down"):
					ms, _ := strconv.ParseInt(f[1], 10, 64)
					p.gaps = append(p.gaps, ms)
					p.down = false
				}
				p.mu.Unlock()
			}
		}()
		defer p.cmd.Wait()
		probes = append(probes, p)
	}
	if err := lab.Poll(ctx, 200*time.Millisecond, func(context.Context) (bool, error) {
		for _, p := range probes {
			p.mu.Lock()
			up := p.up
			p.mu.Unlock()
			if !up {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("probes never answered: %v", err)
	}
	r.capture(t, ctx, "rolling-update", func() {
		begin := time.Now()
		overlay, _, err := c.Install(ctx, "v2")
		if err != nil {
			t.Fatal(err)
		}
		r.overlay = overlay
		if _, err := c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh", "--timeout=10m"); err != nil {
			r.dumpAgents(t, ctx)
			t.Fatalf("rolling update: %v", err)
		}
		t.Logf("rolling update v1 → v2 on %d nodes took %v", len(c.Nodes), time.Since(begin).Round(time.Second))
		// Let a probe that is down at the end come back (or not).
		time.Sleep(5 * time.Second)
	})
	stopProbes()
	after := r.agentPods(t, ctx)
	for _, n := range c.Nodes {
		b, a := before[n.Name], after[n.Name]
		if a.UID == b.UID || !strings.HasSuffix(a.Spec.Containers[0].Image, ":v2") {
			t.Errorf("agent on %s not replaced by v2: %s %s", n.Name, a.Name, a.Spec.Containers[0].Image)
		}
	}
	var all []int64
	for _, p := range probes {
		p.mu.Lock()
		var worst, total int64
		for _, g := range p.gaps {
			total += g
			worst = max(worst, g)
		}
		all = append(all, p.gaps...)
		t.Logf("INTERRUPTION pod on %s → pod on %s: %d outages, longest %d ms, total %d ms (gaps %v ms)", p.from, p.to, len(p.gaps), worst, total, p.gaps)
		if p.down {
			t.Errorf("pod on %s → pod on %s: still down after the rolling update", p.from, p.to)
		}
		p.mu.Unlock()
	}
	// The figure README and the DaemonSet's comment quote: one outage per
	// probe and restarting end node (merged when both ends restart back to
	// back).
	if len(all) > 0 {
		slices.Sort(all)
		t.Logf("INTERRUPTION summary (what a rollout costs per userspace node): %d outages over %d probes, median %.1f s, shortest %.1f s, longest %.1f s",
			len(all), len(probes), float64(all[len(all)/2])/1000, float64(all[0])/1000, float64(all[len(all)-1])/1000)
	} else {
		t.Logf("INTERRUPTION summary: no outage seen by %d probes", len(probes))
	}
}

// nodePort is scenario 3: a client namespace outside the cluster (on the
// underlay, not a node) reaches the workers through a NodePort Service on
// every node, 8 MiB each way with checksums; kube-proxy may send it to a
// worker on another node, and that hop must be encrypted.
func (r *clusterRun) nodePort(t *testing.T, ctx context.Context) {
	c := r.c
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "worker", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": "worker"},
			Ports:    []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080), NodePort: 30080}},
		},
	}
	if _, err := c.Admin.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clientNS, err := c.Lab.AddHost(ctx, "client", netip.MustParseAddr("198.18.0.200"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := lab.InNetNS(clientNS, func() error {
				var err error
				conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	const size = 8 << 20
	want := patternSHA256(size)
	r.capture(t, ctx, "nodeport", func() {
		for _, n := range c.Nodes {
			base := "http://" + net.JoinHostPort(n.Underlay.String(), "30080")
			// kube-proxy programs the NodePort asynchronously.
			var resp *http.Response
			if err := lab.Poll(ctx, 500*time.Millisecond, func(ctx context.Context) (bool, error) {
				var err error
				resp, err = hc.Get(base + fmt.Sprintf("/bytes?n=%d", size))
				return err == nil, nil
			}); err != nil {
				t.Errorf("NodePort on %s never answered: %v", n.Name, err)
				continue
			}
			h := sha256.New()
			got, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			if err != nil || got != size || hex.EncodeToString(h.Sum(nil)) != want {
				t.Errorf("download through NodePort on %s: %d bytes, err %v, checksum match %v", n.Name, got, err, hex.EncodeToString(h.Sum(nil)) == want)
			}
			resp, err = hc.Post(base+"/sink", "application/octet-stream", io.LimitReader(&patternReader{}, size))
			if err != nil {
				t.Errorf("upload through NodePort on %s: %v", n.Name, err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.TrimSpace(string(body)) != fmt.Sprintf("%d %s", size, want) {
				t.Errorf("upload through NodePort on %s: server got %q, want %d bytes with sha256 %s", n.Name, body, size, want)
			}
		}
	})
}

// patternReader is the workload's byte pattern: byte i is i mod 251.
type patternReader struct{ off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func patternSHA256(n int64) string {
	h := sha256.New()
	io.Copy(h, io.LimitReader(&patternReader{}, n))
	return hex.EncodeToString(h.Sum(nil))
}

// drain is the second half of scenario 6: `kubectl drain` of a node evicts
// its workload but (DaemonSets ignored, as drain requires) keeps its agent,
// so the pods left on the other nodes still reach each other and the
// drained node's host encrypted; uncordoning brings the workload back.
func (r *clusterRun) drain(t *testing.T, ctx context.Context) {
	c := r.c
	victim := c.Nodes[len(c.Nodes)-1]
	agentsBefore := r.agentPods(t, ctx)
	r.capture(t, ctx, "drain", func() {
		if out, err := c.Kubectl(ctx, "drain", victim.Name, "--ignore-daemonsets", "--timeout=3m"); err != nil {
			t.Fatalf("drain: %v\n%s", err, out)
		}
		pods, err := c.Admin.CoreV1().Pods("default").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + victim.Name})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Labels["app"] == "worker" {
				t.Errorf("worker %s still on drained %s", p.Name, victim.Name)
			}
		}
		if a := r.agentPods(t, ctx)[victim.Name]; a.UID != agentsBefore[victim.Name].UID {
			t.Errorf("agent on drained %s replaced or gone (%s)", victim.Name, a.Name)
		}
		// The remaining workers still talk, encrypted.
		a, b := r.workers[0], r.workers[1]
		url := "http://" + net.JoinHostPort(b.Status.PodIP, "8080") + "/"
		if out, err := c.Kubectl(ctx, "exec", a.Name, "--", "/workload", "get", url); err != nil || !strings.HasPrefix(out, b.Name+" ") {
			t.Errorf("after drain: %s → %s: %v %q", a.Name, url, err, out)
		}
		if out, err := c.Kubectl(ctx, "uncordon", victim.Name); err != nil {
			t.Fatalf("uncordon: %v\n%s", err, out)
		}
		if _, err := c.Kubectl(ctx, "rollout", "status", "deployment/worker", "--timeout=5m"); err != nil {
			t.Fatalf("workers did not come back after uncordon: %v", err)
		}
	})
}

// rejoin is the first half of scenario 6: a node is deleted (its kubelet
// down, its Node object removed, its pods garbage-collected, its agent's key
// file gone, as for a reinstalled machine) and joins again with a new key; the other agents learn the new key and pods on all nodes
// reach each other again, encrypted.
func (r *clusterRun) rejoin(t *testing.T, ctx context.Context) {
	c := r.c
	victim := c.Nodes[len(c.Nodes)-1]
	old, err := c.Admin.CoreV1().Nodes().Get(ctx, victim.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oldKey := old.Annotations["wgmesh.io/public-key"]
	r.capture(t, ctx, "rejoin", func() {
		begin := time.Now()
		if err := victim.StopKubelet(); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, "delete", "node", victim.Name); err != nil {
			t.Fatalf("delete node: %v\n%s", err, out)
		}
		// As for a machine that is reinstalled before it rejoins: its pods
		// are gone (the pod garbage collector deletes pods of deleted
		// nodes after a 40 s quarantine; the restarted kubelet then
		// removes their containers) and so is the agent's key.
		if err := lab.Poll(ctx, time.Second, func(ctx context.Context) (bool, error) {
			pods, err := c.Admin.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + victim.Name})
			return err == nil && len(pods.Items) == 0, nil
		}); err != nil {
			t.Fatalf("pods of deleted %s never garbage-collected: %v", victim.Name, err)
		}
		keyDir, err := victim.HostPath("/var/lib/wgmesh")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(keyDir); err != nil {
			t.Fatal(err)
		}
		if err := victim.ForgetPodNetwork(); err != nil {
			t.Fatal(err)
		}
		if err := victim.StartKubelet(); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitNodesReady(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.AddPlainRoutes(ctx); err != nil {
			t.Fatal(err)
		}
		var newKey string
		if err := lab.Poll(ctx, time.Second, func(ctx context.Context) (bool, error) {
			n, err := c.Admin.CoreV1().Nodes().Get(ctx, victim.Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			newKey = n.Annotations["wgmesh.io/public-key"]
			return newKey != "" && newKey != oldKey, nil
		}); err != nil {
			r.dumpAgents(t, ctx)
			t.Fatalf("%s never published a new key (old %s, now %q): %v", victim.Name, oldKey, newKey, err)
		}
		if _, err := c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh", "--timeout=5m"); err != nil {
			t.Fatal(err)
		}
		if r.workers, err = c.WorkerPods(ctx, "worker"); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s re-joined with key %s (was %s) after %v", victim.Name, newKey, oldKey, time.Since(begin).Round(time.Second))
		// The other agents must learn the new key (a tunnel with the old
		// one cannot carry anything): wait for the first answer, then
		// check every pair.
		from, to := r.workers[0], r.workers[len(r.workers)-1]
		url := "http://" + net.JoinHostPort(to.Status.PodIP, "8080") + "/"
		pctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		if err := lab.Poll(pctx, time.Second, func(ctx context.Context) (bool, error) {
			_, err := c.Kubectl(ctx, "exec", from.Name, "--", "/workload", "get", url)
			return err == nil, nil
		}); err != nil {
			t.Fatalf("%s → re-joined %s never answered: %v", from.Spec.NodeName, victim.Name, err)
		}
		t.Logf("pods reach the re-joined %s %v after it was deleted", victim.Name, time.Since(begin).Round(time.Second))
		r.checkPodMesh(t, ctx)
	})
}

// unscheduled is scenario 5: the user keeps the agent off a node with a
// patch in their overlay (node affinity on a label of their own) and the
// node has no wgmesh key. `wgmesh verify` (run in an agent pod, as an
// operator would) reports it, and in strict mode pods elsewhere cannot
// reach its pods — dropped, never plaintext.
func (r *clusterRun) unscheduled(t *testing.T, ctx context.Context) {
	c := r.c
	victim := c.Nodes[len(c.Nodes)-1]
	base, err := cluster.DeployDir()
	if err != nil {
		t.Fatal(err)
	}
	// The user's overlay: the install's, plus their patch.
	dir := filepath.Join(c.Dir(), "overlay-exclude")
	patch := `patches:
  - target: {kind: DaemonSet, name: wgmesh}
    patch: |-
      - op: add
        path: /spec/template/spec/affinity
        value:
          nodeAffinity:
            requiredDuringSchedulingIgnoredDuringExecution:
              nodeSelectorTerms:
                - matchExpressions:
                    - {key: example.com/wgmesh, operator: NotIn, values: ["off"]}
`
	if err := cluster.WriteOverlay(dir, base, cluster.AgentImageName, "v2", patch); err != nil {
		t.Fatal(err)
	}
	r.capture(t, ctx, "unscheduled", func() {
		// Pods elsewhere keep opening connections to the victim's pod
		// throughout: while its agent goes and its key is withdrawn, every
		// packet must be encrypted or dropped, never plaintext.
		target := r.workers[len(r.workers)-1]
		for _, from := range r.workers[:len(r.workers)-1] {
			defer r.traffic(t, ctx, from, "http://"+net.JoinHostPort(target.Status.PodIP, "8080")+"/")()
		}
		if _, err := c.Kubectl(ctx, "label", "node", victim.Name, "example.com/wgmesh=off"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Kubectl(ctx, "apply", "-k", dir); err != nil {
			t.Fatal(err)
		}
		r.overlay = dir
		if _, err := c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh", "--timeout=5m"); err != nil {
			t.Fatal(err)
		}
		if err := lab.Poll(ctx, time.Second, func(ctx context.Context) (bool, error) {
			_, on := r.agentPods(t, ctx)[victim.Name]
			return !on, nil
		}); err != nil {
			t.Fatalf("agent still on %s: %v", victim.Name, err)
		}
		// A node that never had an agent carries no key.
		if _, err := c.Kubectl(ctx, "annotate", "node", victim.Name, "wgmesh.io/public-key-", "wgmesh.io/endpoint-", "wgmesh.io/backend-"); err != nil {
			t.Fatal(err)
		}
		agents := r.agentPods(t, ctx)
		a := agents[c.Nodes[0].Name]
		out, err := c.Kubectl(ctx, "-n", "wgmesh", "exec", a.Name, "--", "wgmesh", "verify")
		t.Logf("kubectl exec %s -- wgmesh verify: %v\n%s", a.Name, err, out)
		if err == nil || !strings.Contains(out, victim.Name) || !strings.Contains(out, "NOT fully encrypted") {
			t.Errorf("wgmesh verify did not report %s (exit %v)", victim.Name, err)
		}
		// Strict mode: the keyless node's pods are unreachable from pods
		// elsewhere once the agents have seen the change.
		from, to := r.workers[0], r.workers[len(r.workers)-1]
		url := "http://" + net.JoinHostPort(to.Status.PodIP, "8080") + "/"
		if err := lab.Poll(ctx, 2*time.Second, func(ctx context.Context) (bool, error) {
			gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := c.Kubectl(gctx, "exec", from.Name, "--", "/workload", "get", url)
			return err != nil, nil
		}); err != nil {
			t.Errorf("%s still reaches the keyless %s: %v", from.Spec.NodeName, victim.Name, err)
		}
		// The other nodes still talk.
		b := r.workers[1]
		if out, err := c.Kubectl(ctx, "exec", from.Name, "--", "/workload", "get", "http://"+net.JoinHostPort(b.Status.PodIP, "8080")+"/"); err != nil || !strings.HasPrefix(out, b.Name+" ") {
			t.Errorf("%s → %s with the agent off %s: %v %q", from.Spec.NodeName, b.Spec.NodeName, victim.Name, err, out)
		}
	})
}

// checkBoundToken requests a real token bound to node1's agent pod (what
// the kubelet mounts into it) and shows the admission policy at work: the
// token may annotate its own Node and nothing else.
func (r *clusterRun) checkBoundToken(t *testing.T, ctx context.Context, agents map[string]corev1.Pod) {
	c := r.c
	own, other := c.Nodes[0].Name, c.Nodes[1].Name
	pod := agents[own]
	exp := int64(600)
	tr, err := c.Admin.CoreV1().ServiceAccounts("wgmesh").CreateToken(ctx, "wgmesh", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for agent pod %s: %v", pod.Name, err)
	}
	cfg := rest.AnonymousClientConfig(c.AdminConfig)
	cfg.BearerToken = tr.Status.Token
	agent, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dry := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	patch := k8sAnnotationPatch(t, "wgmesh.io/endpoint", "198.18.0.99:51820")
	if _, err := agent.CoreV1().Nodes().Patch(ctx, own, types.MergePatchType, patch, dry); err != nil {
		t.Errorf("agent token of %s could not annotate its own Node: %v", own, err)
	}
	if _, err := agent.CoreV1().Nodes().Patch(ctx, other, types.MergePatchType, patch, dry); !k8sDeniedByPolicy(err) {
		t.Errorf("agent token of %s annotating Node %s: got %v, want denial by the admission policy", own, other, err)
	} else {
		t.Logf("bound token of %s's agent denied on %s: %v", own, other, err)
	}
	label := k8sMergePatch(t, map[string]any{"metadata": map[string]any{"labels": map[string]string{"evil": "1"}}})
	if _, err := agent.CoreV1().Nodes().Patch(ctx, own, types.MergePatchType, label, dry); err == nil {
		t.Errorf("agent token of %s could label its own Node", own)
	}
}

// traffic runs the workload's probe in pod from against url (a new
// connection every 100 ms, whose packets the running capture sees) until
// the returned stop is called.
func (r *clusterRun) traffic(t *testing.T, ctx context.Context, from corev1.Pod, url string) (stop func()) {
	t.Helper()
	pctx, cancel := context.WithCancel(ctx)
	// -i with a pipe that stays open: the probe ends with kubectl.
	cmd := r.c.KubectlCmd(pctx, "exec", "-i", from.Name, "--", "/workload", "probe", url, "10m")
	stdin, err := cmd.StdinPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		cancel()
		t.Fatalf("probe %s → %s: %v", from.Name, url, err)
	}
	return func() {
		cancel()
		cmd.Wait()
		stdin.Close()
	}
}

// startWorkers runs the workload Deployment with one pod per node.
func (r *clusterRun) startWorkers(t *testing.T, ctx context.Context) {
	pods, err := r.c.DeployWorkers(ctx, "worker")
	if err != nil {
		t.Fatal(err)
	}
	r.workers = pods
}

// checkPodMesh fetches from every worker pod to every other one, over each
// address family the pods have.
func (r *clusterRun) checkPodMesh(t *testing.T, ctx context.Context) {
	for _, from := range r.workers {
		for _, to := range r.workers {
			if from.Name == to.Name {
				continue
			}
			for _, ip := range to.Status.PodIPs {
				a, err := netip.ParseAddr(ip.IP)
				if err != nil {
					t.Fatal(err)
				}
				url := "http://" + net.JoinHostPort(a.String(), "8080") + "/"
				out, err := r.c.Kubectl(ctx, "exec", from.Name, "--", "/workload", "get", url)
				if err != nil {
					t.Errorf("%s (%s) → %s (%s) %s: %v", from.Name, from.Spec.NodeName, to.Name, to.Spec.NodeName, url, err)
					continue
				}
				if !strings.HasPrefix(out, to.Name+" ") {
					t.Errorf("%s → %s: answer %q, want it from %s", from.Name, url, out, to.Name)
				}
			}
		}
	}
	if len(r.workers) > 0 && len(r.workers[0].Status.PodIPs) < 2 {
		t.Logf("pods have only %v: IPv6 not checked", r.workers[0].Status.PodIPs)
	}
}

// agentPods returns the live agent pods by node name.
func (r *clusterRun) agentPods(t *testing.T, ctx context.Context) map[string]corev1.Pod {
	t.Helper()
	m, err := r.c.AgentPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (r *clusterRun) dumpAgents(t *testing.T, ctx context.Context) {
	out, _ := r.c.Kubectl(ctx, "-n", "wgmesh", "get", "pods,ds", "-o", "wide")
	t.Logf("%s", out)
	out, _ = r.c.Kubectl(ctx, "-n", "wgmesh", "describe", "pods")
	t.Logf("%s", lastN(out, 60))
	for _, n := range r.c.Nodes {
		t.Logf("--- %s kubelet:\n%s", n.Name, n.LogTail("kubelet.log"))
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
