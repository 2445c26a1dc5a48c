package e2e_test

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
	t.Run("Rollout", func(t *testing.T) { cl.rollout(t, ctx) })
}

type clusterRun struct {
	t       *testing.T
	c       *cluster.Cluster
	workers []corev1.Pod // one workload pod per node, by node index
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
		out, err := c.Install(ctx, "v1")
		if err != nil {
			t.Fatal(err)
		}
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

// startWorkers runs a Deployment of the workload server with one pod per
// node (required anti-affinity) and records the pods by node order.
func (r *clusterRun) startWorkers(t *testing.T, ctx context.Context) {
	c := r.c
	replicas := int32(len(c.Nodes))
	labels := map[string]string{"app": "worker"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "worker", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Containers: []corev1.Container{{
						Name: "worker", Image: cluster.WorkloadImage, ImagePullPolicy: corev1.PullNever,
						Args:  []string{"serve", ":8080"},
						Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					}},
				},
			},
		},
	}
	if _, err := c.Admin.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "rollout", "status", "deployment/worker", "--timeout=5m"); err != nil {
		t.Fatal(err)
	}
	pods, err := c.Admin.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=worker"})
	if err != nil {
		t.Fatal(err)
	}
	byNode := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			byNode[p.Spec.NodeName] = p
		}
	}
	r.workers = nil
	for _, n := range c.Nodes {
		p, ok := byNode[n.Name]
		if !ok {
			t.Fatalf("no worker pod on %s", n.Name)
		}
		r.workers = append(r.workers, p)
	}
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
	pods, err := r.c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh"})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			m[p.Spec.NodeName] = p
		}
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
