// Package cluster runs a real Kubernetes cluster inside the e2e lab: the lab's
// node namespaces become nodes with containerd, runc, CNI (bridge +
// host-local on the podCIDR the controller manager assigns), kubelet and
// kube-proxy (nftables mode), and the lab's control-plane namespace runs
// kube-apiserver, kube-controller-manager and kube-scheduler — all from the
// e2e module's Kubernetes build (apiserver.Build). Images are built in Go
// (package images) and imported into every node's containerd.
//
// Each node runs in its own network namespace (the lab's) and its own
// private mount namespace with per-node /run, /var/lib and /var/log, private
// copies of the host-wide sysctls kubelet writes, and a kubelet cgroupRoot
// named after the node's namespace. Everything carries the lab's name
// (prefix-pid-id), so RemoveStale finds what a killed run left behind.
//
// Addresses: nodes 198.18.0.(10+k) on the lab switch, API server
// 198.18.0.2:6443, pods from 10.244.0.0/16 and fd00:10:244::/48, services
// 10.96.0.0/16. Nothing is dialled from the host's own network namespace.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/images"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// Prefix starts the names of every namespace, cgroup and directory a cluster
// lab creates, unless Options.Prefix says otherwise.
const Prefix = "wgmcl"

// Image references the lab builds and imports into every node. The agent
// image's repository is the base's placeholder, deploy.Image; the tag is
// chosen per install.
const (
	PauseImage    = "lab.invalid/pause:1"
	WorkloadImage = "lab.invalid/workload:1"
)

// Cluster-wide ranges, as the controller manager, kube-proxy and the API
// server are configured.
const (
	ClusterCIDRs = "10.244.0.0/16,fd00:10:244::/48"
	ServiceCIDR  = "10.96.0.0/16"
	APIPort      = 6443
)

// cniBinDir is where Debian's containernetworking-plugins installs.
const cniBinDir = "/usr/lib/cni"

// Options describe a cluster; the zero value is 3 nodes.
type Options struct {
	// Nodes is the number of nodes; 3 when zero.
	Nodes int
	// Prefix starts every name the cluster creates (as lab.Options.Prefix);
	// Prefix when empty. Leftovers of dead processes with it are removed
	// first.
	Prefix string
	// Wgmesh is the agent binary the wgmesh image is built from.
	Wgmesh string
	// BinDir holds the Kubernetes binaries (apiserver.Build); empty: Build.
	BinDir string
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
}

// Cluster is a running cluster lab. Create it with New; always Close it.
type Cluster struct {
	Lab   *lab.Lab
	API   *apiserver.Server
	Nodes []*Node
	// Admin is a client authenticated as the cluster admin.
	Admin kubernetes.Interface
	// AdminConfig is Admin's configuration (dials inside the lab).
	AdminConfig *rest.Config
	// AdminKubeconfig is a kubeconfig file for the real kubectl.
	AdminKubeconfig string
	// Workload is the test-workload image (WorkloadImage), loaded on every node.
	Workload *images.Image

	opts    Options
	binDir  string
	dir     string
	logf    func(string, ...any)
	mu      sync.Mutex
	procs   []*exec.Cmd
	cgroups []string
	closed  bool
}

