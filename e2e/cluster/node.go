package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Node is one Kubernetes node: a lab node namespace running containerd,
// kubelet and kube-proxy in a private mount namespace.
type Node struct {
	*lab.Node
	// Dir holds the node's configuration, logs, containerd state and the
	// directories bound over /var/lib and /var/log inside the node.
	Dir string
	// CgroupRoot is kubelet's cgroupRoot ("/<namespace name>"), present in
	// every cgroup v1 hierarchy.
	CgroupRoot string
	// Socket is containerd's gRPC socket.
	Socket string

	c    *Cluster
	cmd  *exec.Cmd
	done chan struct{}
}

// hostSysctls are the host-wide files kubelet writes when
// protectKernelDefaults is off; each node gets a private copy bound over
// them, so the host's values stay as they are.
var hostSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// nodeScript runs as PID 1's stand-in of a node: in the node's network
// namespace (nsenter) and a fresh private mount namespace (unshare).
var nodeScript = template.Must(template.New("node").Parse(`set -eu
D={{.Dir}}
# A fresh sysfs shows this network namespace's interfaces (CNI and kubelet
# read them); the cgroup mounts are carried over it.
mkdir -p $D/mnt/cgroup
mount --rbind /sys/fs/cgroup $D/mnt/cgroup
mount -t sysfs sysfs /sys
mount --rbind $D/mnt/cgroup /sys/fs/cgroup
umount -l $D/mnt/cgroup
# Per-node /run (containerd shims, CNI netns handles, wireguard sockets),
# /var/lib (kubelet, CNI IPAM, hostPath volumes) and /var/log (pod logs).
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p $D/varlib $D/varlog $D/sysctl
mount --bind $D/varlib /var/lib
mount --bind $D/varlog /var/log
for f in {{.Sysctls}}; do
  c=$D/sysctl/$(echo $f | tr / _)
  cat /proc/sys/$f > $c
  mount --bind $c /proc/sys/$f
done
containerd --config $D/containerd.toml >>$D/containerd.log 2>&1 &
while [ ! -e $D/start-kubelet ]; do sleep 0.2; done
# kubelet restarts when it ends (Node.RestartKubelet kills it), but not
# while $D/hold-kubelet exists: a node can be taken out and re-joined.
(
  while :; do
    while [ -e $D/hold-kubelet ]; do sleep 0.2; done
    {{.Bin}}/kubelet --config=$D/kubelet.yaml --kubeconfig=$D/kubelet.kubeconfig \
      --hostname-override={{.Name}} --node-ip={{.IP}} --v=1 >>$D/kubelet.log 2>&1 &
    echo $! > $D/kubelet.pid
    wait $! || true
    sleep 0.5
  done
) &
{{.Bin}}/kube-proxy --config=$D/kube-proxy.yaml --v=1 >>$D/kube-proxy.log 2>&1 &
wait
`))

var containerdConfig = template.Must(template.New("containerd").Parse(`version = 2
root = "{{.Dir}}/containerd/root"
state = "{{.Dir}}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.Pause}}"
  # runc cannot set oom_score_adj below the parent's without
  # CAP_SYS_RESOURCE, which this kind of VM lacks.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.CNIBin}}"
    conf_dir = "{{.Dir}}/cni"
    conf_template = "{{.Dir}}/cni-template.json"
`))

// cniTemplate is containerd's conf_template: bridge + host-local on the
// node's podCIDRs (both families), routes for both defaults, MTU left for
// WireGuard's overhead like the lab's hand-made pods.
const cniTemplate = `{
  "cniVersion": "0.4.0",
  "name": "lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "mtu": 1420,
      "ipam": {
        "type": "host-local",
        "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}],
        "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]
      }
    }
  ]
}
`

var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {{.IP}}
readOnlyPort: 0
# The lab's API server reaches kubelets (logs, exec) without a client
# certificate; nothing outside the lab can route here.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: {{.CgroupRoot}}
failSwapOn: false
containerRuntimeEndpoint: unix://{{.Socket}}
clusterDomain: cluster.local
resolvConf: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
nodeStatusReportFrequency: 10s
`))

var proxyConfig = template.Must(template.New("proxy").Parse(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {{.Dir}}/kube-proxy.kubeconfig
hostnameOverride: {{.Name}}
mode: nftables
clusterCIDR: {{.ClusterCIDRs}}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Conntrack limits are host-wide sysctls: leave them alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`))

