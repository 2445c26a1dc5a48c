package main

import (
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/routing"
)

// Defaults of the agent flags that no other package owns.
const (
	// defaultListenPort is the UDP port of the WireGuard interface. Not
	// WireGuard's customary 51820: Calico (IPv4; 51821 for IPv6), Flannel
	// (51820, 51821 for IPv6), Kilo and Talos' KubeSpan default to it, and
	// a Calico release in eBPF mode drops UDP 51820 from hosts it does not
	// know, so a node running one of them next to wgmesh would either
	// refuse to start (the port is taken, instance.Check) or lose the
	// mesh's handshakes. 51822 is the first port after the 51820-51821
	// pair they use; Cilium uses 51871. README, "Running next to other software", lists
	// them. mesh/kube.DefaultListenPort must agree (a test checks).
	defaultListenPort = 51822
	// maxKeepalive is the largest persistent keepalive WireGuard accepts
	// (a 16-bit number of seconds).
	maxKeepalive = 65535 * time.Second
	// maxNodeName is the longest Kubernetes object name (DNS subdomain).
	maxNodeName = 253
)

// agentFlags are the raw values of `wgmesh agent`'s flags, exactly as typed.
// validate turns them into an agentConfig.
type agentFlags struct {
	nodeName         string
	kubeconfig       string
	peersFile        string
	iface            string
	backend          string
	offloads         bool
	inflightPackets  int
	listenPort       int
	endpoint         string
	keyFile          string
	mtu              int
	hostEncryption   bool
	allowUnencrypted bool
	ipv4, ipv6       bool
	keepalive        string
	routeTable       int64
	hostRouteTable   int64
	rulePriority     int
	fwmark           string
	tunnelAddress    string
	unmanagedNodes   string
	clusterCIDRs     string
	metricsAddr      string
}

// sourceKind says where the agent learns the other nodes from.
type sourceKind string

const (
	sourceKubeconfig sourceKind = "kubeconfig"
	sourceInCluster  sourceKind = "in-cluster"
	sourcePeersFile  sourceKind = "peers-file"
)

// agentConfig is the validated agent configuration.
type agentConfig struct {
	NodeName   string
	Source     sourceKind
	Kubeconfig string
	PeersFile  string
	Interface  string
	Backend    device.Choice
	// DisableOffloads opens the userspace TUN without TSO/GRO.
	DisableOffloads bool
	// InflightPackets bounds the packets the userspace data path holds
	// per direction (device.Options.InflightPackets); 0: no bound.
	InflightPackets int
	ListenPort      int
	// Endpoint overrides the published endpoint; zero lets the source choose.
	Endpoint    netip.AddrPort
	KeyFile     string
	MTU         int
	Table       int
	HostTable   int
	Priority    int
	FwMark      uint32
	MetricsAddr string
	// Derive carries host encryption, families, keepalive, tunnel address
	// and the unmanaged-node selector. KeepOutside stays empty: what the
	// source learns at start (the API server's addresses) is added in
	// runAgent, which never changes agentConfig.
	Derive mesh.Options
	// Unmanaged is the parsed --unmanaged-nodes selector (nil: none), kept
	// for logging.
	Unmanaged labels.Selector
}

