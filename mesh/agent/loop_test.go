package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/wgmesh/wgmesh/mesh"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// rwait bounds every wait in the reconciler tests; generous for a busy
// machine and never reached when the code works.
const rwait = 10 * time.Second

// fakeSource is a Source driven by the test.
type fakeSource struct {
	mu         sync.Mutex
	nodes      []mesh.Node
	synced     bool
	changes    chan struct{}
	published  []Self
	publishErr []error // returned by successive Publish calls, then nil
	reports    [][]mesh.Problem
	reloads    int
	running    bool
	runErr     chan error // Run returns what is sent here
}

func newFakeSource(nodes ...mesh.Node) *fakeSource {
	return &fakeSource{nodes: nodes, changes: make(chan struct{}, 1), runErr: make(chan error, 1)}
}

func (s *fakeSource) Run(ctx context.Context) error {
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.runErr:
		return err
	}
}

func (s *fakeSource) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func (s *fakeSource) Nodes() []mesh.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.nodes)
}

func (s *fakeSource) Changes() <-chan struct{} { return s.changes }

func (s *fakeSource) Publish(ctx context.Context, self Self) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.published = append(s.published, self)
	if len(s.publishErr) > 0 {
		err := s.publishErr[0]
		s.publishErr = s.publishErr[1:]
		return err
	}
	return nil
}

func (s *fakeSource) Report(p []mesh.Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reports = append(s.reports, slices.Clone(p))
}

func (s *fakeSource) Reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reloads++
}

// set replaces the nodes, marks the source synced and signals Changes.
func (s *fakeSource) set(nodes ...mesh.Node) {
	s.mu.Lock()
	s.nodes, s.synced = nodes, true
	s.mu.Unlock()
	s.signal()
}

func (s *fakeSource) signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

func (s *fakeSource) publishedKeys() []mesh.Key {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []mesh.Key
	for _, p := range s.published {
		out = append(out, p.PublicKey)
	}
	return out
}

// destructive counts calls that tear down the data plane; the reconciler
// must never make them.
type destructive struct {
	mu    sync.Mutex
	calls []string
}

func (d *destructive) record(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, name)
	return nil
}

// fakeDevice records every configuration; fail decides the error of call n
// (0-based).
type fakeDevice struct {
	destructive
	mu      sync.Mutex
	configs []mesh.DeviceConfig
	fail    func(n int) error
}

func (d *fakeDevice) Configure(ctx context.Context, cfg mesh.DeviceConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.configs)
	d.configs = append(d.configs, cfg)
	if d.fail != nil {
		return d.fail(n)
	}
	return nil
}

func (d *fakeDevice) Close() error   { return d.record("device.Close") }
func (d *fakeDevice) Destroy() error { return d.record("device.Destroy") }

func (d *fakeDevice) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.configs)
}

func (d *fakeDevice) lastConfig() mesh.DeviceConfig {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.configs) == 0 {
		return mesh.DeviceConfig{}
	}
	return d.configs[len(d.configs)-1]
}

// fakeRouter records applies and keeps "OS state" the test may wipe.
type fakeRouter struct {
	destructive
	mu      sync.Mutex
	applies []time.Time
	state   *mesh.Desired
	fail    func(n int) error
}

func (r *fakeRouter) Apply(ctx context.Context, d mesh.Desired) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.applies)
	r.applies = append(r.applies, time.Now())
	if r.fail != nil {
		if err := r.fail(n); err != nil {
			return err
		}
	}
	r.state = &d
	return nil
}

func (r *fakeRouter) Cleanup(ctx context.Context) error { return r.record("router.Cleanup") }

func (r *fakeRouter) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applies)
}

func (r *fakeRouter) times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applies)
}

func (r *fakeRouter) current() *mesh.Desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

type fakeSink struct {
	mu      sync.Mutex
	results []Result
}

func (s *fakeSink) Observe(r Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results = append(s.results, r)
}

func (s *fakeSink) all() []Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.results)
}

// rig is one reconciler under test with its fakes.
type rig struct {
	src    *fakeSource
	dev    *fakeDevice
	router *fakeRouter
	sink   *fakeSink
	keys   *KeyStore
	rec    *Reconciler
	cancel context.CancelFunc
	done   chan error
}

