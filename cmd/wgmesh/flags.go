package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/internal/option"
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
	routeTable       int
	hostRouteTable   int
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
	Derive mesh.DeriveOptions
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
	fs.IntVar(&f.inflightPackets, "inflight-packets", device.DefaultInflightPackets, "userspace backend: most packets wireguard-go holds per direction (each in a 64 KiB buffer), the rest waits in the kernel's TUN queue and socket buffer; bounds the agent's memory and queueing delay under load; 0 = no bound (wireguard-go's own behaviour, hundreds of MiB per busy stream)")
	fs.IntVar(&f.listenPort, "listen-port", defaultListenPort, "UDP port the interface listens on (1-65535)")
	fs.StringVar(&f.endpoint, "endpoint", "", "endpoint to publish, IP or IP:port (default: the Node's InternalIP and --listen-port; with --peers-file, the file's entry)")
	fs.StringVar(&f.keyFile, "key-file", agent.DefaultKeyFile, "private key file, created (0600) if absent; a file readable by group or others is refused")
	fs.IntVar(&f.mtu, "mtu", 0, fmt.Sprintf("interface MTU; 0 = underlay MTU minus WireGuard overhead (the underlay is the peers file entry's endpoint address, else the default route); a fixed MTU must be %d-65535 with IPv6, %d-65535 without", routing.MinMTUIPv6, routing.MinMTUIPv4))
	fs.BoolVar(&f.hostEncryption, "host-encryption", false, "also encrypt traffic between the nodes' own addresses (InternalIP)")
	fs.BoolVar(&f.allowUnencrypted, "allow-unencrypted", false, "send pod traffic to nodes without a key in plaintext instead of dropping it (reported loudly)")
	fs.BoolVar(&f.ipv4, "ipv4", true, "mesh IPv4 pod CIDRs")
	fs.BoolVar(&f.ipv6, "ipv6", true, "mesh IPv6 pod CIDRs (at least one of --ipv4 and --ipv6)")
	fs.StringVar(&f.keepalive, "keepalive", "0", "persistent keepalive, seconds or a duration such as 25s; 0 disables")
	fs.IntVar(&f.routeTable, "route-table", d.Table, "routing table for wgmesh routes (1-4294967295, not 253-255)")
	fs.IntVar(&f.hostRouteTable, "host-route-table", 0, "routing table for pod traffic to other nodes' addresses; 0 = --route-table + 1; not 253-255, not --route-table")
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