// register defines the agent flags on fs with their defaults. getenv
// supplies NODE_NAME (os.Getenv outside tests).
func (f *agentFlags) register(fs *pflag.FlagSet, getenv func(string) string) {
	d := routing.DefaultOptions()
	fs.StringVar(&f.nodeName, "node-name", getenv("NODE_NAME"), "this node's name (Kubernetes Node or peers-file entry); default $NODE_NAME")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file; excludes --peers-file; with neither, the in-cluster configuration is used (the agent does not read $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&f.peersFile, "peers-file", "", "peers file listing every host of the mesh (bare hosts, no Kubernetes); excludes --kubeconfig; must exist at start")
	fs.StringVar(&f.iface, "interface", device.DefaultName, "WireGuard interface name")
	fs.StringVar(&f.backend, "backend", string(device.ChoiceAuto), "WireGuard backend: auto (kernel if available), userspace or kernel")
	fs.BoolVar(&f.offloads, "offloads", true, "userspace backend: TUN segmentation offloads (TSO/GRO); turn off only to work around a kernel's TUN offload bugs")
	fs.IntVar(&f.inflightPackets, "inflight-packets", 0, "userspace backend: most packets wireguard-go holds per direction (each in a 64 KiB buffer), the rest waits in the kernel's TUN queue and socket buffer; bounds the agent's memory under load; 0 = no bound")
	fs.IntVar(&f.listenPort, "listen-port", defaultListenPort, "UDP port the interface listens on (1-65535)")
	fs.StringVar(&f.endpoint, "endpoint", "", "endpoint to publish, IP or IP:port (default: the Node's InternalIP and --listen-port; with --peers-file, the file's entry)")
	fs.StringVar(&f.keyFile, "key-file", agent.DefaultKeyFile, "private key file, created (0600) if absent; a file readable by group or others is refused")
	fs.IntVar(&f.mtu, "mtu", 0, "interface MTU; 0 = underlay MTU minus WireGuard overhead (the underlay is the peers file entry's endpoint address, else the default route); a fixed MTU must be 1280-65535 with IPv6, 576-65535 without")
	fs.BoolVar(&f.hostEncryption, "host-encryption", false, "also encrypt traffic between the nodes' own addresses (InternalIP)")
	fs.BoolVar(&f.allowUnencrypted, "allow-unencrypted", false, "send pod traffic to nodes without a key in plaintext instead of dropping it (reported loudly)")
	fs.BoolVar(&f.ipv4, "ipv4", true, "mesh IPv4 pod CIDRs")
	fs.BoolVar(&f.ipv6, "ipv6", true, "mesh IPv6 pod CIDRs (at least one of --ipv4 and --ipv6)")
	fs.StringVar(&f.keepalive, "keepalive", "0", "persistent keepalive, seconds or a duration such as 25s; 0 disables")
	fs.Int64Var(&f.routeTable, "route-table", int64(d.Table), "routing table for wgmesh routes (1-4294967295, not 253-255)")
	fs.Int64Var(&f.hostRouteTable, "host-route-table", 0, "routing table for pod traffic to other nodes' addresses; 0 = --route-table + 1; not 253-255, not --route-table")
	fs.IntVar(&f.rulePriority, "rule-priority", d.Priority, "priority of the policy rule that selects the wgmesh table (2-32765; the host-route rules take one less)")
	fs.StringVar(&f.fwmark, "fwmark", fmt.Sprintf("%#x", d.FwMark), "firewall mark bit of encrypted packets, so they skip the wgmesh table (exactly one bit)")
	fs.StringVar(&f.tunnelAddress, "tunnel-address", string(mesh.TunnelAddressAuto), "interface address: auto (IPv4: the own pod CIDR's first address; IPv6: its first address + 1, not the subnet-router anycast address), first (the first address of both; the old default), none, or IPs (comma-separated, one per family)")
	fs.StringVar(&f.unmanagedNodes, "unmanaged-nodes", "", "label selector of nodes outside the mesh (plaintext, reported), e.g. kubernetes.io/os=windows")
	fs.StringVar(&f.clusterCIDRs, "cluster-cidrs", "", "the cluster's pod ranges, comma-separated (e.g. 10.244.0.0/16,fd00:10:244::/48): pod traffic to any part no known node claims is dropped (strict) instead of leaving in plaintext; adds to the peers file's clusterCIDRs and the cluster's kubeadm podSubnet")
	fs.StringVar(&f.metricsAddr, "metrics-addr", fmt.Sprintf(":%d", metrics.DefaultPort), "address of /metrics, /healthz, /readyz and /status; empty disables")
}

// newAgentFlagSet returns a flag set with the agent flags registered, for
// tests and fuzzing; the agent command registers them on its own set.
func newAgentFlagSet(f *agentFlags, getenv func(string) string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.register(fs, getenv)
	return fs
}