// newRig builds a reconciler with short timings; edit adjusts the options.
func newRig(t *testing.T, src *fakeSource, edit func(*Options)) *rig {
	t.Helper()
	g := &rig{src: src, dev: &fakeDevice{}, router: &fakeRouter{}, sink: &fakeSink{},
		keys: NewKeyStore(filepath.Join(t.TempDir(), "private.key"))}
	o := Options{
		NodeName: "self", Source: src, Device: g.dev, Router: g.router, Sink: g.sink, Keys: g.keys,
		Derive:     mesh.Options{IPv4: true, IPv6: true},
		ListenPort: 51820, FwMark: 0x20000, Backend: mesh.BackendUserspace,
		Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
		Resync:   time.Hour, Debounce: 10 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if edit != nil {
		edit(&o)
	}
	rec, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	g.rec = rec
	return g
}

func (g *rig) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel, g.done = cancel, make(chan error, 1)
	go func() { g.done <- g.rec.Run(ctx) }()
	t.Cleanup(func() { g.stop(t) })
}

// stop cancels Run and waits for it; it may be called more than once.
func (g *rig) stop(t *testing.T) error {
	t.Helper()
	g.cancel()
	select {
	case err, ok := <-g.done:
		if ok {
			close(g.done)
		}
		return err
	case <-time.After(rwait):
		t.Fatal("Run did not return after cancel")
		return nil
	}
}

func recUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(rwait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func recPubKey(t *testing.T) mesh.Key {
	t.Helper()
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func recSelf() mesh.Node {
	return mesh.Node{Name: "self", Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
}

func recPeer(t *testing.T, name string, i int) mesh.Node {
	return mesh.Node{Name: name, PublicKey: recPubKey(t),
		Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 51820),
		PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)}}
}

func recPeerNames(peers []mesh.Peer) string {
	var out []string
	for _, p := range peers {
		out = append(out, p.Node)
	}
	return strings.Join(out, ",")
}

func TestNewReconcilerChecksOptions(t *testing.T) {
	_, err := New(Options{ListenPort: 51820})
	if err == nil || !strings.Contains(err.Error(), "Device, Keys, NodeName, Router, Source are required") {
		t.Errorf("err = %v", err)
	}
	src := newFakeSource()
	_, err = New(Options{NodeName: "n", Source: src, Device: &fakeDevice{}, Router: &fakeRouter{}, Keys: NewKeyStore("k")})
	if err == nil || !strings.Contains(err.Error(), "listen port 0") {
		t.Errorf("err = %v", err)
	}
}

// TestReconcilerWaitsForSync: before the source has synced nothing is
// configured, so a restarting agent does not prune the old data plane.
func TestReconcilerWaitsForSync(t *testing.T) {
	src := newFakeSource(recSelf()) // nodes known but not synced
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first publish", func() bool { return len(src.publishedKeys()) == 1 })
	time.Sleep(100 * time.Millisecond)
	if g.dev.count() != 0 || g.router.count() != 0 || g.rec.Ready() {
		t.Fatalf("before sync: %d configures, %d applies, ready=%v; want none", g.dev.count(), g.router.count(), g.rec.Ready())
	}

	src.set(recSelf(), recPeer(t, "peer-b", 2))
	recUntil(t, "the first apply", func() bool { return g.router.count() >= 1 && g.rec.Ready() })
	priv, err := g.keys.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg := g.dev.lastConfig()
	if cfg.PrivateKey != priv || cfg.ListenPort != 51820 || cfg.FwMark != 0x20000 || recPeerNames(cfg.Peers) != "peer-b" {
		t.Errorf("device config: port %d fwmark %#x peers %q, key from store %v", cfg.ListenPort, cfg.FwMark, recPeerNames(cfg.Peers), cfg.PrivateKey == priv)
	}
	if got := src.publishedKeys(); got[0] != priv.PublicKey() {
		t.Errorf("published %v, want the store's public key", got)
	}
	if last := g.rec.Last(); last.Err != nil || recPeerNames(last.Desired.Peers) != "peer-b" {
		t.Errorf("Last() = %+v", last)
	}
	if res := g.sink.all(); len(res) != 1 || res[0].Err != nil {
		t.Errorf("sink saw %d results, want one success", len(res))
	}
}

