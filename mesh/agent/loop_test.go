package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/agent/agenttest"
)

// rwait bounds every wait in the reconciler tests; generous for a busy
// machine and never reached when the code works.
const rwait = 10 * time.Second

// rig is one reconciler under test with its fakes.
type rig struct {
	src    *agenttest.Source
	dev    *agenttest.Device
	router *agenttest.Router
	sink   *agenttest.Sink
	keys   *agent.KeyStore
	rec    *agent.Reconciler
	cancel context.CancelFunc
	done   chan error
}

// newRig builds a reconciler with short timings; edit adjusts the options.
func newRig(t *testing.T, src *agenttest.Source, edit func(*agent.Options)) *rig {
	t.Helper()
	g := &rig{src: src, dev: &agenttest.Device{}, router: &agenttest.Router{}, sink: &agenttest.Sink{},
		keys: agent.NewKeyStore(filepath.Join(t.TempDir(), "private.key"))}
	key, _, err := g.keys.LoadOrCreate()
	if err != nil {
		t.Fatal(err)
	}
	o := agent.Options{
		NodeName: "self", Nodes: src, Publisher: src, Device: g.dev, Router: g.router, Sink: g.sink, Key: key, Keys: g.keys,
		Derive:     mesh.DeriveOptions{IPv4: true, IPv6: true},
		ListenPort: 51820, FwMark: 0x20000, Backend: mesh.BackendUserspace,
		Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
		Resync:   time.Hour, Debounce: 10 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if edit != nil {
		edit(&o)
	}
	rec, err := agent.New(o)
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
	_, err := agent.New(agent.Options{ListenPort: 51820})
	if err == nil || !strings.Contains(err.Error(), "Device, Key, Keys, NodeName, Nodes, Publisher, Router are required") {
		t.Errorf("err = %v", err)
	}
	src := agenttest.NewSource()
	ok := agent.Options{NodeName: "n", Nodes: src, Publisher: src, Device: &agenttest.Device{}, Router: &agenttest.Router{},
		Key: mesh.Key{1}, Keys: agent.NewKeyStore("k"), ListenPort: 51820, Derive: mesh.DeriveOptions{IPv4: true}}
	if _, err := agent.New(ok); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*agent.Options)
		want string
	}{
		{"port 0", func(o *agent.Options) { o.ListenPort = 0 }, "ListenPort 0: want 1-65535"},
		{"port 65536", func(o *agent.Options) { o.ListenPort = 65536 }, "ListenPort 65536: want 1-65535"},
		{"no family", func(o *agent.Options) { o.Derive.IPv4 = false }, "IPv4/IPv6: both disabled"},
	} {
		o := ok
		tc.mod(&o)
		if _, err := agent.New(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestReconcilerWaitsForSync: before the source has synced nothing is
// configured, so a restarting agent does not prune the old data plane.
func TestReconcilerWaitsForSync(t *testing.T) {
	src := agenttest.NewSource(recSelf()) // nodes known but not synced
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first publish", func() bool { return len(src.PublishedKeys()) == 1 })
	time.Sleep(100 * time.Millisecond)
	if g.dev.Count() != 0 || g.router.Count() != 0 || g.rec.Ready() {
		t.Fatalf("before sync: %d configures, %d applies, ready=%v; want none", g.dev.Count(), g.router.Count(), g.rec.Ready())
	}

	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	recUntil(t, "the first apply", func() bool { return g.router.Count() >= 1 && g.rec.Ready() })
	priv, err := g.keys.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg := g.dev.Last()
	if cfg.PrivateKey != priv || cfg.ListenPort != 51820 || cfg.FwMark != 0x20000 || recPeerNames(cfg.Peers) != "peer-b" {
		t.Errorf("device config: port %d fwmark %#x peers %q, key from store %v", cfg.ListenPort, cfg.FwMark, recPeerNames(cfg.Peers), cfg.PrivateKey == priv)
	}
	if got := src.PublishedKeys(); got[0] != priv.PublicKey() {
		t.Errorf("published %v, want the store's public key", got)
	}
	if last := g.rec.Last(); last.Err != nil || recPeerNames(last.Desired.Peers) != "peer-b" {
		t.Errorf("Last() = %+v", last)
	}
	if res := g.sink.Results(); len(res) != 1 || res[0].Err != nil {
		t.Errorf("sink saw %d results, want one success", len(res))
	}
}

// TestReconcilerSyncWithoutSignal: a source that becomes synced without
// signalling Changes is still noticed.
func TestReconcilerSyncWithoutSignal(t *testing.T) {
	src := agenttest.NewSource(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	src.SetSynced(true)
	recUntil(t, "the first apply", func() bool { return g.router.Count() >= 1 })
}

func TestReconcilerDebounces(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf())
	g := newRig(t, src, func(o *agent.Options) { o.Debounce = 300 * time.Millisecond })
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.router.Count() >= 1 })
	time.Sleep(400 * time.Millisecond) // let the change signalled by set settle
	base := g.router.Count()

	nodes := []mesh.Node{recSelf()}
	for i := 2; i < 12; i++ {
		nodes = append(nodes, recPeer(t, "peer-"+string(rune('a'+i)), i))
		src.Set(slices.Clone(nodes)...)
		time.Sleep(5 * time.Millisecond)
	}
	recUntil(t, "the debounced apply", func() bool {
		d := g.router.Current()
		return d != nil && len(d.Peers) == 10
	})
	// Ten changes within far less than the debounce: one apply, or two if
	// the machine stalled for longer than the debounce in between.
	if n := g.router.Count() - base; n > 2 {
		t.Errorf("%d applies for a burst of 10 changes, want 1 (2 at most)", n)
	}
}