// validate checks every flag and returns the configuration. inCluster
// reports whether the process runs in a Kubernetes pod (consulted only when
// neither --kubeconfig nor --peers-file is set). Every error names its flag.
func (f *agentFlags) validate(inCluster bool) (agentConfig, error) {
	c := agentConfig{
		NodeName:    strings.TrimSpace(f.nodeName),
		Kubeconfig:  f.kubeconfig,
		PeersFile:   f.peersFile,
		Interface:   f.iface,
		ListenPort:  f.listenPort,
		KeyFile:     f.keyFile,
		MTU:         f.mtu,
		Priority:    f.rulePriority,
		MetricsAddr: f.metricsAddr,
	}
	switch {
	case c.NodeName == "":
		return c, usagef("--node-name is required (or set NODE_NAME)")
	case len(c.NodeName) > maxNodeName || strings.ContainsAny(c.NodeName, " \t\n\r/"):
		return c, usagef("--node-name %q: want a node name of at most %d characters without spaces or slashes", c.NodeName, maxNodeName)
	}

	switch {
	case f.kubeconfig != "" && f.peersFile != "":
		return c, usagef("--kubeconfig and --peers-file are mutually exclusive: give exactly one source of nodes")
	case f.peersFile != "":
		c.Source = sourcePeersFile
	case f.kubeconfig != "":
		c.Source = sourceKubeconfig
	case inCluster:
		c.Source = sourceInCluster
	default:
		return c, usagef("no source of nodes: give --kubeconfig or --peers-file (in-cluster configuration needs KUBERNETES_SERVICE_HOST, which is not set)")
	}

	if err := validateInterface(c.Interface); err != nil {
		return c, err
	}

	switch b := device.Choice(f.backend); b {
	case device.ChoiceAuto, device.ChoiceUserspace, device.ChoiceKernel:
		c.Backend = b
	default:
		return c, usagef("--backend %q: want auto, userspace or kernel", f.backend)
	}
	c.DisableOffloads = !f.offloads
	if f.inflightPackets < 0 {
		return c, usagef("--inflight-packets %d: want 0 (no bound) or more", f.inflightPackets)
	}
	c.InflightPackets = f.inflightPackets

	if c.ListenPort < 1 || c.ListenPort > 65535 {
		return c, usagef("--listen-port %d: want 1-65535", c.ListenPort)
	}

	if f.endpoint != "" {
		ep, err := parseEndpoint(f.endpoint, c.ListenPort)
		if err != nil {
			return c, usagef("--endpoint %q: %v", f.endpoint, err)
		}
		c.Endpoint = ep
	}

	if c.KeyFile == "" {
		return c, usagef("--key-file must not be empty")
	}

	if !f.ipv4 && !f.ipv6 {
		return c, usagef("--ipv4=false and --ipv6=false: enable at least one family")
	}

	// The router owns the MTU rule (the same floor for a fixed and an
	// automatic MTU); checking it here only reports it before anything
	// is touched.
	if err := routing.CheckMTU(c.MTU, f.ipv6); err != nil {
		return c, usagef("--mtu %d: %v", c.MTU, err)
	}

	keepalive, err := parseKeepalive(f.keepalive)
	if err != nil {
		return c, usagef("--keepalive %q: %v", f.keepalive, err)
	}

	if c.Table, c.HostTable, c.Priority, c.FwMark, err = validateRouting(f.routeTable, f.hostRouteTable, f.rulePriority, f.fwmark); err != nil {
		return c, err
	}

	c.Derive = mesh.Options{
		IPv4:             f.ipv4,
		IPv6:             f.ipv6,
		HostEncryption:   f.hostEncryption,
		AllowUnencrypted: f.allowUnencrypted,
		Keepalive:        keepalive,
	}
	mode, addrs, err := parseTunnelAddress(f.tunnelAddress, f.ipv4, f.ipv6)
	if err != nil {
		return c, usagef("--tunnel-address %q: %v", f.tunnelAddress, err)
	}
	c.Derive.TunnelAddress, c.Derive.TunnelAddrs = mode, addrs

	sel, err := parseUnmanaged(f.unmanagedNodes)
	if err != nil {
		return c, err
	}
	c.Unmanaged, c.Derive.Unmanaged = sel, unmanagedFunc(sel)

	cidrs, err := mesh.ParseClusterCIDRs(f.clusterCIDRs)
	if err != nil {
		return c, usagef("--cluster-cidrs %q: %v", f.clusterCIDRs, err)
	}
	for _, p := range cidrs {
		if (p.Addr().Is4() && !f.ipv4) || (p.Addr().Is6() && !f.ipv6) {
			return c, usagef("--cluster-cidrs %q: %s is of a family switched off by --ipv4/--ipv6", f.clusterCIDRs, p)
		}
	}
	c.Derive.ClusterCIDRs = cidrs

	if c.MetricsAddr != "" {
		if _, err := metricsURL(c.MetricsAddr); err != nil {
			return c, usagef("--metrics-addr %q: %v", c.MetricsAddr, err)
		}
	}
	return c, nil
}