// TestReconcilerSyncWithoutSignal: a source that becomes synced without
// signalling Changes is still noticed.
func TestReconcilerSyncWithoutSignal(t *testing.T) {
	src := newFakeSource(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	src.mu.Lock()
	src.synced = true
	src.mu.Unlock()
	recUntil(t, "the first apply", func() bool { return g.router.count() >= 1 })
}

func TestReconcilerDebounces(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf())
	g := newRig(t, src, func(o *Options) { o.Debounce = 300 * time.Millisecond })
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.router.count() >= 1 })
	time.Sleep(400 * time.Millisecond) // let the change signalled by set settle
	base := g.router.count()

	nodes := []mesh.Node{recSelf()}
	for i := 2; i < 12; i++ {
		nodes = append(nodes, recPeer(t, "peer-"+string(rune('a'+i)), i))
		src.set(slices.Clone(nodes)...)
		time.Sleep(5 * time.Millisecond)
	}
	recUntil(t, "the debounced apply", func() bool {
		d := g.router.current()
		return d != nil && len(d.Peers) == 10
	})
	// Ten changes within far less than the debounce: one apply, or two if
	// the machine stalled for longer than the debounce in between.
	if n := g.router.count() - base; n > 2 {
		t.Errorf("%d applies for a burst of 10 changes, want 1 (2 at most)", n)
	}
}

// TestReconcilerResyncRepairs: state someone wiped is restored by the
// periodic resync, with no source change.
func TestReconcilerResyncRepairs(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, func(o *Options) { o.Resync = 30 * time.Millisecond })
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.router.current() != nil })
	g.router.mu.Lock()
	g.router.state = nil // "ip route flush table 51820"
	g.router.mu.Unlock()
	recUntil(t, "the resync", func() bool { d := g.router.current(); return d != nil && len(d.Peers) == 1 })
	recUntil(t, "more resyncs", func() bool { return g.dev.count() >= 3 })
}

var errRecRoute = errors.New("netlink: file exists")

func TestReconcilerBacksOffAndRecovers(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, func(o *Options) { o.MinBackoff, o.MaxBackoff = 40*time.Millisecond, 100*time.Millisecond })
	g.router.fail = func(n int) error {
		if n < 4 {
			return errRecRoute
		}
		return nil
	}
	g.start(t)
	recUntil(t, "recovery", func() bool { return g.rec.Ready() })
	times := g.router.times()
	if len(times) != 5 {
		t.Fatalf("%d applies, want 4 failures and a success", len(times))
	}
	// Delays double from MinBackoff and are capped at MaxBackoff; jitter
	// takes up to 10% off. Only lower bounds: a busy machine is slower.
	for i, want := range []time.Duration{36, 72, 90, 90} {
		if gap := times[i+1].Sub(times[i]); gap < want*time.Millisecond {
			t.Errorf("retry %d after %v, want at least %vms", i+1, gap, want)
		}
	}
	// Every failed attempt still configured the device.
	if g.dev.count() != 5 {
		t.Errorf("device configured %d times, want 5", g.dev.count())
	}
	res := g.sink.all()
	if len(res) != 5 || !errors.Is(res[0].Err, errRecRoute) || res[4].Err != nil {
		t.Errorf("sink results: %d, first err %v, last err %v", len(res), res[0].Err, res[len(res)-1].Err)
	}
	if !strings.Contains(res[0].Err.Error(), "apply routes") {
		t.Errorf("error %q does not say what failed", res[0].Err)
	}
}

// TestReconcilerDeviceFailureStillRoutes: a failing device does not stop the
// router (converge as far as possible), and both are retried.
func TestReconcilerDeviceFailureStillRoutes(t *testing.T) {
	errDev := errors.New("uapi: no such device")
	src := newFakeSource()
	src.set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.dev.fail = func(n int) error {
		if n == 0 {
			return errDev
		}
		return nil
	}
	g.start(t)
	recUntil(t, "recovery", func() bool { return g.rec.Ready() })
	res := g.sink.all()
	if len(res) < 2 || !errors.Is(res[0].Err, errDev) || g.router.count() < 2 {
		t.Fatalf("results %d, first %v, router applies %d", len(res), res[0].Err, g.router.count())
	}
	if !strings.Contains(res[0].Err.Error(), "configure the WireGuard device") {
		t.Errorf("error %q does not say what failed", res[0].Err)
	}
}