// TestReconcilerResyncRepairs: state someone wiped is restored by the
// periodic resync, with no source change.
func TestReconcilerResyncRepairs(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, func(o *agent.Options) { o.Resync = 30 * time.Millisecond })
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.router.Current() != nil })
	g.router.Wipe() // "ip route flush table 51820"
	recUntil(t, "the resync", func() bool { d := g.router.Current(); return d != nil && len(d.Peers) == 1 })
	recUntil(t, "more resyncs", func() bool { return g.dev.Count() >= 3 })
}

var errRecRoute = errors.New("netlink: file exists")

func TestReconcilerBacksOffAndRecovers(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, func(o *agent.Options) { o.MinBackoff, o.MaxBackoff = 40*time.Millisecond, 100*time.Millisecond })
	g.router.SetFail(func(n int) error {
		if n < 4 {
			return errRecRoute
		}
		return nil
	})
	g.start(t)
	recUntil(t, "recovery", func() bool { return g.rec.Ready() })
	times := g.router.Times()
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
	if g.dev.Count() != 5 {
		t.Errorf("device configured %d times, want 5", g.dev.Count())
	}
	res := g.sink.Results()
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
	src := agenttest.NewSource()
	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.dev.SetFail(func(n int) error {
		if n == 0 {
			return errDev
		}
		return nil
	})
	g.start(t)
	recUntil(t, "recovery", func() bool { return g.rec.Ready() })
	res := g.sink.Results()
	if len(res) < 2 || !errors.Is(res[0].Err, errDev) || g.router.Count() < 2 {
		t.Fatalf("results %d, first %v, router applies %d", len(res), res[0].Err, g.router.Count())
	}
	if !strings.Contains(res[0].Err.Error(), "configure the WireGuard device") {
		t.Errorf("error %q does not say what failed", res[0].Err)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: 30 * time.Second, 1000: 30 * time.Second} {
		for range 20 {
			if got := agent.Backoff(n, agent.DefaultMinBackoff, agent.DefaultMaxBackoff); got > want || got < want*9/10 {
				t.Errorf("backoff(%d) = %v, want %v minus at most 10%%", n, got, want)
			}
		}
	}
	// A cap below the first delay (the kubeadm read's Forbidden cap set
	// low) is raised to it: the first delay is never cut.
	for _, n := range []int{1, 3} {
		if got := agent.Backoff(n, time.Minute, time.Second); got > time.Minute || got < 54*time.Second {
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
	src := agenttest.NewSource()
	src.Set(recSelf(), good, keyless, clash, clash2)
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the apply", func() bool { return g.rec.Ready() })
	if got := recPeerNames(g.dev.Last().Peers); got != "peer-b,peer-d,peer-e" {
		// peer-d and peer-e stay peers; only their contested prefix is
		// withheld.
		t.Errorf("configured peers %q", got)
	}
	reports := src.Reports()
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
	for _, p := range g.dev.Last().Peers {
		if p.Node != "peer-b" && slices.Contains(p.AllowedIPs, netip.MustParsePrefix("10.244.5.0/24")) {
			t.Errorf("contested prefix programmed for %s", p.Node)
		}
	}
}

// TestReconcilerKeyRotation: `wgmesh rotate-key` (another process renaming a
// new key file into place) reconfigures the device and republishes.
func TestReconcilerKeyRotation(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() && len(src.PublishedKeys()) == 1 })
	old := g.dev.Last().PrivateKey

	newPriv, err := agent.NewKeyStore(g.keys.Path()).Rotate()
	if err != nil {
		t.Fatal(err)
	}
	recUntil(t, "the new key on the device", func() bool { return g.dev.Last().PrivateKey == newPriv })
	recUntil(t, "the new public key published", func() bool {
		k := src.PublishedKeys()
		return k[len(k)-1] == newPriv.PublicKey()
	})
	if old == newPriv {
		t.Fatal("Rotate returned the old key")
	}
	if recPeerNames(g.dev.Last().Peers) != "peer-b" {
		t.Errorf("peers lost in the rotation: %q", recPeerNames(g.dev.Last().Peers))
	}
}