// hostRouteTable validates --host-route-table against a valid --route-table:
// 0 means the table after the route table, so that a second instance with
// its own --route-table gets its own host table without another flag.
func hostRouteTable(routeTable, hostTable int64) (int, error) {
	what := "--host-route-table"
	if hostTable == 0 {
		hostTable = routeTable + 1
		what = fmt.Sprintf("--host-route-table (default: --route-table %d + 1)", routeTable)
	}
	switch {
	case hostTable < 0 || hostTable > 0xffffffff || (hostTable >= 253 && hostTable <= 255):
		return 0, usagef("%s %d: want 1-4294967295 except 253, 254 and 255 (the kernel's default, main and local tables); set --host-route-table", what, hostTable)
	case hostTable == routeTable:
		return 0, usagef("%s %d: must differ from --route-table (the host table holds other routes, for pod-sourced traffic only)", what, hostTable)
	}
	return int(hostTable), nil
}

// parseEndpoint accepts IP:port, [IPv6]:port or a bare IP (port = the
// listen port).
func parseEndpoint(s string, port int) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("port 0: want 1-65535")
		}
		return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), checkEndpointAddr(ap.Addr())
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want IP, IP:port or [IPv6]:port")
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), checkEndpointAddr(a)
}

func checkEndpointAddr(a netip.Addr) error {
	if a.Zone() != "" {
		return fmt.Errorf("zoned addresses are not reachable from other nodes")
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("%s is not a unicast address other nodes can reach", a)
	}
	return nil
}

// parseKeepalive accepts whole seconds ("25") or a Go duration ("25s").
func parseKeepalive(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n > uint64(maxKeepalive/time.Second) {
			return 0, fmt.Errorf("at most %d seconds", int(maxKeepalive/time.Second))
		}
		d = time.Duration(n) * time.Second
	} else {
		var perr error
		d, perr = time.ParseDuration(s)
		if perr != nil {
			return 0, fmt.Errorf("want seconds (25) or a duration (25s)")
		}
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("must not be negative")
	case d > maxKeepalive:
		return 0, fmt.Errorf("at most %s", maxKeepalive)
	case d%time.Second != 0:
		return 0, fmt.Errorf("WireGuard counts keepalive in whole seconds")
	}
	return d, nil
}

// validateInterface checks --interface the same way for the agent and
// cleanup.
func validateInterface(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, " /\t\n:") || name == "." || name == ".." {
		return usagef("--interface %q: want a Linux interface name of 1-15 characters without spaces, '/' or ':'", name)
	}
	return nil
}