func TestBackoff(t *testing.T) {
	r, err := New(Options{NodeName: "n", Source: newFakeSource(), Device: &fakeDevice{}, Router: &fakeRouter{},
		Keys: NewKeyStore("k"), ListenPort: 1})
	if err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: 30 * time.Second, 1000: 30 * time.Second} {
		for range 20 {
			if got := r.backoff(n); got > want || got < want*9/10 {
				t.Errorf("backoff(%d) = %v, want %v minus at most 10%%", n, got, want)
			}
		}
	}
	// A cap below the first delay (the kubeadm read's Forbidden cap set
	// low) is raised to it: the first delay is never cut.
	for _, n := range []int{1, 3} {
		if got := Backoff(n, time.Minute, time.Second); got > time.Minute || got < 54*time.Second {
			t.Errorf("Backoff(%d, 1m, 1s) = %v, want 1m minus at most 10%%", n, got)
		}
	}
}

// TestReconcilerBadNodeDoesNotBlockOthers: nodes Derive rejects become
// reported problems; the good peers are configured and the apply succeeds.
func TestReconcilerBadNodeDoesNotBlockOthers(t *testing.T) {
	good := recPeer(t, "peer-b", 2)
	keyless := recPeer(t, "peer-c", 3)
	keyless.PublicKey = mesh.Key{}
	clash := recPeer(t, "peer-d", 4)
	clash.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24")}
	clash2 := recPeer(t, "peer-e", 5)
	src := newFakeSource()
	src.set(recSelf(), good, keyless, clash, clash2)
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the apply", func() bool { return g.rec.Ready() })
	if got := recPeerNames(g.dev.lastConfig().Peers); got != "peer-b,peer-d,peer-e" {
		// peer-d and peer-e stay peers; only their contested prefix is
		// withheld.
		t.Errorf("configured peers %q", got)
	}
	src.mu.Lock()
	reports := src.reports
	src.mu.Unlock()
	reasons := map[string][]mesh.Reason{}
	for _, p := range reports[len(reports)-1] {
		reasons[p.Node] = append(reasons[p.Node], p.Reason)
	}
	if !slices.Contains(reasons["peer-c"], mesh.ReasonNoKey) {
		t.Errorf("no NoKey problem for peer-c: %v", reasons)
	}
	if !slices.Contains(reasons["peer-d"], mesh.ReasonCIDROverlap) && !slices.Contains(reasons["peer-e"], mesh.ReasonCIDROverlap) {
		t.Errorf("no CIDROverlap problem for peer-d/peer-e: %v", reasons)
	}
	for _, p := range g.dev.lastConfig().Peers {
		if p.Node != "peer-b" && slices.Contains(p.AllowedIPs, netip.MustParsePrefix("10.244.5.0/24")) {
			t.Errorf("contested prefix programmed for %s", p.Node)
		}
	}
}

// TestReconcilerKeyRotation: `wgmesh rotate-key` (another process renaming a
// new key file into place) reconfigures the device and republishes.
func TestReconcilerKeyRotation(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() && len(src.publishedKeys()) == 1 })
	old := g.dev.lastConfig().PrivateKey

	newPriv, err := NewKeyStore(g.keys.Path()).Rotate()
	if err != nil {
		t.Fatal(err)
	}
	recUntil(t, "the new key on the device", func() bool { return g.dev.lastConfig().PrivateKey == newPriv })
	recUntil(t, "the new public key published", func() bool {
		k := src.publishedKeys()
		return k[len(k)-1] == newPriv.PublicKey()
	})
	if old == newPriv {
		t.Fatal("Rotate returned the old key")
	}
	if recPeerNames(g.dev.lastConfig().Peers) != "peer-b" {
		t.Errorf("peers lost in the rotation: %q", recPeerNames(g.dev.lastConfig().Peers))
	}
}

// TestReconcilerReload: Reload (SIGHUP) nudges the source and reconciles
// even though nothing changed.
func TestReconcilerReload(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	n := g.router.count()
	g.rec.Reload()
	recUntil(t, "the reload", func() bool {
		src.mu.Lock()
		defer src.mu.Unlock()
		return src.reloads == 1
	})
	recUntil(t, "a reconcile after the reload", func() bool { return g.router.count() > n })
}