// New builds the lab, starts the control plane and the nodes, loads the
// pause and workload images, and returns when every node is Ready with a
// pod CIDR. On error everything started is removed again.
func New(ctx context.Context, o Options) (_ *Cluster, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster: needs root (network, mount namespaces, cgroups)")
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Prefix == "" {
		o.Prefix = Prefix
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nsenter", "unshare", "nft", filepath.Join(cniBinDir, "bridge"), filepath.Join(cniBinDir, "host-local")} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("cluster: %s not found (install containerd runc containernetworking-plugins nftables util-linux): %w", tool, err)
		}
	}
	if _, err := RemoveStale(o.Prefix); err != nil {
		o.Logf("cluster: removing stale labs: %v", err)
	}
	c := &Cluster{opts: o, logf: o.Logf}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.binDir = o.BinDir; c.binDir == "" {
		begin := time.Now()
		if c.binDir, err = apiserver.Build(ctx); err != nil {
			return nil, err
		}
		c.logf("Kubernetes binaries ready after %v: %s", time.Since(begin).Round(time.Second), c.binDir)
	}
	if c.Lab, err = lab.New(ctx, lab.Options{Prefix: o.Prefix, Nodes: o.Nodes, NoPods: true, NoPlainRoutes: true, ControlPlane: true, Wgmesh: o.Wgmesh, Logf: o.Logf}); err != nil {
		return nil, err
	}
	c.dir = c.Lab.Dir()
	// The pause and workload images build (go build) while the control
	// plane starts; New waits for them before it returns, error or not.
	imgDir := filepath.Join(c.dir, "images")
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return nil, err
	}
	var pause *images.Image
	var imgErr error
	var building sync.WaitGroup
	building.Go(func() {
		begin := time.Now()
		if pause, imgErr = images.Pause(ctx, imgDir, PauseImage); imgErr == nil {
			c.Workload, imgErr = images.Workload(ctx, imgDir, WorkloadImage)
		}
		c.logf("pause and workload images built in %v", time.Since(begin).Round(100*time.Millisecond))
	})
	defer building.Wait()
	if c.API, err = apiserver.Start(ctx, apiserver.Options{
		Dir: c.dir, BinDir: c.binDir, NetNS: c.Lab.CP.NS, BindAddress: c.Lab.CP.Addr, Port: APIPort,
		ExtraArgs: []string{
			// Nodes are known by their underlay address only.
			"--kubelet-preferred-address-types=InternalIP",
			// kube-proxy needs the kubernetes Service's endpoints.
			"--endpoint-reconciler-type=lease",
		},
	}); err != nil {
		return nil, err
	}
	if c.AdminConfig, err = c.API.RESTConfig(apiserver.Admin); err != nil {
		return nil, err
	}
	if c.Admin, err = kubernetes.NewForConfig(c.AdminConfig); err != nil {
		return nil, err
	}
	if c.AdminKubeconfig, err = c.API.Kubeconfig(apiserver.Admin); err != nil {
		return nil, err
	}
	if err := c.startControllers(); err != nil {
		return nil, err
	}
	// What kubeadm would leave: the agent reads the pod range from here.
	if _, err := c.Admin.CoreV1().ConfigMaps("kube-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config"},
		Data:       map[string]string{"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: " + ClusterCIDRs + "\n  serviceSubnet: " + ServiceCIDR + "\n"},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("cluster: kubeadm-config: %w", err)
	}

	// Nodes are independent: start them, load the images and release
	// their kubelets all at once.
	nodes := make([]*Node, len(c.Lab.Nodes))
	err = eachOf(c.Lab.Nodes, func(i int, ln *lab.Node) error {
		var err error
		nodes[i], err = c.startNode(ctx, ln)
		return err
	})
	for _, n := range nodes {
		if n != nil {
			c.Nodes = append(c.Nodes, n)
		}
	}
	if err != nil {
		return nil, err
	}
	building.Wait()
	if imgErr != nil {
		return nil, imgErr
	}
	begin := time.Now()
	if err := eachOf(c.Nodes, func(_ int, n *Node) error {
		for _, img := range []string{pause.Tarball, c.Workload.Tarball} {
			if err := n.LoadImage(ctx, img); err != nil {
				return err
			}
		}
		return n.release()
	}); err != nil {
		return nil, err
	}
	c.logf("pause and workload images loaded on %d nodes in %v", len(c.Nodes), time.Since(begin).Round(100*time.Millisecond))
	if err := c.WaitNodesReady(ctx); err != nil {
		return nil, err
	}
	if err := c.AddPlainRoutes(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// startControllers runs kube-controller-manager and kube-scheduler in the
// control-plane namespace.
func (c *Cluster) startControllers() error {
	cm, err := c.API.Kubeconfig(apiserver.Identity{User: "system:kube-controller-manager"})
	if err != nil {
		return err
	}
	sched, err := c.API.Kubeconfig(apiserver.Identity{User: "system:kube-scheduler"})
	if err != nil {
		return err
	}
	if err := c.spawn("kube-controller-manager",
		"--kubeconfig="+cm,
		"--authentication-kubeconfig="+cm, "--authorization-kubeconfig="+cm,
		"--bind-address=127.0.0.1", "--secure-port=10257",
		"--use-service-account-credentials",
		"--service-account-private-key-file="+c.API.ServiceAccountKeyFile(),
		"--root-ca-file="+c.API.CAFile(),
		"--allocate-node-cidrs", "--cluster-cidr="+ClusterCIDRs,
		"--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--controllers=*,-csrsigning,-csrapproving,-csrcleaner",
		"--leader-elect=false", "--v=1",
	); err != nil {
		return err
	}
	return c.spawn("kube-scheduler",
		"--kubeconfig="+sched,
		"--authentication-kubeconfig="+sched, "--authorization-kubeconfig="+sched,
		"--bind-address=127.0.0.1", "--secure-port=10259",
		"--leader-elect=false", "--v=1",
	)
}

func (c *Cluster) spawn(name string, args ...string) error {
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + c.Lab.CP.NS, "--", filepath.Join(c.binDir, name)}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	f, err := os.OpenFile(filepath.Join(c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("cluster: start %s: %w", name, err)
	}
	go func() { cmd.Wait(); f.Close() }()
	c.mu.Lock()
	c.procs = append(c.procs, cmd)
	c.mu.Unlock()
	return nil
}

// WaitNodesReady waits for every node to be Ready with its pod CIDRs and
// logs how long that took.
func (c *Cluster) WaitNodesReady(ctx context.Context) error {
	begin := time.Now()
	err := lab.Poll(ctx, 500*time.Millisecond, func(ctx context.Context) (bool, error) {
		for _, n := range c.Nodes {
			node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil || len(node.Spec.PodCIDRs) == 0 || !nodeReady(node) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		var b strings.Builder
		for _, n := range c.Nodes {
			fmt.Fprintf(&b, "--- %s kubelet.log:\n%s\n", n.Name, n.LogTail("kubelet.log"))
		}
		return fmt.Errorf("cluster: nodes not Ready: %w\n%s", err, b.String())
	}
	c.logf("%d nodes Ready with pod CIDRs after %v", len(c.Nodes), time.Since(begin).Round(time.Second))
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// AddPlainRoutes gives every node host-gw routes to the other nodes' pod
// CIDRs, as a plain (unencrypted) cluster network would have: pod traffic
// flows without wgmesh, and whatever wgmesh fails to divert shows up as
// plaintext on the lab's capture rather than as silence.
//
// Call it again after a node re-joined with a new pod CIDR.
func (c *Cluster) AddPlainRoutes(ctx context.Context) error {
	cidrs := map[string][]string{}
	for _, n := range c.Nodes {
		node, err := c.Admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cidrs[n.Name] = node.Spec.PodCIDRs
	}
	for _, n := range c.Nodes {
		for _, m := range c.Nodes {
			if m == n {
				continue
			}
			for _, cidr := range cidrs[m.Name] {
				p, err := netip.ParsePrefix(cidr)
				if err != nil {
					return fmt.Errorf("cluster: node %s podCIDR %q: %w", m.Name, cidr, err)
				}
				via := m.Underlay.String()
				if p.Addr().Is6() {
					via = m.LinkLocal.String()
				}
				if out, err := exec.CommandContext(ctx, "ip", "-n", n.NS, "route", "replace", cidr, "via", via, "dev", "eth0").CombinedOutput(); err != nil {
					return fmt.Errorf("cluster: node %s: route %s via %s: %w: %s", n.Name, cidr, via, err, out)
				}
			}
		}
	}
	return nil
}

// Kubectl runs the real kubectl as the cluster admin, inside the lab's
// control-plane namespace, and returns its standard output; standard error
// (kubectl's own log lines, e.g. of exec's websocket streams) goes into the
// error only.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := c.KubectlCmd(ctx, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// KubectlCmd is Kubectl as an unstarted command, for long-running
// invocations whose output the caller streams (kubectl exec of a probe).
func (c *Cluster) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--net=/var/run/netns/" + c.Lab.CP.NS, "--", filepath.Join(c.binDir, apiserver.KubectlBinary), "--kubeconfig=" + c.AdminKubeconfig}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// LoadImage imports a docker-archive tarball into every node, all at once.
func (c *Cluster) LoadImage(ctx context.Context, tarball string) error {
	return eachOf(c.Nodes, func(_ int, n *Node) error { return n.LoadImage(ctx, tarball) })
}

// eachOf runs fn on every item at once and joins the errors: the nodes are
// independent, and a loop would multiply each wait (a containerd start, an
// image import) by the number of nodes.
func eachOf[T any](items []T, fn func(int, T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Go(func() { errs[i] = fn(i, it) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Dir is the cluster's working directory (the lab's).
func (c *Cluster) Dir() string { return c.dir }

// BinDir holds the Kubernetes binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// Close stops the nodes (scripts, kubelets, containerd, then the pods by
// cgroup), the controllers and the API server, and removes the lab. It is
// safe to call more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := append([]*exec.Cmd(nil), c.procs...)
	cgroups := append([]string(nil), c.cgroups...)
	c.mu.Unlock()
	var errs []error
	for _, n := range c.Nodes {
		n.stop()
	}
	for _, cg := range cgroups {
		if err := removeCgroupRoot(cg); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if p.Process != nil {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
	}
	if c.API != nil {
		if err := c.API.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Lab != nil {
		if err := c.Lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveStale removes what killed cluster labs with prefix (Prefix when
// empty) left: their namespaces and
// every process in them (lab.RemoveStale), their kubelet cgroup roots with
// the pods inside, and their temporary directories. Labs of live processes
// are left alone. It returns the namespaces removed.
func RemoveStale(prefix string) ([]string, error) {
	if prefix == "" {
		prefix = Prefix
	}
	// Node processes first (kubelet, containerd, shims: all in the node
	// namespaces), so no kubelet re-creates the cgroups being removed;
	// then the pods, whose cgroups are the only handle on processes in pod
	// network namespaces.
	var errs []error
	removed, err := lab.RemoveStale(prefix)
	if err != nil {
		errs = append(errs, err)
	}
	if mounts, err := cgroupMounts(); err == nil {
		entries, _ := os.ReadDir(mounts[0])
		for _, e := range entries {
			if pid, ok := stalePid(prefix, e.Name()); ok && !alive(pid) {
				if err := removeCgroupRoot(e.Name()); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	entries, _ := os.ReadDir(os.TempDir())
	for _, e := range entries {
		if pid, ok := stalePid(prefix, e.Name()); ok && !alive(pid) && e.IsDir() {
			if err := os.RemoveAll(filepath.Join(os.TempDir(), e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// stalePid parses "<prefix>-<pid>-..." names.
func stalePid(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0, false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
