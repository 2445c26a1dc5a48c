package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/e2e/cluster"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// The agent's defaults, which the DaemonSet does not change: interface,
// route table and host-route table.
const (
	clusterIface     = "wgmesh0"
	clusterTable     = "51820"
	clusterHostTable = "51821"
)

// uninstall is scenario 7: wgmesh is removed with README's "Uninstall"
// steps, run with the real kubectl against the real nodes — the uninstall
// overlay with the install's image, (1) delete the agent DaemonSet with
// foreground cascading, (2) apply the cleanup, (3) its rollout status, (4)
// delete the cleanup, (5) delete the rest through the install overlay.
//
// One node's agent is slow to stop (frozen with SIGSTOP, so it holds its
// instance lock until the kubelet kills it at the end of the grace period),
// and step 2 starts before step 1 has returned, as soon as the other
// agents are gone: that node's cleanup init container must refuse, change
// nothing and be retried by the kubelet until it succeeds, while pods on the
// nodes already cleaned reach each other again. Then: rollout status says
// done; pods on every pair of nodes reach each other over IPv4 and IPv6, in
// plaintext (the capture sees it: the user's choice); nothing of wgmesh is
// left on any node or in the API. The time from the cleanup's apply to each
// node's cleanup and to its pod traffic flowing again is logged (UNINSTALL
// lines).
func (r *clusterRun) uninstall(t *testing.T, ctx context.Context) {
	c := r.c
	if r.overlay == "" {
		t.Fatal("no install overlay recorded (did Rollout run?)")
	}
	if len(c.Nodes) < 3 {
		t.Fatalf("the staged uninstall needs 3 nodes, have %d", len(c.Nodes))
	}
	ds, err := c.Admin.AppsV1().DaemonSets("wgmesh").Get(ctx, "wgmesh", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// "Use the image of the install": the overlay maps the placeholder to it.
	image := ds.Spec.Template.Spec.Containers[0].Image
	name, tag, ok := strings.Cut(image, ":")
	if !ok {
		t.Fatalf("agent image %q has no tag", image)
	}
	base, err := cluster.DeployDir()
	if err != nil {
		t.Fatal(err)
	}
	// README's uninstall overlay, the path relative to it as kustomize
	// requires.
	udir := filepath.Join(c.Dir(), "wgmesh-uninstall")
	if err := cluster.WriteOverlay(udir, filepath.Join(base, "uninstall"), name, tag, ""); err != nil {
		t.Fatal(err)
	}

	// Before: every node carries wgmesh state (agents running, or, on a node
	// the Unscheduled step took the agent off, what a stopped agent leaves),
	// so the checks below can fail.
	for _, n := range c.Nodes {
		if tables, err := n.HostExec(ctx, "nft", "list", "tables"); err != nil || !strings.Contains(tables, "wgmesh_"+clusterIface) {
			t.Fatalf("%s before the uninstall: no nftables table wgmesh_%s (%v):\n%s", n.Name, clusterIface, err, tables)
		}
		if p, err := n.HostPath("/var/lib/wgmesh/private.key"); err != nil {
			t.Fatal(err)
		} else if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s before the uninstall: %v", n.Name, err)
		}
	}

	agents := r.agentPods(t, ctx)
	slow := c.Nodes[0]
	slowPod, ok := agents[slow.Name]
	if !ok {
		t.Fatalf("no agent on %s to stage a slow stop", slow.Name)
	}
	pid, err := containerPid(slowPod)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("freeze agent %s (pid %d): %v", slowPod.Name, pid, err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	t.Logf("agent %s on %s frozen (pid %d): it stops only when the kubelet kills it after the grace period", slowPod.Name, slow.Name, pid)

	cap, err := c.Lab.StartCaptureFile(ctx, filepath.Join(c.Dir(), "uninstall.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	capStopped := false
	defer func() {
		if !capStopped {
			cap.Stop()
		}
	}()

	// Step 1, in the background: it returns when every agent pod is gone.
	type result struct {
		out string
		err error
		at  time.Time
	}
	step1 := make(chan result, 1)
	begin := time.Now()
	go func() {
		out, err := c.Kubectl(ctx, "-n", "wgmesh", "delete", "daemonset", "wgmesh", "--cascade=foreground")
		step1 <- result{out, err, time.Now()}
	}()
	// Step 2 as soon as the agents on the other nodes are gone.
	if err := lab.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		pods, err := c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh"})
		if err != nil {
			return false, nil
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName != slow.Name {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("agents on the other nodes never went away: %v", err)
	}
	if _, err := c.Admin.CoreV1().Pods("wgmesh").Get(ctx, slowPod.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("the slow agent %s is already gone (%v): nothing staged", slowPod.Name, err)
	}
	t.Logf("other agents gone %v after step 1 started; %s still terminating", time.Since(begin).Round(100*time.Millisecond), slowPod.Name)
	applied := time.Now()
	if out, err := c.Kubectl(ctx, "apply", "-k", udir); err != nil {
		t.Fatalf("step 2, kubectl apply -k %s: %v", udir, err)
	} else {
		t.Logf("kubectl apply -k wgmesh-uninstall:\n%s", out)
	}

	type pairKey struct{ from, to, ip string }
	cleaned := map[string]time.Time{}
	flowing := map[pairKey]time.Time{}
	// poll records cleanup completions and tries every pair of workers on
	// cleaned nodes that does not flow yet; done says when to stop.
	poll := func(done func() bool) error {
		// Generous for a loaded machine: a node's cleanup takes seconds,
		// the slow one's up to its agent's grace period plus the kubelet's
		// back-off.
		pctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()
		return lab.Poll(pctx, 500*time.Millisecond, func(ctx context.Context) (bool, error) {
			for node, at := range cleanupDone(ctx, c) {
				if _, ok := cleaned[node]; !ok {
					cleaned[node] = at
					t.Logf("cleanup on %s done %v after the apply", node, at.Sub(applied).Round(100*time.Millisecond))
				}
			}
			for _, from := range r.workers {
				for _, to := range r.workers {
					_, ca := cleaned[from.Spec.NodeName]
					_, cb := cleaned[to.Spec.NodeName]
					if from.Name == to.Name || !ca || !cb {
						continue
					}
					for _, ip := range to.Status.PodIPs {
						key := pairKey{from.Spec.NodeName, to.Spec.NodeName, ip.IP}
						if _, ok := flowing[key]; ok {
							continue
						}
						gctx, cancel := context.WithTimeout(ctx, 8*time.Second)
						url := "http://" + net.JoinHostPort(ip.IP, "8080") + "/"
						out, err := c.Kubectl(gctx, "exec", from.Name, "--", "/workload", "get", url)
						cancel()
						if err == nil && strings.HasPrefix(out, to.Name+" ") {
							flowing[key] = time.Now()
						}
					}
				}
			}
			return done(), nil
		})
	}
	pairsAmong := func(nodes map[string]bool) []pairKey {
		var keys []pairKey
		for _, from := range r.workers {
			for _, to := range r.workers {
				if from.Name != to.Name && nodes[from.Spec.NodeName] && nodes[to.Spec.NodeName] {
					for _, ip := range to.Status.PodIPs {
						keys = append(keys, pairKey{from.Spec.NodeName, to.Spec.NodeName, ip.IP})
					}
				}
			}
		}
		return keys
	}
	allFlow := func(keys []pairKey) bool {
		for _, k := range keys {
			if _, ok := flowing[k]; !ok {
				return false
			}
		}
		return true
	}

	// Staged: the nodes without the slow agent are cleaned and their pods
	// reach each other, while the slow node still refuses.
	others := map[string]bool{}
	for _, n := range c.Nodes[1:] {
		others[n.Name] = true
	}
	otherPairs := pairsAmong(others)
	if err := poll(func() bool { return allFlow(otherPairs) }); err != nil {
		out, _ := c.Kubectl(ctx, "-n", "wgmesh", "logs", "-l", "app.kubernetes.io/name=wgmesh-cleanup", "-c", "cleanup", "--tail=5", "--prefix")
		t.Logf("cleanup logs:\n%s", out)
		t.Fatalf("pods on the cleaned nodes %v never reached each other (cleaned: %v; flowing: %v): %v", others, cleaned, flowing, err)
	}
	if at, ok := cleanupDone(ctx, c)[slow.Name]; ok {
		t.Errorf("%s was cleaned %v after the apply, before the others' pods talked: nothing staged (its agent was to be still terminating)", slow.Name, at.Sub(applied))
	} else {
		t.Logf("pods on %v reach each other while %s is not cleaned yet (its agent still stopping)", keysOf(others), slow.Name)
		// Its init container refuses while the agent holds the instance
		// (the kubelet keeps only the latest attempt's log: read it now).
		var logs string
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := lab.Poll(rctx, time.Second, func(ctx context.Context) (bool, error) {
			pods, err := c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh-cleanup", FieldSelector: "spec.nodeName=" + slow.Name})
			if err != nil || len(pods.Items) != 1 {
				return false, nil
			}
			logs, _ = c.Kubectl(ctx, "-n", "wgmesh", "logs", pods.Items[0].Name, "-c", "cleanup")
			return strings.Contains(logs, "owned by a running wgmesh agent"), nil
		}); err != nil {
			t.Errorf("%s: no refusal in the cleanup's log while its agent was stopping: %v\n%s", slow.Name, err, logs)
		} else {
			t.Logf("%s: cleanup while its agent is stopping: %s", slow.Name, lastN(strings.TrimSpace(logs), 2))
		}
		// The refusing cleanup changed nothing on the slow node.
		if _, ok := cleanupDone(ctx, c)[slow.Name]; !ok {
			if tables, _ := slow.HostExec(ctx, "nft", "list", "tables"); !strings.Contains(tables, "wgmesh_"+clusterIface) {
				t.Errorf("%s: the refused cleanup removed the nftables table anyway:\n%s", slow.Name, tables)
			}
		}
	}

	// Step 3 (returns when every node is clean) while every pair of nodes
	// is probed, both families, until all flow.
	step3 := make(chan result, 1)
	go func() {
		out, err := c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh-cleanup", "--timeout=5m")
		step3 <- result{out, err, time.Now()}
	}()
	all := map[string]bool{}
	for _, n := range c.Nodes {
		all[n.Name] = true
	}
	allPairs := pairsAmong(all)
	if err := poll(func() bool { return allFlow(allPairs) }); err != nil {
		var missing []string
		for _, k := range allPairs {
			if _, ok := flowing[k]; !ok {
				missing = append(missing, fmt.Sprintf("%s→%s(%s)", k.from, k.to, k.ip))
			}
		}
		t.Errorf("pod traffic after the uninstall never came back for %v: %v", missing, err)
	}
	res3 := <-step3
	if res3.err != nil {
		r.dumpAgents(t, ctx)
		t.Fatalf("step 3, rollout status daemonset/wgmesh-cleanup: %v", res3.err)
	} else if !strings.Contains(res3.out, "successfully rolled out") {
		t.Errorf("step 3: rollout status says %q, want it done", res3.out)
	} else {
		t.Logf("step 3 returned %v after the apply: %s", res3.at.Sub(applied).Round(100*time.Millisecond), strings.TrimSpace(res3.out))
	}
	done := cleanupDone(ctx, c)
	for _, n := range c.Nodes {
		if at, ok := done[n.Name]; !ok || at.After(res3.at) {
			t.Errorf("rollout status returned (%v) before the cleanup on %s succeeded (%v, %v)", res3.at, n.Name, at, ok)
		}
	}
	// Every cleanup pod says what it removed; the slow node's init
	// container was retried by the kubelet.
	cpods, err := c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh-cleanup"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cpods.Items {
		logs, err := c.Kubectl(ctx, "-n", "wgmesh", "logs", p.Name, "-c", "cleanup")
		if err != nil || !strings.Contains(logs, "removed: private key") || !strings.Contains(logs, "removed: nftables table inet wgmesh_"+clusterIface) {
			t.Errorf("cleanup log on %s: %v, want the key and the nftables table removed:\n%s", p.Spec.NodeName, err, logs)
		}
		t.Logf("kubectl logs %s -c cleanup (%s):\n%s", p.Name, p.Spec.NodeName, strings.TrimSpace(logs))
		if p.Spec.NodeName == slow.Name {
			restarts := int32(0)
			if len(p.Status.InitContainerStatuses) > 0 {
				restarts = p.Status.InitContainerStatuses[0].RestartCount
			}
			t.Logf("%s: cleanup init container restarted %d times before it succeeded", slow.Name, restarts)
			if restarts < 1 {
				t.Errorf("%s: cleanup init container never restarted, want it refused while the agent was stopping and retried", slow.Name)
			}
		}
	}
	// The measured figure: from both ends' cleanup to their pods' traffic
	// (the first successful probe; cleanup times have the API's 1 s
	// resolution, probes run one after another).
	var worst time.Duration
	for _, k := range allPairs {
		ready := cleaned[k.from]
		if cleaned[k.to].After(ready) {
			ready = cleaned[k.to]
		}
		if flowing[k].IsZero() || ready.IsZero() {
			continue
		}
		d := flowing[k].Sub(ready)
		worst = max(worst, d)
		t.Logf("UNINSTALL pod on %s → pod on %s (%s): ends cleaned %.1f s and %.1f s after the apply; traffic flowing %.1f s after the later of the two",
			k.from, k.to, k.ip, cleaned[k.from].Sub(applied).Seconds(), cleaned[k.to].Sub(applied).Seconds(), d.Seconds())
	}
	t.Logf("UNINSTALL summary: every node cleaned within %.1f s of the apply (the slow one after its agent's grace period); pod traffic between two cleaned nodes flowing at most %.1f s after the later cleanup (probe time included)",
		maxCleaned(cleaned, applied).Seconds(), worst.Seconds())

	select {
	case res := <-step1:
		if res.err != nil {
			t.Errorf("step 1: %v", res.err)
		}
		t.Logf("step 1 (delete the agents, foreground) returned %v after it started: %s", res.at.Sub(begin).Round(100*time.Millisecond), strings.TrimSpace(res.out))
	case <-time.After(2 * time.Minute):
		t.Errorf("step 1 did not return 2 minutes after every node was clean")
	}

	// Steps 4 and 5.
	if out, err := c.Kubectl(ctx, "delete", "-k", udir); err != nil {
		t.Errorf("step 4, kubectl delete -k wgmesh-uninstall: %v", err)
	} else {
		t.Logf("step 4:\n%s", out)
	}
	if out, err := c.Kubectl(ctx, "delete", "-k", r.overlay, "--ignore-not-found"); err != nil {
		t.Errorf("step 5, kubectl delete -k %s --ignore-not-found: %v", r.overlay, err)
	} else {
		t.Logf("step 5:\n%s", out)
	}
	res, err := cap.Stop()
	capStopped = true
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uninstall: underlay capture: %v", res)
	if res.Plaintext == 0 {
		t.Errorf("no plaintext pod packet on the underlay after the uninstall: the pods' traffic did not take the plain routes")
	}

	// Nothing of wgmesh is left on any node ...
	for _, n := range c.Nodes {
		assertClusterNodeClean(t, ctx, c, n)
	}
	// ... nor in the API.
	if _, err := c.Admin.CoreV1().Namespaces().Get(ctx, "wgmesh", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace wgmesh after step 5: %v, want it gone", err)
	}
	for _, name := range []string{"wgmesh", "wgmesh-cleanup"} {
		if _, err := c.Admin.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRole %s after the uninstall: %v, want it gone", name, err)
		}
		if _, err := c.Admin.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRoleBinding %s after the uninstall: %v, want it gone", name, err)
		}
	}
	policies, err := c.Admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range policies.Items {
		if strings.HasPrefix(p.Name, "wgmesh") {
			t.Errorf("ValidatingAdmissionPolicy %s left after the uninstall", p.Name)
		}
	}
	bindings, err := c.Admin.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bindings.Items {
		if strings.HasPrefix(b.Name, "wgmesh") {
			t.Errorf("ValidatingAdmissionPolicyBinding %s left after the uninstall", b.Name)
		}
	}
}

// assertClusterNodeClean checks that nothing of wgmesh remains on n:
// interface, policy rules and routes of its tables, nftables tables
// inet wgmesh_*, UAPI socket, private key, Node annotations.
func assertClusterNodeClean(t *testing.T, ctx context.Context, c *cluster.Cluster, n *cluster.Node) {
	t.Helper()
	if out, err := n.HostExec(ctx, "ip", "link", "show", clusterIface); err == nil {
		t.Errorf("%s: interface %s still there:\n%s", n.Name, clusterIface, out)
	}
	for _, fam := range []string{"-4", "-6"} {
		rules, err := n.HostExec(ctx, "ip", fam, "rule")
		if err != nil {
			t.Errorf("%s: ip %s rule: %v", n.Name, fam, err)
		}
		for _, tbl := range []string{clusterTable, clusterHostTable} {
			if strings.Contains(rules, "lookup "+tbl) {
				t.Errorf("%s: rule to table %s still there:\n%s", n.Name, tbl, rules)
			}
			if routes, _ := n.HostExec(ctx, "ip", fam, "route", "show", "table", tbl); strings.TrimSpace(routes) != "" {
				t.Errorf("%s: table %s still has routes:\n%s", n.Name, tbl, routes)
			}
		}
	}
	tables, err := n.HostExec(ctx, "nft", "list", "tables")
	if err != nil {
		t.Errorf("%s: nft list tables: %v", n.Name, err)
	}
	if strings.Contains(tables, "wgmesh_") {
		t.Errorf("%s: an nftables table of wgmesh still there:\n%s", n.Name, tables)
	}
	if out, err := n.HostExec(ctx, "ls", "-A", "/run/wireguard"); err == nil && strings.TrimSpace(out) != "" {
		t.Errorf("%s: /run/wireguard still holds %s", n.Name, strings.TrimSpace(out))
	}
	key, err := n.HostPath("/var/lib/wgmesh/private.key")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(key); err == nil {
		t.Errorf("%s: private key %s still there", n.Name, key)
	}
	node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for key := range node.Annotations {
		if key == "wgmesh.io/public-key" || key == "wgmesh.io/endpoint" || key == "wgmesh.io/backend" {
			t.Errorf("%s: annotation %s still on the Node", n.Name, key)
		}
	}
}

// cleanupDone returns, by node, when the uninstall DaemonSet's init
// container finished successfully there.
func cleanupDone(ctx context.Context, c *cluster.Cluster) map[string]time.Time {
	done := map[string]time.Time{}
	pods, err := c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh-cleanup"})
	if err != nil {
		return done
	}
	for _, p := range pods.Items {
		for _, s := range p.Status.InitContainerStatuses {
			if s.Name == "cleanup" && s.State.Terminated != nil && s.State.Terminated.ExitCode == 0 {
				done[p.Spec.NodeName] = s.State.Terminated.FinishedAt.Time
			}
		}
	}
	return done
}

// containerPid finds the host pid of the wgmesh process in the pod's first
// container: the one whose cgroup path names the container's id.
func containerPid(p corev1.Pod) (int, error) {
	if len(p.Status.ContainerStatuses) == 0 {
		return 0, fmt.Errorf("pod %s: no container status", p.Name)
	}
	_, id, ok := strings.Cut(p.Status.ContainerStatuses[0].ContainerID, "://")
	if !ok || id == "" {
		return 0, fmt.Errorf("pod %s: container id %q", p.Name, p.Status.ContainerStatuses[0].ContainerID)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var pids []int
	for _, e := range procs {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(cg), id) {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(st)) == "wgmesh" {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		return 0, fmt.Errorf("pod %s: %d wgmesh processes in container %s, want 1", p.Name, len(pids), id)
	}
	return pids[0], nil
}

func maxCleaned(cleaned map[string]time.Time, since time.Time) time.Duration {
	var d time.Duration
	for _, at := range cleaned {
		d = max(d, at.Sub(since))
	}
	return d
}

func keysOf(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
