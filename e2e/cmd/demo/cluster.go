package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/wgmesh/wgmesh/e2e/cluster"
)

// runCluster is `demo --k8s`: a real cluster in the lab (kubelet,
// containerd, CNI, kube-proxy, controller manager, scheduler), wgmesh
// installed as README tells users (a kustomize overlay, kubectl apply -k),
// pods on different nodes talking, and what crossed the wire.
func (d *demo) runCluster(ctx context.Context) (err error) {
	d.total = 7
	fmt.Fprintf(d.out, "wgmesh demo on Kubernetes: %d real nodes (kubelet + containerd + CNI + kube-proxy) on one virtual switch.\n", d.o.Nodes)
	fmt.Fprintf(d.out, "Goal: install wgmesh as a user would; pods on different nodes talk; not one pod packet crosses the switch unencrypted.\n")

	d.header("Starting the control plane and %d nodes", d.o.Nodes)
	d.say("the first run compiles kube-apiserver, kubelet, kube-proxy, controller manager, scheduler and kubectl (minutes);")
	d.say("later runs reuse the build. Leftovers of killed runs are removed first.")
	t0 := time.Now()
	c, err := cluster.New(ctx, cluster.Options{Nodes: d.o.Nodes, Wgmesh: d.o.Wgmesh, Prefix: d.o.Prefix})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintf(d.out, "\nCleaning up: nodes, pods, control plane, namespaces.\n")
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	d.say("cluster up after %s; API server at %s", time.Since(t0).Round(100*time.Millisecond), c.API.URL())
	out, err := c.Kubectl(ctx, "get", "nodes", "-o", "custom-columns=NODE:.metadata.name,STATUS:.status.conditions[-1].type,ADDRESS:.status.addresses[0].address,POD-CIDRS:.spec.podCIDRs,KUBELET:.status.nodeInfo.kubeletVersion")
	if err != nil {
		return err
	}
	d.table(out)
	d.say("each node already routes the other nodes' pod networks over the switch in plaintext (host-gw);")
	d.say("wgmesh must move that traffic into WireGuard.")

	d.header("Recording every packet on the switch with tcpdump")
	capt, err := c.Lab.StartCapture(ctx)
	if err != nil {
		return err
	}
	d.say("writing %s", capt.Path)

	d.header("Building the agent image from bin/wgmesh and loading it on every node (no registry)")
	img, err := c.BuildAgentImage(ctx, "demo")
	if err != nil {
		return err
	}
	d.say("%s, laid out as deploy/Dockerfile says", img.Ref)

	d.header("Installing wgmesh as README says: a kustomize overlay, the namespace, a server-side dry run, kubectl apply -k")
	t1 := time.Now()
	overlay, out, err := c.Install(ctx, "demo")
	if err != nil {
		return err
	}
	k, err := os.ReadFile(filepath.Join(overlay, "kustomization.yaml"))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(k)), "\n") {
		d.say("| %s", line)
	}
	d.table(out)
	_, err = c.Kubectl(ctx, "-n", "wgmesh", "rollout", "status", "daemonset/wgmesh", "--timeout=5m")
	d.check(err == nil, "DaemonSet rolled out on every node after %s%s", time.Since(t1).Round(100*time.Millisecond), errSuffix(err))
	if out, err := c.Kubectl(ctx, "-n", "wgmesh", "get", "pods", "-o", "wide"); err == nil {
		d.table(out)
	}
	node1 := c.Nodes[0].Name
	var ann map[string]string
	for range 60 {
		n, err := c.Admin.CoreV1().Nodes().Get(ctx, node1, metav1.GetOptions{})
		if err == nil && n.Annotations["wgmesh.io/public-key"] != "" {
			ann = n.Annotations
			break
		}
		time.Sleep(time.Second)
	}
	var keys []string
	for k := range ann {
		if strings.HasPrefix(k, "wgmesh.io/") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		d.say("Node %s annotation %s: %s", node1, k, ann[k])
	}
	d.check(ann["wgmesh.io/public-key"] != "", "%s's agent published its public key on its own Node, with its pod's service account token", node1)

	d.header("Running a Deployment with one pod per node; every pod fetches from every other, IPv4 and IPv6")
	pods, err := c.DeployWorkers(ctx, "hello")
	if err != nil {
		return err
	}
	for _, p := range pods {
		var ips []string
		for _, ip := range p.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		d.say("%-6s pod %s  %s", p.Spec.NodeName, p.Name, strings.Join(ips, ", "))
	}
	for _, from := range pods {
		for _, to := range pods {
			if from.Name == to.Name {
				continue
			}
			for _, ip := range to.Status.PodIPs {
				url := "http://" + net.JoinHostPort(ip.IP, fmt.Sprint(cluster.WorkerPort)) + "/"
				out, err := c.Kubectl(ctx, "exec", from.Name, "--", "/workload", "get", url)
				d.check(err == nil && strings.HasPrefix(out, to.Name+" "), "%s pod → %s pod at %-24s %s%s", from.Spec.NodeName, to.Spec.NodeName, ip.IP, strings.TrimSpace(out), errSuffix(err))
			}
		}
	}

	d.header("What an operator sees: kubectl exec … wgmesh status on %s", node1)
	agents, err := c.AgentPods(ctx)
	if err != nil {
		return err
	}
	status, err := c.Kubectl(ctx, "-n", "wgmesh", "exec", agents[node1].Name, "--", "wgmesh", "status")
	d.check(err == nil, "kubectl exec %s -- wgmesh status%s", agents[node1].Name, errSuffix(err))
	for _, line := range strings.Split(strings.TrimRight(status, "\n"), "\n") {
		d.say("| %s", line)
	}

	if err := d.wire(capt); err != nil {
		return err
	}
	return d.verdict(func() {
		for _, n := range c.Nodes {
			fmt.Fprintf(d.out, "\nkubelet log of %s (last lines):\n%s\n", n.Name, n.LogTail("kubelet.log"))
		}
	})
}

// table prints command output indented, one line each.
func (d *demo) table(out string) {
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("%s", line)
	}
}
