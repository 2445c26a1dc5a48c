package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/deploy/monitoring"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// monitoringFor is the `for:` every alert gets in the lab (the shipped
// rules say minutes; monitoring.RulesWithFor shortens them so the scenario
// takes seconds). It stays above the scrape and evaluation interval so an
// alert still passes through pending, as in production.
const monitoringFor = 3 * time.Second

// labPrometheus is Debian's prometheus server running in a lab namespace.
// Its HTTP API is only ever reached from inside that namespace.
type labPrometheus struct {
	ns, url string
	client  *http.Client
	cmd     *exec.Cmd
	done    chan struct{}
	log     string
}

// startLabPrometheus runs prometheus in namespace ns, listening on
// addr:9090, scraping targets every second with rules loaded, and
// evaluating them every second. It is killed and its data directory
// removed when the test ends. Without the binary the test skips, unless $CI
// is set: there a skip would hide the scenario, so it fails.
func startLabPrometheus(t *testing.T, ns, addr string, rules []byte, targets []string) *labPrometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("prometheus not installed but $CI is set (.ci/run installs Debian's prometheus): %v", err)
		}
		t.Skipf("prometheus not installed (Debian: apt-get install --no-install-recommends prometheus): %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	var quoted []string
	for _, tg := range targets {
		quoted = append(quoted, fmt.Sprintf("%q", tg))
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: wgmesh
    static_configs:
      - targets: [%s]
`, filepath.Join(dir, "rules.yaml"), strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := net.JoinHostPort(addr, "9090")
	p := &labPrometheus{ns: ns, url: "http://" + listen, log: filepath.Join(dir, "prometheus.log"), done: make(chan struct{})}
	p.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		// Every connection is opened inside the lab namespace: the API
		// listens on a lab address the host must never dial.
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			var c net.Conn
			err := lab.InNetNS(ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, address)
				return err
			})
			return c, err
		},
	}}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command("ip", "netns", "exec", ns, bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen,
		"--log.level=info")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start prometheus in %s: %v", ns, err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	// Registered after t.TempDir, so it runs before the directory goes.
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := lab.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("prometheus exited: %s", p.logTail())
		default:
		}
		_, err := p.get(ctx, "/-/ready")
		return err == nil, err
	}); err != nil {
		t.Fatalf("prometheus in %s not ready: %v\n%s", ns, err, p.logTail())
	}
	return p
}

func (p *labPrometheus) logTail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

func (p *labPrometheus) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: HTTP %d: %s", path, resp.StatusCode, b)
	}
	return b, nil
}

// promAlert is one entry of /api/v1/alerts.
type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (a promAlert) String() string {
	var kv []string
	for k, v := range a.Labels {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return a.State + "{" + strings.Join(kv, ",") + "}"
}

// alerts returns the active (pending or firing) alerts.
func (p *labPrometheus) alerts(ctx context.Context) ([]promAlert, error) {
	b, err := p.get(ctx, "/api/v1/alerts")
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil || r.Status != "success" {
		return nil, fmt.Errorf("/api/v1/alerts: status %q, %v: %s", r.Status, err, b)
	}
	return r.Data.Alerts, nil
}

// ruleNames returns the alerting rules Prometheus loaded.
func (p *labPrometheus) ruleNames(ctx context.Context) ([]string, error) {
	b, err := p.get(ctx, "/api/v1/rules?type=alert")
	if err != nil {
		return nil, err
	}
	var r struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name   string `json:"name"`
					Health string `json:"health"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	var names []string
	for _, g := range r.Data.Groups {
		for _, rl := range g.Rules {
			names = append(names, rl.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// upTargets returns the scrape targets that are up.
func (p *labPrometheus) upTargets(ctx context.Context) ([]string, error) {
	b, err := p.get(ctx, "/api/v1/targets?state=active")
	if err != nil {
		return nil, err
	}
	var r struct {
		Data struct {
			ActiveTargets []struct {
				Labels map[string]string `json:"labels"`
				Health string            `json:"health"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	var up []string
	for _, tg := range r.Data.ActiveTargets {
		if tg.Health == "up" {
			up = append(up, tg.Labels["instance"])
		}
	}
	sort.Strings(up)
	return up, nil
}

// firing returns the instances (or reasons, for alerts without instance)
// for which alert name is firing, and every active alert for messages.
func firing(alerts []promAlert, name string) (who []string, all []string) {
	for _, a := range alerts {
		all = append(all, a.String())
		if a.Labels["alertname"] == name && a.State == "firing" {
			w := a.Labels["instance"]
			if w == "" {
				w = a.Labels["reason"]
			}
			who = append(who, w)
		}
	}
	sort.Strings(who)
	return who, all
}

// TestPrivilegedMonitoringNodeWithoutAgent: a real Prometheus in the lab's
// control-plane namespace scrapes the agents with deploy/monitoring's
// alerts loaded (their `for:` shortened to monitoringFor). node3 is
// registered but runs no agent and the others allow unencrypted traffic,
// so WgmeshNodeUnencrypted fires for node1's and node2's agents and
// WgmeshNodeWithoutKey for reason NoKey; once node3 gets its agent, both
// resolve. What this proves: the shipped rules, loaded by the real server,
// turn what the real agents export into the alert an operator gets, and
// clear it again (the metrics themselves predate the rules); and `wgmesh
// graph` draws node3 as unencrypted, cluster-wide and from node1's agent.
func TestPrivilegedMonitoringNodeWithoutAgent(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Without: []string{"node3"}, AgentArgs: []string{"--allow-unencrypted"}})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	n1, n2, n3 := k.Nodes[0], k.Nodes[1], k.Nodes[2]
	rules, err := monitoring.RulesWithFor(monitoringFor)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, n := range k.Nodes {
		// The agents' default --metrics-addr is :9587 in their namespace.
		targets = append(targets, net.JoinHostPort(n.Underlay.String(), "9587"))
	}
	began := time.Now()
	prom := startLabPrometheus(t, k.CP.NS, k.CP.Addr.String(), rules, targets)
	t.Logf("measured: prometheus ready in %s after %s", k.CP.NS, time.Since(began).Round(time.Millisecond))

	shipped, err := monitoring.Alerts()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, a := range shipped {
		want = append(want, a.Name)
	}
	sort.Strings(want)
	loaded, err := prom.ruleNames(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(loaded, want) {
		t.Fatalf("prometheus loaded alerts %v, want the shipped %v\n%s", loaded, want, prom.logTail())
	}
	agents := []string{targets[0], targets[1]}
	if err := lab.Poll(withTimeout(ctx, 60*time.Second), 500*time.Millisecond, func(ctx context.Context) (bool, error) {
		up, err := prom.upTargets(ctx)
		if err != nil {
			return false, err
		}
		if !slices.Equal(up, agents) {
			return false, fmt.Errorf("targets up %v, want %v (node3 runs no agent)", up, agents)
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}

	// node3 without an agent: both alerts fire.
	began = time.Now()
	var mu sync.Mutex
	var last []string
	waitAlerts := func(what string, cond func([]promAlert) error) {
		t.Helper()
		if err := lab.Poll(withTimeout(ctx, 90*time.Second), 500*time.Millisecond, func(ctx context.Context) (bool, error) {
			as, err := prom.alerts(ctx)
			if err != nil {
				return false, err
			}
			_, all := firing(as, "")
			mu.Lock()
			last = all
			mu.Unlock()
			if err := cond(as); err != nil {
				return false, err
			}
			return true, nil
		}); err != nil {
			t.Fatalf("%s: %v\nactive alerts: %v\n%s", what, err, last, prom.logTail())
		}
		t.Logf("measured: %s after %s; active alerts %v", what, time.Since(began).Round(time.Millisecond), last)
	}
	waitAlerts("node3 without an agent: WgmeshNodeUnencrypted and WgmeshNodeWithoutKey firing", func(as []promAlert) error {
		if who, _ := firing(as, "WgmeshNodeUnencrypted"); !slices.Equal(who, agents) {
			return fmt.Errorf("WgmeshNodeUnencrypted firing for %v, want %v", who, agents)
		}
		if who, _ := firing(as, "WgmeshNodeWithoutKey"); !slices.Equal(who, []string{"NoKey"}) {
			return fmt.Errorf("WgmeshNodeWithoutKey firing for %v, want [NoKey]", who)
		}
		return nil
	})
	as, err := prom.alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		switch a.Labels["alertname"] {
		case "WgmeshNodeUnencrypted", "WgmeshNodeWithoutKey", "WgmeshPeerNoHandshake":
		default:
			// Nothing else is wrong in this lab: a noisy rule would page
			// operators for a healthy mesh.
			t.Errorf("unexpected alert %s while only node3 lacks an agent", a)
		}
	}

	// wgmesh graph draws the same picture: node3 in plaintext, from the
	// cluster (run in the control-plane namespace, as verify is) and from
	// node1's agent, whose tunnel to node2 is drawn.
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", k.CP.NS, k.wgmesh, "graph",
		"--kubeconfig", k.adminKubeconfig, "--allow-unencrypted").CombinedOutput()
	if err != nil {
		t.Fatalf("wgmesh graph --kubeconfig: %v\n%s", err, out)
	}
	for _, s := range []string{`"node3" [label="node3\nunencrypted: NoKey"`, `"node1" -- "node2" [color=`, `"node1" -- "node3" [color="#D55E00", style=dashed, label="plaintext"`} {
		if !strings.Contains(string(out), s) {
			t.Errorf("wgmesh graph --kubeconfig lacks %s:\n%s", s, out)
		}
	}
	local, err := n1.Wgmesh(ctx, "graph", "--interface", n1.Interface)
	if err != nil {
		t.Fatalf("wgmesh graph on %s: %v\n%s", n1.Name, err, local)
	}
	for _, s := range []string{`"node1" [label="node1\n(this agent)"`, `"node1" -- "node2"`, `"node1" -- "node3" [color="#D55E00", style=dashed, label="plaintext"`} {
		if !strings.Contains(local, s) {
			t.Errorf("wgmesh graph on %s lacks %s:\n%s", n1.Name, s, local)
		}
	}

	// node3 gets its agent: the mesh is whole and both alerts resolve.
	// Timed from the agent's start: by the time waitMesh returns,
	// Prometheus has often evaluated already.
	began = time.Now()
	if _, err := n3.Keygen(ctx); err != nil {
		t.Fatal(err)
	}
	k.startAgent(t, n3, "--allow-unencrypted")
	k.waitMesh(t, ctx, []*lab.Node{n1, n2, n3})
	waitAlerts("node3 with its agent: WgmeshNodeUnencrypted and WgmeshNodeWithoutKey resolved", func(as []promAlert) error {
		for _, a := range as {
			if n := a.Labels["alertname"]; n == "WgmeshNodeUnencrypted" || n == "WgmeshNodeWithoutKey" {
				return fmt.Errorf("still active: %s", a)
			}
		}
		up, err := prom.upTargets(ctx)
		if err != nil {
			return err
		}
		if !slices.Equal(up, targets) {
			return fmt.Errorf("targets up %v, want all of %v", up, targets)
		}
		return nil
	})
}