type nodeParams struct {
	Dir, Socket, Name, IP, Bin, Pause, CNIBin, CgroupRoot, Sysctls, ClusterCIDRs string
}

// startNode writes the node's configuration and starts its containerd; the
// kubelet and kube-proxy wait until release is called (images first).
func (c *Cluster) startNode(ctx context.Context, ln *lab.Node) (*Node, error) {
	n := &Node{Node: ln, c: c, Dir: filepath.Join(ln.Dir, "k8s"), CgroupRoot: "/" + ln.NS, done: make(chan struct{})}
	n.Socket = filepath.Join(n.Dir, "containerd.sock")
	if err := os.MkdirAll(n.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: node %s: %w", ln.Name, err)
	}
	p := nodeParams{
		Dir: n.Dir, Socket: n.Socket, Name: ln.Name, IP: ln.Underlay.String(), Bin: c.binDir,
		Pause: PauseImage, CNIBin: cniBinDir, CgroupRoot: n.CgroupRoot,
		Sysctls: strings.Join(hostSysctls, " "), ClusterCIDRs: ClusterCIDRs,
	}
	files := map[string]*template.Template{"node.sh": nodeScript, "containerd.toml": containerdConfig, "kubelet.yaml": kubeletConfig, "kube-proxy.yaml": proxyConfig}
	for name, t := range files {
		var b bytes.Buffer
		if err := t.Execute(&b, p); err != nil {
			return nil, fmt.Errorf("cluster: node %s: %s: %w", ln.Name, name, err)
		}
		if err := os.WriteFile(filepath.Join(n.Dir, name), b.Bytes(), 0o600); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(n.Dir, "cni-template.json"), []byte(cniTemplate), 0o600); err != nil {
		return nil, err
	}
	for _, kc := range []struct {
		file string
		id   apiserver.Identity
	}{
		{"kubelet.kubeconfig", apiserver.Identity{User: "system:node:" + ln.Name, Groups: []string{"system:nodes"}}},
		{"kube-proxy.kubeconfig", apiserver.Identity{User: "system:kube-proxy"}},
	} {
		path, err := c.API.Kubeconfig(kc.id)
		if err != nil {
			return nil, err
		}
		if err := copyFile(path, filepath.Join(n.Dir, kc.file)); err != nil {
			return nil, err
		}
	}
	// A real node has a default route: Service addresses are reached
	// through it (kube-proxy's DNAT does the rest) and agents find their
	// underlay interface by it. The control-plane namespace is the lab's
	// "router"; it forwards nothing.
	if out, err := exec.CommandContext(ctx, "ip", "-n", ln.NS, "route", "replace", "default", "via", c.Lab.CP.Addr.String(), "dev", "eth0").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cluster: node %s: default route: %w: %s", ln.Name, err, out)
	}
	// The lab's control plane sits outside the pod network, like a managed
	// one: pods reach it (the kubernetes Service) masqueraded, as CNIs do
	// for destinations outside the cluster. Only that one address: every
	// other pod packet keeps its pod source, so plaintext stays visible.
	rule := fmt.Sprintf("table ip wgmcl_lab { chain postrouting { type nat hook postrouting priority srcnat + 10; policy accept; ip saddr 10.244.0.0/16 ip daddr %s masquerade; }; }", c.Lab.CP.Addr)
	nft := exec.CommandContext(ctx, "ip", "netns", "exec", ln.NS, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(rule)
	if out, err := nft.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cluster: node %s: masquerade to the control plane: %w: %s", ln.Name, err, out)
	}
	if err := createCgroupRoot(ln.NS); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.cgroups = append(c.cgroups, ln.NS)
	c.mu.Unlock()

	n.cmd = exec.Command("nsenter", "--net=/var/run/netns/"+ln.NS, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"bash", filepath.Join(n.Dir, "node.sh"))
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.OpenFile(filepath.Join(n.Dir, "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("cluster: node %s: start: %w", ln.Name, err)
	}
	go func() { n.cmd.Wait(); logf.Close(); close(n.done) }()
	c.logf("node %s: containerd starting (%s)", ln.Name, n.Dir)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(n.Socket); err == nil {
			break
		}
		select {
		case <-n.done:
			return n, fmt.Errorf("cluster: node %s exited during start-up:\n%s\ncontainerd:\n%s", ln.Name, n.LogTail("node.log"), n.LogTail("containerd.log"))
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("cluster: node %s: containerd socket not ready after 2m:\n%s", ln.Name, n.LogTail("containerd.log"))
		}
	}
	return n, nil
}