// TestReconcilerKeyFileBroken: a key file that becomes unreadable keeps the
// key in use.
func TestReconcilerKeyFileBroken(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	key := g.dev.lastConfig().PrivateKey
	if err := os.WriteFile(g.keys.Path(), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := g.router.count()
	g.rec.Reload()
	recUntil(t, "a reconcile after the reload", func() bool { return g.router.count() > n })
	if g.dev.lastConfig().PrivateKey != key || len(src.publishedKeys()) != 1 {
		t.Error("a broken key file changed the key in use")
	}
}

func TestReconcilerPublishRetries(t *testing.T) {
	src := newFakeSource()
	src.publishErr = []error{errors.New("apiserver unavailable"), errors.New("apiserver unavailable")}
	src.set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "three publishes", func() bool { return len(src.publishedKeys()) == 3 })
	time.Sleep(200 * time.Millisecond) // more than MaxBackoff: no further publish
	if n := len(src.publishedKeys()); n != 3 {
		t.Errorf("%d publishes, want 3 (two failures, one success)", n)
	}
}

// TestReconcilerShutdownLeavesState: cancelling Run stops the source and
// returns nil without any teardown call.
func TestReconcilerShutdownLeavesState(t *testing.T) {
	src := newFakeSource()
	src.set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	if err := g.stop(t); err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
	src.mu.Lock()
	running := src.running
	src.mu.Unlock()
	if running {
		t.Error("the source's Run still runs after Run returned")
	}
	if len(g.dev.calls)+len(g.router.calls) != 0 {
		t.Errorf("teardown calls on shutdown: %v %v", g.dev.calls, g.router.calls)
	}
	if g.router.current() == nil {
		t.Error("router state gone")
	}
	if err := g.rec.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestReconcilerSourceStops(t *testing.T) {
	src := newFakeSource()
	g := newRig(t, src, nil)
	g.start(t)
	errWatch := errors.New("watch failed for good")
	src.runErr <- errWatch
	select {
	case err := <-g.done:
		close(g.done)
		if !errors.Is(err, errWatch) {
			t.Errorf("Run = %v, want the source's error", err)
		}
	case <-time.After(rwait):
		t.Fatal("Run did not return when the source stopped")
	}
}

func TestReconcilerRefusesExposedKey(t *testing.T) {
	src := newFakeSource()
	g := newRig(t, src, nil)
	priv, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g.keys.Path(), []byte(priv.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err = g.rec.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), g.keys.Path()) {
		t.Fatalf("Run = %v, want an error naming the key file", err)
	}
	if strings.Contains(err.Error(), priv.String()) {
		t.Error("private key in the error")
	}
	if g.dev.count() != 0 {
		t.Error("device configured without a key")
	}
}

// rangedSource is a fakeSource that knows the cluster's pod ranges.
type rangedSource struct {
	*fakeSource
	ranges []netip.Prefix
}

func (s rangedSource) ClusterCIDRs() []netip.Prefix { return s.ranges }

// TestReconcilerAddsSourceClusterRanges: the source's ranges (peers file,
// cluster configuration) add to the flag's, so the first apply with only
// the local node known already drops the rest of the range.
func TestReconcilerAddsSourceClusterRanges(t *testing.T) {
	src := rangedSource{fakeSource: newFakeSource(), ranges: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/48")}}
	g := newRig(t, src.fakeSource, func(o *Options) {
		o.Source = src
		o.Derive.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	})
	g.start(t)
	src.set(recSelf())
	recUntil(t, "the first apply", func() bool { return g.router.current() != nil })
	d := g.router.current()
	if got := fmt.Sprint(d.ClusterCIDRs); got != "[10.244.0.0/16 fd00:10:244::/48]" {
		t.Errorf("cluster ranges in force %s, want the flag's and the source's", got)
	}
	want := map[string]string{"10.244.0.0/16": "unreachable", "fd00:10:244::/48": "unreachable", "10.244.1.0/24": "throw"}
	for _, r := range d.Routes {
		if k, ok := want[r.Dst.String()]; ok && k == r.Kind.String() {
			delete(want, r.Dst.String())
		}
	}
	if len(want) > 0 {
		t.Errorf("routes %v lack %v", d.Routes, want)
	}
}