// validateRouting checks --route-table, --host-route-table, --rule-priority
// and --fwmark, the same way for the agent and cleanup, and returns them
// (the host table's 0 resolved to --route-table + 1).
func validateRouting(routeTable, hostTable int64, priority int, fwmark string) (table, host, prio int, mark uint32, err error) {
	// Tables 253-255 are the kernel's default, main and local; 0 is
	// "unspecified". Table IDs are 32-bit.
	if routeTable <= 0 || routeTable > 0xffffffff || (routeTable >= 253 && routeTable <= 255) {
		return 0, 0, 0, 0, usagef("--route-table %d: want 1-4294967295 except 253, 254 and 255 (the kernel's default, main and local tables)", routeTable)
	}
	if host, err = hostRouteTable(routeTable, hostTable); err != nil {
		return 0, 0, 0, 0, err
	}
	// The rules must come after the local table (priority 0) and before
	// main (32766); the host-route rules take the priority before.
	if priority < 2 || priority > 32765 {
		return 0, 0, 0, 0, usagef("--rule-priority %d: want 2-32765 (after the local table at 0, before main at 32766; the host-route rules take --rule-priority - 1)", priority)
	}
	m, perr := strconv.ParseUint(strings.TrimSpace(fwmark), 0, 32)
	if perr != nil {
		return 0, 0, 0, 0, usagef("--fwmark %q: want a number such as 0x2000", fwmark)
	}
	if bits.OnesCount64(m) != 1 {
		return 0, 0, 0, 0, usagef("--fwmark %#x: must be a single nonzero bit such as 0x2000 (the rule tests exactly that bit)", m)
	}
	return int(routeTable), host, priority, uint32(m), nil
}

// parseTunnelAddress parses auto, first, none, or a comma-separated list of at
// most one address per enabled family.
func parseTunnelAddress(s string, ipv4, ipv6 bool) (mesh.TunnelAddressMode, []netip.Addr, error) {
	switch strings.TrimSpace(s) {
	case "", string(mesh.TunnelAddressAuto):
		return mesh.TunnelAddressAuto, nil, nil
	case string(mesh.TunnelAddressFirst):
		return mesh.TunnelAddressFirst, nil, nil
	case string(mesh.TunnelAddressNone):
		return mesh.TunnelAddressNone, nil, nil
	}
	var addrs []netip.Addr
	var have4, have6 bool
	for _, part := range strings.Split(s, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(part))
		if err != nil {
			return "", nil, fmt.Errorf("want auto, first, none or IP addresses separated by commas; %q is not an IP address", part)
		}
		a = a.Unmap()
		switch {
		case a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
			return "", nil, fmt.Errorf("%s cannot be a tunnel address", a)
		case a.Is4() && have4, a.Is6() && have6:
			return "", nil, fmt.Errorf("more than one address of the family of %s", a)
		case a.Is4() && !ipv4:
			return "", nil, fmt.Errorf("%s is IPv4 but --ipv4=false", a)
		case a.Is6() && !ipv6:
			return "", nil, fmt.Errorf("%s is IPv6 but --ipv6=false", a)
		}
		have4 = have4 || a.Is4()
		have6 = have6 || a.Is6()
		addrs = append(addrs, a)
	}
	return mesh.TunnelAddressFixed, addrs, nil
}

// metricsURL turns a listen address such as ":9587" into the URL a local
// client reaches it at.
func metricsURL(addr string) (string, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		host = "[" + host + "]"
	}
	return "http://" + host + ":" + port, nil
}

func splitHostPort(addr string) (host, port string, err error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", "", fmt.Errorf("want host:port or :port")
	}
	host, port = addr[:i], addr[i+1:]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", "", fmt.Errorf("port %q: want 1-65535", port)
	}
	if strings.ContainsAny(host, "[]/ ") {
		return "", "", fmt.Errorf("host %q: want a host name or IP address", host)
	}
	return host, port, nil
}

// inClusterEnv reports whether the process runs in a Kubernetes pod, the
// way client-go's rest.InClusterConfig decides.
func inClusterEnv() bool {
	return os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBERNETES_SERVICE_PORT") != ""
}