// release starts the node's kubelet and kube-proxy.
func (n *Node) release() error {
	return os.WriteFile(filepath.Join(n.Dir, "start-kubelet"), nil, 0o600)
}

// StopKubelet kills the node's kubelet and keeps it stopped until
// StartKubelet; containerd and the running containers stay, as on a real
// node whose kubelet is down.
func (n *Node) StopKubelet() error {
	if err := os.WriteFile(filepath.Join(n.Dir, "hold-kubelet"), nil, 0o600); err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(n.Dir, "kubelet.pid"))
	if err != nil {
		return fmt.Errorf("cluster: node %s: kubelet pid: %w", n.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("cluster: node %s: kubelet pid %q", n.Name, b)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	return nil
}

// StartKubelet lets the node's kubelet run again (it registers its Node if
// the object is gone).
func (n *Node) StartKubelet() error {
	return os.Remove(filepath.Join(n.Dir, "hold-kubelet"))
}

// ForgetPodNetwork removes the CNI configuration containerd generated from
// the node's pod CIDR, host-local's address records and the cni0 bridge
// with the old gateway address, as on a reinstalled
// machine: containerd writes the configuration only when none exists, so a
// node that re-joins with a new pod CIDR would otherwise keep handing out
// addresses from its old one. Call it while the kubelet is stopped.
func (n *Node) ForgetPodNetwork() error {
	confs, err := filepath.Glob(filepath.Join(n.Dir, "cni", "*"))
	if err != nil {
		return err
	}
	for _, f := range confs {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(filepath.Join(n.Dir, "varlib", "cni")); err != nil {
		return err
	}
	// The bridge plugin refuses a cni0 that still holds the old gateway.
	if out, err := exec.Command("ip", "-n", n.NS, "link", "del", "cni0").CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		return fmt.Errorf("cluster: node %s: remove cni0: %w: %s", n.Name, err, out)
	}
	return nil
}

// HostPath is path as the node's containers see it under /var/lib (the
// node's own /var/lib is a directory of the lab), e.g.
// HostPath("/var/lib/wgmesh").
func (n *Node) HostPath(path string) (string, error) {
	rel, ok := strings.CutPrefix(path, "/var/lib/")
	if !ok || strings.Contains(rel, "..") {
		return "", fmt.Errorf("cluster: node %s: %s is not under /var/lib", n.Name, path)
	}
	return filepath.Join(n.Dir, "varlib", rel), nil
}

// LoadImage imports a docker-archive tarball into the node's containerd
// (namespace k8s.io, where kubelet's images live).
func (n *Node) LoadImage(ctx context.Context, tarball string) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", n.Socket, "-n", "k8s.io", "images", "import", tarball).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cluster: node %s: ctr images import %s: %w: %s", n.Name, tarball, err, out)
	}
	return nil
}

// LogTail returns the last 30 lines of one of the node's logs:
// "kubelet.log", "containerd.log", "kube-proxy.log" or "node.log".
func (n *Node) LogTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, name))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// stop kills the node's script and everything it started (kubelet,
// kube-proxy, containerd) by process group, then the pods by cgroup.
func (n *Node) stop() {
	if n.cmd != nil && n.cmd.Process != nil {
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
		}
	}
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}

// HostExec runs cmd as a process on the node's host would run: in the
// node's network namespace and its private mount namespace (its own /run,
// /var/lib, /var/log), and returns the combined output.
func (n *Node) HostExec(ctx context.Context, cmd ...string) (string, error) {
	if n.cmd == nil || n.cmd.Process == nil {
		return "", fmt.Errorf("cluster: node %s not started", n.Name)
	}
	// nsenter and unshare exec without forking, so the node script's pid
	// lives in the node's mount namespace.
	args := append([]string{"-t", strconv.Itoa(n.cmd.Process.Pid), "-m", "-n", "--"}, cmd...)
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("cluster: node %s: %s: %w: %s", n.Name, strings.Join(cmd, " "), err, out)
	}
	return string(out), nil
}
