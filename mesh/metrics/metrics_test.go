package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/routing"
)

// fakeDevice serves device.PeerStats like device.Device.Stats would.
type fakeDevice struct {
	mu    sync.Mutex
	peers []device.PeerStats
	err   error
}

func (d *fakeDevice) set(ps []device.PeerStats, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.peers, d.err = ps, err
}

func (d *fakeDevice) Stats(context.Context) ([]device.PeerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]device.PeerStats(nil), d.peers...), d.err
}

func key(t *testing.T, b byte) mesh.Key {
	t.Helper()
	var k mesh.Key
	for i := range k {
		k[i] = b
	}
	return k
}

func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathMetrics, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", PathMetrics, rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return fams
}

// series returns label value → value for a single-label family.
func series(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	f, ok := fams[name]
	if !ok {
		return out
	}
	for _, m := range f.GetMetric() {
		lv := ""
		for _, l := range m.GetLabel() {
			lv += l.GetValue()
		}
		var v float64
		switch {
		case m.Counter != nil:
			v = m.GetCounter().GetValue()
		case m.Gauge != nil:
			v = m.GetGauge().GetValue()
		case m.Untyped != nil:
			v = m.GetUntyped().GetValue()
		}
		out[lv] = v
	}
	return out
}

// nonzero drops the series at 0 (known reasons are exported at 0).
func nonzero(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func desired(peers ...mesh.Peer) mesh.Desired { return mesh.Desired{Peers: peers} }

func TestPeerSeriesFollowPeers(t *testing.T) {
	kA, kB, kStray := key(t, 1), key(t, 2), key(t, 3)
	hs := time.Unix(1_700_000_000, 500_000_000)
	dev := &fakeDevice{}
	m := New(Options{Interface: "wgmesh0", Backend: mesh.BackendUserspace, Stats: dev.Stats,
		Router: func() routing.Status {
			return routing.Status{IngressDropped: 7, EgressDropped: 5, Warnings: []string{"w1", "w2"}}
		}})
	h := m.Handler()

	// Before the first reconcile nothing is known about peers.
	fams := scrape(t, h)
	if got := series(fams, "wgmesh_peer_receive_bytes_total"); len(got) != 0 {
		t.Errorf("peer series before any reconcile: %v", got)
	}
	if got := series(fams, "wgmesh_device_info")["userspacewgmesh0"]; got != 1 {
		t.Errorf("wgmesh_device_info{backend=userspace,interface=wgmesh0} = %v, want 1", got)
	}
	if got := series(fams, "wgmesh_egress_dropped_packets_total")[""]; got != 5 {
		t.Errorf("wgmesh_egress_dropped_packets_total = %v, want 5", got)
	}
	if got := series(fams, "wgmesh_ingress_dropped_packets_total")[""]; got != 7 {
		t.Errorf("wgmesh_ingress_dropped_packets_total = %v, want 7", got)
	}
	if got := series(fams, "wgmesh_routing_warnings")[""]; got != 2 {
		t.Errorf("wgmesh_routing_warnings = %v, want 2", got)
	}

	m.Observe(agent.Result{Desired: desired(
		mesh.Peer{Node: "node-a", PublicKey: kA},
		mesh.Peer{Node: "node-b", PublicKey: kB},
	), Duration: 3 * time.Millisecond})
	dev.set([]device.PeerStats{
		{PublicKey: kA, ReceiveBytes: 100, TransmitBytes: 200, LastHandshake: hs},
		{PublicKey: kB, ReceiveBytes: 1, TransmitBytes: 2},
		// A peer the reconciler did not program has no node name: left out.
		{PublicKey: kStray, ReceiveBytes: 9},
	}, nil)
	fams = scrape(t, h)
	if diff := cmp.Diff(map[string]float64{"node-a": 100, "node-b": 1}, series(fams, "wgmesh_peer_receive_bytes_total")); diff != "" {
		t.Errorf("receive bytes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{"node-a": 200, "node-b": 2}, series(fams, "wgmesh_peer_transmit_bytes_total")); diff != "" {
		t.Errorf("transmit bytes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]float64{"node-a": 1_700_000_000.5, "node-b": 0}, series(fams, "wgmesh_peer_last_handshake_timestamp_seconds")); diff != "" {
		t.Errorf("last handshake (-want +got):\n%s", diff)
	}
	if got := series(fams, "wgmesh_peers")[""]; got != 2 {
		t.Errorf("wgmesh_peers = %v, want 2", got)
	}

	// node-b leaves the mesh: its series vanish with the next scrape.
	m.Observe(agent.Result{Desired: desired(mesh.Peer{Node: "node-a", PublicKey: kA})})
	dev.set([]device.PeerStats{{PublicKey: kA, ReceiveBytes: 150}}, nil)
	fams = scrape(t, h)
	if diff := cmp.Diff(map[string]float64{"node-a": 150}, series(fams, "wgmesh_peer_receive_bytes_total")); diff != "" {
		t.Errorf("receive bytes after node-b left (-want +got):\n%s", diff)
	}
	if got := series(fams, "wgmesh_peer_last_handshake_timestamp_seconds"); len(got) != 1 {
		t.Errorf("handshake series after node-b left: %v", got)
	}
	if got := series(fams, "wgmesh_peers")[""]; got != 1 {
		t.Errorf("wgmesh_peers = %v, want 1", got)
	}

	// A device read failure drops the per-peer series but not the scrape.
	dev.set(nil, errors.New("uapi socket gone"))
	fams = scrape(t, h)
	if got := series(fams, "wgmesh_peer_receive_bytes_total"); len(got) != 0 {
		t.Errorf("peer series with a failing device: %v", got)
	}
	if _, ok := fams["wgmesh_reconcile_total"]; !ok {
		t.Error("wgmesh_reconcile_total missing while the device fails")
	}
}

func TestDuplicateNodeNamesDoNotBreakScrape(t *testing.T) {
	// Derive never programs two peers for one node, but if it did the scrape
	// must still succeed rather than fail with a duplicate series error.
	kA, kB := key(t, 1), key(t, 2)
	dev := &fakeDevice{}
	dev.set([]device.PeerStats{{PublicKey: kA, ReceiveBytes: 1}, {PublicKey: kB, ReceiveBytes: 2}}, nil)
	m := New(Options{Stats: dev.Stats})
	m.Observe(agent.Result{Desired: desired(mesh.Peer{Node: "same", PublicKey: kA}, mesh.Peer{Node: "same", PublicKey: kB})})
	if got := series(scrape(t, m.Handler()), "wgmesh_peer_receive_bytes_total"); len(got) != 1 {
		t.Errorf("series for duplicated node: %v, want exactly one", got)
	}
}

func TestReconcileProblemsAndUnencrypted(t *testing.T) {
	m := New(Options{})
	h := m.Handler()
	m.Observe(agent.Result{Duration: 2 * time.Millisecond, Desired: mesh.Desired{
		Unencrypted: []string{"win-1", "win-2"},
		Problems: []mesh.Problem{
			{Node: "a", Reason: mesh.ReasonNoKey},
			{Node: "b", Reason: mesh.ReasonNoKey},
			{Node: "c", Reason: mesh.ReasonCIDROverlap},
		},
	}})
	m.Observe(agent.Result{Duration: 40 * time.Millisecond, Err: errors.New("route 10.244.2.0/24: file exists")})
	fams := scrape(t, h)
	// The second result had no problems: reasons from the first must be gone.
	if got := nonzero(series(fams, "wgmesh_problems")); len(got) != 0 {
		t.Errorf("problems after a clean Desired: %v", got)
	}
	if diff := cmp.Diff(map[string]float64{ResultSuccess: 1, ResultError: 1}, series(fams, "wgmesh_reconcile_total")); diff != "" {
		t.Errorf("reconcile_total (-want +got):\n%s", diff)
	}
	hist := fams["wgmesh_reconcile_duration_seconds"]
	if hist == nil || hist.GetMetric()[0].GetHistogram().GetSampleCount() != 2 {
		t.Errorf("reconcile_duration_seconds: %v, want 2 samples", hist)
	}
	if got := series(fams, "wgmesh_nodes_unencrypted")[""]; got != 0 {
		t.Errorf("nodes_unencrypted = %v, want 0 after the second result", got)
	}

	m.Observe(agent.Result{Desired: mesh.Desired{
		Unencrypted: []string{"win-1"},
		Problems: []mesh.Problem{{Node: "a", Reason: mesh.ReasonNoKey}, {Node: "b", Reason: mesh.ReasonNoKey},
			{Node: "c", Reason: mesh.ReasonDuplicateEndpoint}, {Node: "d", Reason: mesh.ReasonDuplicateEndpoint}},
	}})
	fams = scrape(t, h)
	if diff := cmp.Diff(map[string]float64{"NoKey": 2}, nonzero(series(fams, "wgmesh_problems"))); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
	// A shared endpoint leaves both nodes programmed: a warning, not a
	// problem that wgmesh_problems > 0 would alert on.
	if diff := cmp.Diff(map[string]float64{"DuplicateEndpoint": 2}, nonzero(series(fams, "wgmesh_warnings"))); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	if got := series(fams, "wgmesh_nodes_unencrypted")[""]; got != 1 {
		t.Errorf("nodes_unencrypted = %v, want 1", got)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	var ready bool
	var mu sync.Mutex
	m := New(Options{Ready: func() bool { mu.Lock(); defer mu.Unlock(); return ready }})
	h := m.Handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get(PathHealthz); code != http.StatusOK {
		t.Errorf("%s = %d, want 200", PathHealthz, code)
	}
	if code, _ := get(PathReadyz); code != http.StatusServiceUnavailable {
		t.Errorf("%s before ready = %d, want 503", PathReadyz, code)
	}
	m.Observe(agent.Result{Err: errors.New("configure wgmesh0: no such device")})
	if code, body := get(PathReadyz); code != http.StatusServiceUnavailable || !strings.Contains(body, "no such device") {
		t.Errorf("%s after failed apply = %d %q, want 503 naming the error", PathReadyz, code, body)
	}
	mu.Lock()
	ready = true
	mu.Unlock()
	if code, _ := get(PathReadyz); code != http.StatusOK {
		t.Errorf("%s when ready = %d, want 200", PathReadyz, code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, PathReadyz, nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST %s = %d, want 405", PathReadyz, rec.Code)
	}
}

// TestReadinessWarnings: /readyz's body carries the routing warnings after
// its verdict, ready or not, without changing the status code.
func TestReadinessWarnings(t *testing.T) {
	var ready bool
	warn := "tunnel MTU 1240 (underlay eth0 MTU 1300 − 60) < 1280 needed for IPv6: using 1280, outer packets fragment"
	m := New(Options{
		Ready:  func() bool { return ready },
		Router: func() routing.Status { return routing.Status{LinkMTU: 1280, PodMTU: 1280, Warnings: []string{warn}} },
	})
	for _, r := range []bool{false, true} {
		ready = r
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathReadyz, nil))
		want, verdict := http.StatusOK, "ok\n"
		if !r {
			want, verdict = http.StatusServiceUnavailable, "not ready: "
		}
		if body := rec.Body.String(); rec.Code != want || !strings.HasPrefix(body, verdict) || !strings.HasSuffix(body, "\nwarning: "+warn+"\n") {
			t.Errorf("ready %v: %s = %d %q, want %d starting %q and ending with the warning", r, PathReadyz, rec.Code, body, want, verdict)
		}
	}
}

var update = flag.Bool("update", false, "rewrite testdata/status.json")

// TestStatusSchema pins the /status JSON field names: `wgmesh status` and
// scripts depend on them, so a rename must fail here. The whole document is
// also compared byte for byte with testdata/status.json (-update rewrites
// it), so a change of the types behind it cannot change what is served.
func TestStatusSchema(t *testing.T) {
	kA, kSelf := key(t, 1), key(t, 9)
	hs := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	dev := &fakeDevice{}
	dev.set([]device.PeerStats{{
		PublicKey: kA, Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"),
		AllowedIPs:   []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")},
		ReceiveBytes: 10, TransmitBytes: 20, LastHandshake: hs,
	}}, nil)
	m := New(Options{
		NodeName: "node-self", Interface: "wgmesh0", Backend: mesh.BackendKernel, ListenPort: 51820, Strict: true,
		Stats: dev.Stats,
		Router: func() routing.Status {
			return routing.Status{LinkMTU: 1440, PodMTU: 1440, IngressDropped: 3, EgressDropped: 2, Warnings: []string{"src_valid_mark: read-only"}}
		},
		Offloads: func() []device.OffloadState {
			return []device.OffloadState{{Kind: device.OffloadTUNGSO, Reason: "refused", Fallbacks: 2, Since: hs}, {Kind: device.OffloadUDPGSO, Active: true}}
		},
		PublicKey: func() (mesh.Key, error) { return kSelf, nil },
		Ready:     func() bool { return true },
	})
	m.Observe(agent.Result{
		Time: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), Duration: 1500 * time.Millisecond,
		Desired: mesh.Desired{
			Peers: []mesh.Peer{{Node: "node-a", PublicKey: kA, AllowedIPs: []netip.Prefix{
				netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("198.18.0.2/32"), netip.MustParsePrefix("fd00:10:244:2::/64"),
			}}},
			HostRoutes:  []mesh.Route{{Dst: netip.MustParsePrefix("198.18.0.2/32"), Kind: mesh.ViaTunnel, Node: "node-a"}},
			PodSources:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
			Unencrypted: []string{"win-1"},
			Problems: []mesh.Problem{{Node: "node-b", Reason: mesh.ReasonDuplicateEndpoint, Detail: "shared"},
				{Node: "win-1", Reason: mesh.ReasonUnmanaged, Detail: "matches kubernetes.io/os=windows"}},
		},
	})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + PathStatus)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	golden := filepath.Join("testdata", "status.json")
	if *update {
		if err := os.WriteFile(golden, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if wantBody, err := os.ReadFile(golden); err != nil {
		t.Fatal(err)
	} else if diff := cmp.Diff(string(wantBody), string(body)); diff != "" {
		t.Errorf("/status bytes differ from %s (-want +got):\n%s", golden, diff)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	want := map[string]any{
		"apiVersion": "wgmesh.io/v1", "kind": "Status",
		"node": "node-self", "interface": "wgmesh0", "backend": "kernel",
		"publicKey": kSelf.String(), "listenPort": 51820.0,
		"linkMTU": 1440.0, "podMTU": 1440.0, "strict": true, "ready": true, "agentRunning": true,
		"conditions":            []any{},
		"lastReconcile":         map[string]any{"time": "2026-01-02T03:04:00Z", "durationSeconds": 1.5},
		"ingressDroppedPackets": 3.0,
		"egressDroppedPackets":  2.0,
		"routingWarnings":       []any{"src_valid_mark: read-only"},
		"offloads": []any{
			map[string]any{"kind": "tun_gso", "active": false, "reason": "refused", "fallbacks": 2.0, "lastFallback": "2026-01-02T03:04:05Z"},
			map[string]any{"kind": "udp_gso", "active": true, "fallbacks": 0.0},
		},
		"peers": []any{map[string]any{
			"node": "node-a", "publicKey": kA.String(), "endpoint": "198.18.0.2:51820",
			"allowedIPs":    []any{"10.244.2.0/24", "fd00:10:244:2::/64"},
			"lastHandshake": "2026-01-02T03:04:05Z", "receiveBytes": 10.0, "transmitBytes": 20.0,
		}},
		"unencryptedNodes": []any{"win-1"},
		"problems": []any{
			map[string]any{"node": "node-b", "reason": "DuplicateEndpoint", "detail": "shared", "warning": true},
			map[string]any{"node": "win-1", "reason": "Unmanaged", "detail": "matches kubernetes.io/os=windows"},
		},
		"coverage": []any{
			map[string]any{"from": "pods", "to": "remote pods", "encrypted": true, "detail": "2 pod CIDRs of 1 peers"},
			map[string]any{"from": "pods", "to": "remote node addresses", "encrypted": true,
				"detail": "1 addresses of 1 peers, from 10.244.1.0/24 (host route table), the API server and peer endpoints included"},
			map[string]any{"from": "host", "to": "remote pods", "encrypted": true,
				"detail": "from the tunnel address, or bound to this node's address (peers accept it)"},
			map[string]any{"from": "host", "to": "remote node addresses", "encrypted": false, "detail": "plaintext unless --host-encryption"},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("/status document (-want +got):\n%s", diff)
	}

	st, err := FetchStatus(context.Background(), srv.Client(), srv.URL)
	if err != nil {
		t.Fatalf("FetchStatus: %v", err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Node != "node-a" || st.Node != "node-self" {
		t.Errorf("FetchStatus = %+v", st)
	}
}

func TestFetchStatusRejectsForeignDocuments(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"apiVersion":"other/v9","kind":"Thing"}`)
	}))
	defer srv.Close()
	if _, err := FetchStatus(context.Background(), srv.Client(), srv.URL); err == nil {
		t.Error("FetchStatus accepted a document of another apiVersion")
	}
	srv404 := httptest.NewServer(http.NotFoundHandler())
	defer srv404.Close()
	if _, err := FetchStatus(context.Background(), srv404.Client(), srv404.URL); err == nil {
		t.Error("FetchStatus accepted HTTP 404")
	}
}

func TestServerRunStops(t *testing.T) {
	m := New(Options{})
	s, err := m.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	resp, err := http.Get("http://" + s.Addr().String() + PathHealthz)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := m.Listen(s.Addr().String()); err == nil {
		t.Error("second Listen on a bound port succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestClusterRangesPending: while the source still reads the cluster's
// pod ranges, /status says why and wgmesh_cluster_cidrs_pending is 1; once
// read, the field is gone and the gauge 0. Without the func the gauge is
// absent.
func TestClusterRangesPending(t *testing.T) {
	var mu sync.Mutex
	pending, why := true, "reading ConfigMap kube-system/kubeadm-config failed (2 attempts): connection refused; retrying in 4s"
	m := New(Options{ClusterRangesPending: func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return pending, why
	}})
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.ClusterCIDRsPending != why {
		t.Errorf("clusterCIDRsPending = %q, want %q", st.ClusterCIDRsPending, why)
	}
	if got := series(scrape(t, m.Handler()), "wgmesh_cluster_cidrs_pending"); got[""] != 1 {
		t.Errorf("wgmesh_cluster_cidrs_pending = %v while pending, want 1", got)
	}
	mu.Lock()
	pending, why = false, ""
	mu.Unlock()
	m.Observe(agent.Result{Desired: mesh.Desired{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}})
	st, _ = m.Status(context.Background())
	if st.ClusterCIDRsPending != "" || len(st.ClusterCIDRs) != 1 {
		t.Errorf("after the read: pending %q, ranges %v", st.ClusterCIDRsPending, st.ClusterCIDRs)
	}
	if got := series(scrape(t, m.Handler()), "wgmesh_cluster_cidrs_pending"); len(got) != 1 || got[""] != 0 {
		t.Errorf("wgmesh_cluster_cidrs_pending = %v after the read, want 0", got)
	}
	if got := series(scrape(t, New(Options{}).Handler()), "wgmesh_cluster_cidrs_pending"); len(got) != 0 {
		t.Errorf("without the func: %v, want no series", got)
	}
}
