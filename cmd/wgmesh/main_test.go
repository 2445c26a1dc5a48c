package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/routing"
)

// result is one in-process run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

// wgmesh runs the CLI in process with env as its environment (NODE_NAME,
// KUBERNETES_SERVICE_HOST, ...).
func wgmesh(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &app{
		streams:   streams{in: strings.NewReader(""), out: &out, err: &errOut},
		getenv:    func(k string) string { return env[k] },
		inCluster: func() bool { return env["KUBERNETES_SERVICE_HOST"] != "" },
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := a.execute(ctx, args)
	return result{code, out.String(), errOut.String()}
}

func TestAgentFlagErrors(t *testing.T) {
	peers := []string{"agent", "--node-name=a", "--peers-file=/nonexistent/peers.yaml"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		// want is a substring of stderr naming the flag.
		want string
	}{
		{"no node name", []string{"agent", "--peers-file=p"}, nil, "--node-name"},
		{"no source", []string{"agent", "--node-name=a"}, nil, "--kubeconfig or --peers-file"},
		{"two sources", append(peers, "--kubeconfig=k"), nil, "mutually exclusive"},
		{"bad backend", append(peers, "--backend=ebpf"), nil, "--backend"},
		{"fwmark zero", append(peers, "--fwmark=0"), nil, "--fwmark"},
		{"fwmark two bits", append(peers, "--fwmark=0x30000"), nil, "--fwmark 0x30000: must be a single nonzero bit"},
		{"fwmark garbage", append(peers, "--fwmark=mark"), nil, "--fwmark"},
		{"fwmark too wide", append(peers, "--fwmark=0x100000000"), nil, "--fwmark"},
		{"tunnel address garbage", append(peers, "--tunnel-address=second"), nil, "--tunnel-address"},
		{"tunnel address two v4", append(peers, "--tunnel-address=10.244.1.1,10.244.1.2"), nil, "more than one"},
		{"tunnel address disabled family", append(peers, "--ipv6=false", "--tunnel-address=fd00::1"), nil, "--tunnel-address fd00::1: an address of a disabled family (IPv6 off)"},
		{"unmanaged selector", append(peers, "--unmanaged-nodes=a in (b"), nil, "--unmanaged-nodes"},
		{"cluster cidrs host bits", append(peers, "--cluster-cidrs=10.244.0.1/16"), nil, "--cluster-cidrs \"10.244.0.1/16\": \"10.244.0.1/16\" has host bits set; did you mean 10.244.0.0/16?"},
		{"cluster cidrs whole family", append(peers, "--cluster-cidrs=10.244.0.0/16,::/0"), nil, "--cluster-cidrs \"10.244.0.0/16,::/0\": \"::/0\" covers a whole address family"},
		{"cluster cidrs twice", append(peers, "--cluster-cidrs=10.244.0.0/16,10.244.0.0/16"), nil, "listed twice"},
		{"cluster cidrs disabled family", append(peers, "--ipv6=false", "--cluster-cidrs=fd00:10:244::/48"), nil, "--cluster-cidrs fd00:10:244::/48: a range of a disabled family (IPv6 off)"},
		{"rule priority zero", append(peers, "--rule-priority=0"), nil, "--rule-priority"},
		{"rule priority one", append(peers, "--rule-priority=1"), nil, "--rule-priority 1: want 2-32765 (after the local table at 0, before main at 32766; the host-route rules take priority 0)"},
		{"host route table main", append(peers, "--host-route-table=254"), nil, "--host-route-table 254"},
		{"host route table default reserved", append(peers, "--route-table=252"), nil, "default: --route-table 252 + 1"},
		{"host route table is the route table", append(peers, "--route-table=7", "--host-route-table=7"), nil, "--host-route-table 7: must differ from the route table 7"},
		{"rule priority main", append(peers, "--rule-priority=32766"), nil, "--rule-priority"},
		{"route table main", append(peers, "--route-table=254"), nil, "--route-table"},
		{"route table negative", append(peers, "--route-table=-1"), nil, "--route-table"},
		{"listen port", append(peers, "--listen-port=70000"), nil, "--listen-port"},
		{"inflight packets", append(peers, "--inflight-packets=-1"), nil, "--inflight-packets -1: want 0 (no bound) or more"},
		{"mtu", append(peers, "--mtu=1000"), nil, "--mtu"},
		{"mtu below IPv6 minimum", append(peers, "--mtu=1240"), nil, "--mtu 1240: below 1280, IPv6's minimum link MTU"},
		{"mtu IPv6 minimum - 1", append(peers, "--mtu=1279"), nil, "--mtu 1279: below 1280"},
		{"mtu below IPv4 minimum", append(peers, "--ipv6=false", "--mtu=500"), nil, "--mtu 500: below 576"},
		{"mtu IPv4 minimum - 1", append(peers, "--ipv6=false", "--mtu=575"), nil, "--mtu 575: below 576"},
		{"mtu below the link minimum", append(peers, "--ipv6=false", "--mtu=67"), nil, "--mtu 67: below 576"},
		{"mtu too large", append(peers, "--mtu=65536"), nil, "--mtu 65536"},
		{"no family", append(peers, "--ipv4=false", "--ipv6=false"), nil, "enable at least one family"},
		{"keepalive negative", append(peers, "--keepalive=-5s"), nil, "--keepalive"},
		{"keepalive fraction", append(peers, "--keepalive=1.5s"), nil, "whole seconds"},
		{"keepalive huge", append(peers, "--keepalive=70000"), nil, "--keepalive 19h26m40s: at most 65535 seconds"},
		{"keepalive max + 1", append(peers, "--keepalive=65536s"), nil, "--keepalive 18h12m16s: at most 65535 seconds"},
		{"keepalive syntax", append(peers, "--keepalive=soon"), nil, "--keepalive \"soon\": want seconds (25) or a duration (25s)"},
		{"endpoint", append(peers, "--endpoint=host:1"), nil, "--endpoint"},
		{"endpoint unspecified", append(peers, "--endpoint=0.0.0.0:51820"), nil, "--endpoint 0.0.0.0:51820: 0.0.0.0 is not a unicast address"},
		{"endpoint port 0", append(peers, "--endpoint=198.18.0.1:0"), nil, "--endpoint 198.18.0.1:0: port 0"},
		{"endpoint zone", append(peers, "--endpoint=[fe80::1%eth0]:51820"), nil, "--endpoint [fe80::1%eth0]:51820: zoned addresses"},
		{"endpoint mapped zone", append(peers, "--endpoint=::ffff:198.18.0.1%eth0"), nil, "zoned addresses"},
		{"interface", append(peers, "--interface=a-very-long-interface-name"), nil, "--interface \"a-very-long-interface-name\": 26 bytes, the kernel allows 15"},
		{"interface empty", append(peers, "--interface="), nil, "--interface \"\": empty"},
		{"interface zone syntax", append(peers, "--interface=wg%0"), nil, "--interface \"wg%0\": byte '%' not allowed"},
		{"metrics addr", append(peers, "--metrics-addr=9587"), nil, "--metrics-addr"},
		{"log format", append(peers, "--log-format=xml"), nil, "--log-format"},
		{"log level", append(peers, "--log-level=loud"), nil, "--log-level"},
		{"unknown flag", append(peers, "--no-such-flag"), nil, "no-such-flag"},
		{"non-integer port", append(peers, "--listen-port=x"), nil, "listen-port"},
		{"positional", append(peers, "extra"), nil, "no arguments"},
		{"unknown command", []string{"frobnicate"}, nil, "frobnicate"},
		{"status output", []string{"status", "-o", "yaml"}, nil, "-o"},
		{"cleanup annotations without node", []string{"cleanup", "--remove-annotations"}, nil, "--node-name"},
		{"cleanup host route table", []string{"cleanup", "--route-table=9", "--host-route-table=9"}, nil, "--host-route-table"},
		{"cleanup rule priority one", []string{"cleanup", "--rule-priority=1"}, nil, "--rule-priority 1: want 2-32765"},
		{"cleanup fwmark two bits", []string{"cleanup", "--fwmark=0x3000"}, nil, "--fwmark 0x3000: must be a single nonzero bit"},
		{"cleanup host route table default", []string{"cleanup", "--route-table=252"}, nil, "--host-route-table (default: --route-table 252 + 1) 253"},
		{"cleanup interface", []string{"cleanup", "--interface=a/b"}, nil, "--interface \"a/b\": byte '/' not allowed"},
		{"status interface", []string{"status", "--interface=a/b"}, nil, "--interface \"a/b\": byte '/' not allowed"},
		{"status empty interface", []string{"status", "--interface="}, nil, "--interface must not be empty"},
		{"verify interface", []string{"verify", "--interface=0123456789abcdef"}, nil, "--interface \"0123456789abcdef\": 16 bytes"},
		{"graph interface", []string{"graph", "--interface=wg:0"}, nil, "--interface \"wg:0\": byte ':' not allowed"},
		{"cleanup key file without remove-key", []string{"cleanup", "--key-file=/tmp/k"}, nil, "--key-file is used only with --remove-key"},
		{"cleanup empty key file", []string{"cleanup", "--remove-key", "--key-file="}, nil, "--key-file"},
		{"wait positional", []string{"wait", "x"}, nil, "no arguments"},
		{"verify unmanaged selector", []string{"verify", "--unmanaged-nodes=a in (b"}, nil, "--unmanaged-nodes \"a in (b\": not a label selector"},
		{"graph unmanaged selector", []string{"graph", "--cluster", "--unmanaged-nodes=a in (b"}, nil, "--unmanaged-nodes \"a in (b\": not a label selector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wgmesh(t, tc.env, tc.args...)
			if r.code != exitUsage {
				t.Errorf("exit code %d, want %d (usage); stderr:\n%s", r.code, exitUsage, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not mention %q:\n%s", tc.want, r.stderr)
			}
		})
	}
}

func TestAgentFlagsValidate(t *testing.T) {
	parse := func(t *testing.T, env map[string]string, inCluster bool, args ...string) (agentConfig, error) {
		t.Helper()
		var f agentFlags
		fs := newAgentFlagSet(&f, func(k string) string { return env[k] })
		if err := fs.Parse(args); err != nil {
			t.Fatalf("parse %v: %v", args, err)
		}
		return f.validate(inCluster)
	}

	// An empty --backend is device.Options' zero value: auto.
	if c, err := parse(t, map[string]string{"NODE_NAME": "node-1"}, true, "--backend="); err != nil || c.Backend != device.ChoiceAuto {
		t.Errorf("--backend=: backend %q, err %v; want auto", c.Backend, err)
	}

	// Without IPv6 the MTU floor is IPv4's.
	if c, err := parse(t, map[string]string{"NODE_NAME": "node-1"}, true, "--ipv6=false", "--mtu=1240"); err != nil || c.MTU != 1240 {
		t.Errorf("--ipv6=false --mtu=1240: MTU %d, err %v; want 1240 accepted", c.MTU, err)
	}

	c, err := parse(t, map[string]string{"NODE_NAME": "node-1"}, true)
	if err != nil {
		t.Fatalf("defaults in a cluster: %v", err)
	}
	if c.NodeName != "node-1" || c.Source != sourceInCluster || c.Interface != "wgmesh0" || c.Backend != device.ChoiceAuto ||
		c.ListenPort != 51822 || c.KeyFile != agent.DefaultKeyFile || c.MTU != 0 || c.Table != 51820 || c.HostTable != 51821 || c.Priority != 99 ||
		c.FwMark != 0x2000 || c.MetricsAddr != ":9587" || c.Endpoint.IsValid() || c.DisableOffloads || c.InflightPackets != device.DefaultInflightPackets {
		t.Errorf("defaults: %+v", c)
	}
	if c.ListenPort != kube.DefaultListenPort {
		t.Errorf("--listen-port default %d, kube.DefaultListenPort %d: want one default port", c.ListenPort, kube.DefaultListenPort)
	}
	if !c.Derive.IPv4 || !c.Derive.IPv6 || c.Derive.HostEncryption || c.Derive.AllowUnencrypted ||
		c.Derive.Keepalive != 0 || c.Derive.TunnelAddress != mesh.TunnelAddressAuto || c.Derive.Unmanaged != nil || c.Derive.ClusterCIDRs != nil {
		t.Errorf("default derive options: %+v", c.Derive)
	}

	c, err = parse(t, map[string]string{"NODE_NAME": "from-env"}, false,
		"--node-name=host-a", "--peers-file=/etc/wgmesh/peers.yaml", "--interface=wg7", "--backend=userspace",
		"--listen-port=51821", "--endpoint=198.18.0.1", "--key-file=/tmp/k", "--mtu=1400", "--host-encryption",
		"--allow-unencrypted", "--ipv6=false", "--keepalive=25", "--route-table=1000", "--host-route-table=900", "--rule-priority=150",
		"--fwmark=0x400000", "--tunnel-address=10.244.1.1", "--unmanaged-nodes=kubernetes.io/os=windows",
		"--metrics-addr=127.0.0.1:9999", "--offloads=false", "--inflight-packets=512", "--cluster-cidrs=10.244.0.0/16, 10.245.0.0/16")
	if err != nil {
		t.Fatalf("all flags: %v", err)
	}
	want := netip.MustParseAddrPort("198.18.0.1:51821")
	if c.NodeName != "host-a" || c.Source != sourcePeersFile || c.PeersFile != "/etc/wgmesh/peers.yaml" ||
		c.Interface != "wg7" || c.Backend != device.ChoiceUserspace || c.ListenPort != 51821 || c.Endpoint != want ||
		c.KeyFile != "/tmp/k" || c.MTU != 1400 || c.Table != 1000 || c.HostTable != 900 || c.Priority != 150 || c.FwMark != 0x400000 ||
		c.MetricsAddr != "127.0.0.1:9999" || !c.DisableOffloads || c.InflightPackets != 512 {
		t.Errorf("all flags: %+v", c)
	}
	d := c.Derive
	if !d.IPv4 || d.IPv6 || !d.HostEncryption || !d.AllowUnencrypted || d.Keepalive != 25*time.Second ||
		d.TunnelAddress != mesh.TunnelAddressFixed || len(d.TunnelAddrs) != 1 || d.TunnelAddrs[0] != netip.MustParseAddr("10.244.1.1") ||
		fmt.Sprint(d.ClusterCIDRs) != "[10.244.0.0/16 10.245.0.0/16]" {
		t.Errorf("all flags derive options: %+v", d)
	}
	if d.Unmanaged == nil || !d.Unmanaged(map[string]string{"kubernetes.io/os": "windows"}) || d.Unmanaged(map[string]string{"kubernetes.io/os": "linux"}) {
		t.Error("--unmanaged-nodes=kubernetes.io/os=windows does not select exactly the windows nodes")
	}

	c, err = parse(t, nil, false, "--node-name=n", "--kubeconfig=/k", "--tunnel-address=none", "--keepalive=1m",
		"--endpoint=[fd00::1]:4000", "--fwmark=131072")
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != sourceKubeconfig || c.Derive.TunnelAddress != mesh.TunnelAddressNone || c.Derive.Keepalive != time.Minute ||
		c.Endpoint != netip.MustParseAddrPort("[fd00::1]:4000") || c.FwMark != 0x20000 {
		t.Errorf("kubeconfig variant: %+v", c)
	}
}

func TestKeygenPubkeyRotate(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "sub", "private.key")
	if err := os.MkdirAll(filepath.Dir(keyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	r := wgmesh(t, nil, "pubkey", "--key-file", keyFile)
	if r.code != exitFailure || !strings.Contains(r.stderr, "keygen") {
		t.Errorf("pubkey without a key: code %d, stderr %q; want 1 and a hint to run keygen", r.code, r.stderr)
	}

	r = wgmesh(t, nil, "keygen", "--key-file", keyFile)
	if r.code != exitOK {
		t.Fatalf("keygen: code %d: %s", r.code, r.stderr)
	}
	pub1 := strings.TrimSpace(r.stdout)
	if _, err := mesh.ParseKey(pub1); err != nil {
		t.Fatalf("keygen printed %q: %v", pub1, err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(keyFile)
	if strings.Contains(r.stdout+r.stderr, strings.TrimSpace(string(data))) {
		t.Error("keygen printed the private key")
	}

	// keygen keeps an existing key.
	if r = wgmesh(t, nil, "keygen", "--key-file", keyFile); strings.TrimSpace(r.stdout) != pub1 {
		t.Errorf("second keygen printed %q, want the existing key's %q", r.stdout, pub1)
	}
	if r = wgmesh(t, nil, "pubkey", "--key-file", keyFile); r.code != exitOK || strings.TrimSpace(r.stdout) != pub1 {
		t.Errorf("pubkey: code %d out %q, want %q", r.code, r.stdout, pub1)
	}

	r = wgmesh(t, nil, "rotate-key", "--key-file", keyFile)
	pub2 := strings.TrimSpace(r.stdout)
	if r.code != exitOK || pub2 == pub1 {
		t.Fatalf("rotate-key: code %d, new key %q (old %q)", r.code, pub2, pub1)
	}
	if r = wgmesh(t, nil, "pubkey", "--key-file", keyFile); strings.TrimSpace(r.stdout) != pub2 {
		t.Errorf("pubkey after rotate-key = %q, want %q", r.stdout, pub2)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode after rotate-key %v, want 0600", fi.Mode().Perm())
	}

	// A key file others can read is refused, like ssh does.
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if r = wgmesh(t, nil, "pubkey", "--key-file", keyFile); r.code != exitFailure || !strings.Contains(r.stderr, keyFile) {
		t.Errorf("pubkey of a 0644 key file: code %d stderr %q, want 1 naming the file", r.code, r.stderr)
	}
}

// TestKeysCompatibleWithWgTool checks both directions against the real wg
// binary: `wg genkey` files work with our pubkey, and our keygen's files
// give the same public key with `wg pubkey`.
func TestKeysCompatibleWithWgTool(t *testing.T) {
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Skip("wg (wireguard-tools) not installed")
	}
	dir := t.TempDir()
	for i := range 5 {
		out, err := exec.Command(wg, "genkey").Output()
		if err != nil {
			t.Fatalf("wg genkey: %v", err)
		}
		keyFile := filepath.Join(dir, "wg.key")
		if err := os.WriteFile(keyFile, out, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(wg, "pubkey")
		cmd.Stdin = bytes.NewReader(out)
		want, err := cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey: %v", err)
		}
		r := wgmesh(t, nil, "pubkey", "--key-file", keyFile)
		if r.code != exitOK || r.stdout != string(want) {
			t.Errorf("key %d: our pubkey %q (code %d, %s), wg pubkey %q", i, r.stdout, r.code, r.stderr, want)
		}

		ours := filepath.Join(dir, "ours.key")
		os.Remove(ours)
		r = wgmesh(t, nil, "keygen", "--key-file", ours)
		priv, _ := os.ReadFile(ours)
		cmd = exec.Command(wg, "pubkey")
		cmd.Stdin = bytes.NewReader(priv)
		want, err = cmd.Output()
		if err != nil {
			t.Fatalf("wg pubkey of our key file: %v", err)
		}
		if r.stdout != string(want) {
			t.Errorf("key %d: keygen printed %q, wg pubkey of its file %q", i, r.stdout, want)
		}
	}
}

func TestVersion(t *testing.T) {
	oldV, oldC := version, commit
	t.Cleanup(func() { version, commit = oldV, oldC })
	version, commit = "v1.2.3", "abc1234"
	r := wgmesh(t, nil, "version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "wgmesh v1.2.3 (commit abc1234") {
		t.Errorf("version: code %d out %q", r.code, r.stdout)
	}
	version, commit = "", ""
	r = wgmesh(t, nil, "version")
	if r.code != exitOK || !strings.HasPrefix(r.stdout, "wgmesh ") || !strings.Contains(r.stdout, "commit ") {
		t.Errorf("version without ldflags: code %d out %q", r.code, r.stdout)
	}
}

// agentServer serves a metrics.Metrics like a running agent would.
func agentServer(t *testing.T) (addr string, m *metrics.Metrics) {
	t.Helper()
	var k mesh.Key
	k[0] = 7
	m = metrics.New(metrics.Options{
		NodeName: "node-self", Interface: "wgmesh0", Backend: mesh.BackendUserspace, ListenPort: 51820, Strict: true,
		Stats: func(context.Context) ([]device.PeerStats, error) {
			return []device.PeerStats{{
				PublicKey: k, Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"),
				AllowedIPs:   []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
				ReceiveBytes: 2048, TransmitBytes: 5 << 20, LastHandshake: time.Now().Add(-42 * time.Second),
			}}, nil
		},
		Router: func() routing.Status {
			return routing.Status{LinkMTU: 1440, PodMTU: 1440, Warnings: []string{"tunnel MTU 1240 (underlay eth0 MTU 1300 − 60) < 1280 needed for IPv6: using 1280"}}
		},
		Ready: func() bool { return true },
	})
	m.Observe(agent.Result{Time: time.Now(), Desired: mesh.Desired{
		Peers:       []mesh.Peer{{Node: "node-b", PublicKey: k}},
		Unencrypted: []string{"win-1"},
		Problems: []mesh.Problem{{Node: "node-c", Reason: mesh.ReasonDuplicateEndpoint, Detail: "endpoint shared"},
			{Node: "win-1", Reason: mesh.ReasonUnmanaged, Detail: "matches the selector"}},
	}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(m.Handler())
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return ln.Addr().String(), m
}

func TestStatusFromAgent(t *testing.T) {
	addr, _ := agentServer(t)
	r := wgmesh(t, nil, "status", "--metrics-addr", addr, "-o", "json")
	if r.code != exitOK {
		t.Fatalf("status -o json: code %d: %s", r.code, r.stderr)
	}
	var st metrics.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status -o json output: %v\n%s", err, r.stdout)
	}
	if st.APIVersion != "wgmesh.io/v1" || st.Kind != "Status" || !st.AgentRunning || st.Node != "node-self" ||
		len(st.Peers) != 1 || st.Peers[0].Node != "node-b" || st.PodMTU != 1440 {
		t.Errorf("status document: %+v", st)
	}

	r = wgmesh(t, nil, "status", "--metrics-addr", addr)
	if r.code != exitOK {
		t.Fatalf("status: code %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{
		"NODE", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX",
		"node-b", "198.18.0.2:51820", "10.244.2.0/24", "42s ago", "2.0 KiB", "5.0 MiB",
		"Backend:", "userspace", "Pod MTU:", "1440", "Strict mode:", "on", "UNENCRYPTED nodes:", "win-1", "Unmanaged",
		"Routing warnings:", "tunnel MTU 1240 (underlay eth0 MTU 1300 − 60) < 1280 needed for IPv6: using 1280",
		"Problems:\n  win-1: Unmanaged", "Warnings (nothing left out):\n  node-c: DuplicateEndpoint: endpoint shared",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status table lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestStatusWithoutAgentReadsInterface(t *testing.T) {
	// A closed port: no agent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var pub, peer mesh.Key
	pub[0], peer[0] = 1, 2
	a := &app{streams: streams{out: &bytes.Buffer{}, err: &bytes.Buffer{}}}
	a.log, _ = newLogger(a.err, "text", "error")
	base, _ := metricsURL(addr)
	inspect := func(name string) (device.Info, error) {
		if name != "wg9" {
			return device.Info{}, device.ErrNotFound
		}
		return device.Info{Name: "wg9", Backend: mesh.BackendKernel, PublicKey: pub, ListenPort: 51820,
			Peers: []device.PeerStats{{PublicKey: peer, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}}}}, nil
	}
	st, err := a.readStatus(context.Background(), base, "wg9", inspect)
	if err != nil {
		t.Fatalf("readStatus: %v", err)
	}
	if st.AgentRunning || st.Backend != mesh.BackendKernel || st.PublicKey != pub.String() || len(st.Peers) != 1 ||
		st.Peers[0].PublicKey != peer.String() || st.Peers[0].Node != "" {
		t.Errorf("status from the interface: %+v", st)
	}
	var buf bytes.Buffer
	if err := printStatus(&buf, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), peer.String()) || !strings.Contains(buf.String(), "never") || !strings.Contains(buf.String(), "not running") {
		t.Errorf("table without agent:\n%s", buf.String())
	}

	if _, err := a.readStatus(context.Background(), base, "wgmesh0", inspect); err == nil || !strings.Contains(err.Error(), "wgmesh0") {
		t.Errorf("readStatus without agent and interface: %v, want an error naming the interface", err)
	}
}

func TestHumanFormats(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {5 << 30, "5.0 GiB"}, {1 << 62, "4.0 EiB"}} {
		if got := bytesHuman(tc.n); got != tc.want {
			t.Errorf("bytesHuman(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{-time.Second, "0s"}, {5 * time.Second, "5s"}, {125 * time.Second, "2m5s"}, {3*time.Hour + 4*time.Minute, "3h4m"}, {72 * time.Hour, "3d"}} {
		if got := age(tc.d); got != tc.want {
			t.Errorf("age(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestAPIServerAddrs(t *testing.T) {
	a := &app{}
	a.log, _ = newLogger(&bytes.Buffer{}, "text", "error")
	for _, tc := range []struct {
		host string
		want []netip.Addr
	}{
		{"https://198.18.0.10:6443", []netip.Addr{netip.MustParseAddr("198.18.0.10")}},
		{"https://[fd00::10]:6443", []netip.Addr{netip.MustParseAddr("fd00::10")}},
		{"198.18.0.11:443", []netip.Addr{netip.MustParseAddr("198.18.0.11")}},
		{"https://198.18.0.12", []netip.Addr{netip.MustParseAddr("198.18.0.12")}},
		{"", nil},
	} {
		got := apiServerAddrs(context.Background(), tc.host, a.log)
		if len(got) != len(tc.want) || (len(got) > 0 && got[0] != tc.want[0]) {
			t.Errorf("apiServerAddrs(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

func TestMetricsURL(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{":9587", "http://127.0.0.1:9587"},
		{"0.0.0.0:1", "http://127.0.0.1:1"},
		{"[::]:9587", "http://127.0.0.1:9587"},
		{"[fd00::1]:9587", "http://[fd00::1]:9587"},
		{"localhost:80", "http://localhost:80"},
	} {
		got, err := metricsURL(tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("metricsURL(%q) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "9587", ":0", ":x", "a b:1", "[::1:1"} {
		if _, err := metricsURL(bad); err == nil {
			t.Errorf("metricsURL(%q) accepted", bad)
		}
	}
}