// validate parses every flag and returns the configuration. inCluster
// reports whether the process runs in a Kubernetes pod (consulted only when
// neither --kubeconfig nor --peers-file is set). Every error names its flag.
//
// It checks only what the flags' text must be (syntax) and what no package
// owns; the bounds are the packages' rules: routing.Options.Validate,
// device.Options.Validate, mesh.DeriveOptions.Validate and mesh.ValidateEndpoint,
// called here on the options the agent will build, so a bad value is
// refused before anything is touched, in the flag's name.
func (f *agentFlags) validate(inCluster bool) (agentConfig, error) {
	c := agentConfig{
		NodeName:    strings.TrimSpace(f.nodeName),
		Kubeconfig:  f.kubeconfig,
		PeersFile:   f.peersFile,
		Interface:   f.iface,
		Backend:     device.Choice(f.backend),
		ListenPort:  f.listenPort,
		KeyFile:     f.keyFile,
		MTU:         f.mtu,
		Table:       f.routeTable,
		HostTable:   f.hostRouteTable,
		Priority:    f.rulePriority,
		MetricsAddr: f.metricsAddr,

		DisableOffloads: !f.offloads,
		InflightPackets: f.inflightPackets,
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

	// The port the reconciler publishes and the device listens on; the
	// reconciler's options hold the same rule.
	if err := flagged(agent.ValidateListenPort(c.ListenPort), optionFlags); err != nil {
		return c, err
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
	// --host-route-table 0 is the table after --route-table, so that a
	// second instance with its own --route-table gets its own host table
	// without another flag.
	names := optionFlags
	if c.HostTable == 0 {
		c.HostTable = c.Table + 1
		names = withFlag(names, "HostTable", fmt.Sprintf("--host-route-table (default: --route-table %d + 1)", c.Table))
	}
	var err error
	if c.FwMark, err = parseFwMark(f.fwmark); err != nil {
		return c, err
	}

	c.Derive = mesh.DeriveOptions{
		IPv4:             f.ipv4,
		IPv6:             f.ipv6,
		HostEncryption:   f.hostEncryption,
		AllowUnencrypted: f.allowUnencrypted,
	}
	if c.Derive.Keepalive, err = parseKeepalive(f.keepalive); err != nil {
		return c, usagef("--keepalive %q: %v", f.keepalive, err)
	}
	if c.Derive.TunnelAddress, c.Derive.TunnelAddrs, err = parseTunnelAddress(f.tunnelAddress); err != nil {
		return c, usagef("--tunnel-address %q: %v", f.tunnelAddress, err)
	}
	sel, err := parseUnmanaged(f.unmanagedNodes)
	if err != nil {
		return c, err
	}
	c.Unmanaged, c.Derive.Unmanaged = sel, unmanagedFunc(sel)
	if c.Derive.ClusterCIDRs, err = mesh.ParseClusterCIDRs(f.clusterCIDRs); err != nil {
		return c, usagef("--cluster-cidrs %q: %v", f.clusterCIDRs, err)
	}
	if c.MetricsAddr != "" {
		if _, err := metricsURL(c.MetricsAddr); err != nil {
			return c, usagef("--metrics-addr %q: %v", c.MetricsAddr, err)
		}
	}

	// The packages' rules. Routing's first: its MTU rule is the tunnel's
	// (it knows the families), the device's only what a link can take.
	if err := c.routingOptions().Validate(); err != nil {
		return c, flagged(err, names)
	}
	if err := c.deviceOptions().Validate(); err != nil {
		return c, flagged(err, names)
	}
	if c.Backend == "" {
		c.Backend = device.ChoiceAuto
	}
	if err := c.Derive.Validate(); err != nil {
		return c, flagged(err, names)
	}
	if c.Endpoint.IsValid() {
		if err := mesh.ValidateEndpoint(c.Endpoint); err != nil {
			return c, flagged(err, names)
		}
	}
	return c, nil
}

// routingOptions are the router's options as the flags give them, the one
// place they are put together; the agent adds the logger.
//
// The underlay address (whose interface's MTU bounds the tunnel's) is
// --endpoint's at start; the own entry's endpoint and InternalIP reach the
// router with every reconcile (mesh.Desired.Underlay), so an address the
// source learns after the start is used too.
func (c agentConfig) routingOptions() routing.Options {
	return routing.Options{
		Interface:    c.Interface,
		Table:        c.Table,
		HostTable:    c.HostTable,
		Priority:     c.Priority,
		FwMark:       c.FwMark,
		IPv4:         c.Derive.IPv4,
		IPv6:         c.Derive.IPv6,
		MTU:          c.MTU,
		UnderlayAddr: c.Endpoint.Addr(),
	}
}

// deviceOptions are the device's options as the flags give them; the agent
// adds the instance's alias and the logger.
func (c agentConfig) deviceOptions() device.Options {
	return device.Options{
		Name: c.Interface, Backend: c.Backend, MTU: c.MTU,
		DisableOffloads: c.DisableOffloads, InflightPackets: c.InflightPackets,
	}
}

// optionFlags name the flag that sets each field of device.Options,
// routing.Options and mesh.DeriveOptions (and mesh.ValidateEndpoint's Endpoint),
// by the Field of the *option.Error their Validate returns. Fields no flag
// sets are absent: their errors are not the user's.
var optionFlags = map[string]string{
	"ListenPort":      "--listen-port", // agent.ValidateListenPort
	"Name":            "--interface",   // device.Options
	"Interface":       "--interface",   // routing.Options
	"Backend":         "--backend",
	"MTU":             "--mtu",
	"InflightPackets": "--inflight-packets",
	"Table":           "--route-table",
	"HostTable":       "--host-route-table",
	"Priority":        "--rule-priority",
	"FwMark":          "--fwmark",
	"IPv4/IPv6":       "--ipv4=false and --ipv6=false",
	"Keepalive":       "--keepalive",
	"TunnelAddress":   "--tunnel-address",
	"TunnelAddrs":     "--tunnel-address",
	"ClusterCIDRs":    "--cluster-cidrs",
	"Endpoint":        "--endpoint",
}

// withFlag returns names with field's flag replaced by flag.
func withFlag(names map[string]string, field, flag string) map[string]string {
	out := maps.Clone(names)
	out[field] = flag
	return out
}

// flagged returns err, a package's Validate error, as a usage error in the
// words of the flag that set the wrong field ("--mtu 1000: below 1280, …");
// nil stays nil, and an error on a field no flag sets is returned as it is.
func flagged(err error, names map[string]string) error {
	var oe *option.Error
	if err == nil || !errors.As(err, &oe) {
		return err
	}
	name, ok := names[oe.Field]
	if !ok {
		return err
	}
	if oe.Value == "" {
		return usagef("%s: %s", name, oe.Reason)
	}
	return usagef("%s %s: %s", name, oe.Value, oe.Reason)
}

// checkInterfaceFlag applies the interface-name rule (device.Options) to the
// --interface of the commands that only read an interface (status, verify,
// graph). An empty value is refused here: for the device it means the
// default interface, which the user did not ask for.
func checkInterfaceFlag(iface string) error {
	if iface == "" {
		return usagef("--interface must not be empty")
	}
	return flagged(device.Options{Name: iface}.Validate(), optionFlags)
}

// parseFwMark parses --fwmark as a 32-bit number (decimal, 0x hex or 0
// octal); which marks are allowed is routing's rule.
func parseFwMark(s string) (uint32, error) {
	m, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil {
		return 0, usagef("--fwmark %q: want a 32-bit number such as 0x2000", s)
	}
	return uint32(m), nil
}

// parseEndpoint accepts IP:port, [IPv6]:port or a bare IP (port = the
// listen port). Which endpoints are allowed is mesh.ValidateEndpoint's rule.
func parseEndpoint(s string, port int) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(unmap(ap.Addr()), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want IP, IP:port or [IPv6]:port")
	}
	return netip.AddrPortFrom(unmap(a), uint16(port)), nil
}

// unmap writes an IPv4-mapped IPv6 address as IPv4; a zoned one stays as it
// is, for the rules to refuse the zone rather than lose it.
func unmap(a netip.Addr) netip.Addr {
	if a.Zone() != "" {
		return a
	}
	return a.Unmap()
}

// parseKeepalive accepts whole seconds ("25") or a Go duration ("25s").
// Which keepalives are allowed is mesh.DeriveOptions.Validate's rule.
func parseKeepalive(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	// 32 bits of seconds fit a Duration.
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want seconds (25) or a duration (25s)")
	}
	return d, nil
}

// parseTunnelAddress parses auto, first, none, or a comma-separated list of
// IP addresses (fixed). Which addresses are allowed is
// mesh.DeriveOptions.Validate's rule.
func parseTunnelAddress(s string) (mesh.TunnelAddressMode, []netip.Addr, error) {
	switch strings.TrimSpace(s) {
	case "", string(mesh.TunnelAddressAuto):
		return mesh.TunnelAddressAuto, nil, nil
	case string(mesh.TunnelAddressFirst):
		return mesh.TunnelAddressFirst, nil, nil
	case string(mesh.TunnelAddressNone):
		return mesh.TunnelAddressNone, nil, nil
	}
	var addrs []netip.Addr
	for _, part := range strings.Split(s, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(part))
		if err != nil {
			return "", nil, fmt.Errorf("want auto, first, none or IP addresses separated by commas; %q is not an IP address", part)
		}
		addrs = append(addrs, unmap(a))
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