// TestReconcilerReload: Reload (SIGHUP) nudges the source and reconciles
// even though nothing changed.
func TestReconcilerReload(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	n := g.router.Count()
	g.rec.Reload()
	recUntil(t, "the reload", func() bool {
		return src.Reloads() == 1
	})
	recUntil(t, "a reconcile after the reload", func() bool { return g.router.Count() > n })
}

// TestReconcilerKeyFileBroken: a key file that becomes unreadable keeps the
// key in use.
func TestReconcilerKeyFileBroken(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	key := g.dev.Last().PrivateKey
	if err := os.WriteFile(g.keys.Path(), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := g.router.Count()
	g.rec.Reload()
	recUntil(t, "a reconcile after the reload", func() bool { return g.router.Count() > n })
	if g.dev.Last().PrivateKey != key || len(src.PublishedKeys()) != 1 {
		t.Error("a broken key file changed the key in use")
	}
}

func TestReconcilerPublishRetries(t *testing.T) {
	src := agenttest.NewSource()
	src.FailPublish(errors.New("apiserver unavailable"), errors.New("apiserver unavailable"))
	src.Set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "three publishes", func() bool { return len(src.PublishedKeys()) == 3 })
	time.Sleep(200 * time.Millisecond) // more than MaxBackoff: no further publish
	if n := len(src.PublishedKeys()); n != 3 {
		t.Errorf("%d publishes, want 3 (two failures, one success)", n)
	}
}

// TestReconcilerShutdownLeavesState: cancelling Run stops the source and
// returns nil without any teardown call.
func TestReconcilerShutdownLeavesState(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf(), recPeer(t, "peer-b", 2))
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first apply", func() bool { return g.rec.Ready() })
	if err := g.stop(t); err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
	running := src.Running()
	if running {
		t.Error("the source's Run still runs after Run returned")
	}
	if len(g.dev.Destructive())+len(g.router.Destructive()) != 0 {
		t.Errorf("teardown calls on shutdown: %v %v", g.dev.Destructive(), g.router.Destructive())
	}
	if g.router.Current() == nil {
		t.Error("router state gone")
	}
	if err := g.rec.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

func TestReconcilerSourceStops(t *testing.T) {
	src := agenttest.NewSource()
	g := newRig(t, src, nil)
	g.start(t)
	errWatch := errors.New("watch failed for good")
	src.Stop(errWatch)
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

// rangedSource is a fakeSource that knows the cluster's pod ranges.
type rangedSource struct {
	*agenttest.Source
	ranges []netip.Prefix
}

func (s rangedSource) ClusterCIDRs() []netip.Prefix { return s.ranges }

// TestReconcilerAddsSourceClusterRanges: the source's ranges (peers file,
// cluster configuration) add to the flag's, so the first apply with only
// the local node known already drops the rest of the range.
func TestReconcilerAddsSourceClusterRanges(t *testing.T) {
	src := rangedSource{Source: agenttest.NewSource(), ranges: []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/48")}}
	g := newRig(t, src.Source, func(o *agent.Options) {
		o.Nodes = src
		o.Derive.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	})
	g.start(t)
	src.Set(recSelf())
	recUntil(t, "the first apply", func() bool { return g.router.Current() != nil })
	d := g.router.Current()
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

// TestReconcilerRepublishes: when the Publisher says what it published was
// undone, the loop publishes again, and it alone retries a failure (the
// Publisher makes one attempt per call).
func TestReconcilerRepublishes(t *testing.T) {
	src := agenttest.NewSource()
	src.Set(recSelf())
	g := newRig(t, src, nil)
	g.start(t)
	recUntil(t, "the first publish", func() bool { return len(src.Published()) == 1 && g.rec.Ready() })

	src.FailPublish(errors.New("apiserver unavailable"))
	src.SignalRepublish()
	recUntil(t, "the republish, retried after its failure", func() bool { return len(src.Published()) == 3 })
	keys := src.PublishedKeys()
	if keys[1] != keys[0] || keys[2] != keys[0] {
		t.Errorf("republished keys %v, want the key in use %v each time", keys, keys[0])
	}
	if got := g.rec.PublicKey(); got != keys[0] {
		t.Errorf("PublicKey() = %v, want the published %v", got, keys[0])
	}
}
