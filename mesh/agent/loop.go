// Package agent runs one node's part of the mesh: the reconcile loop
// (Reconciler) that turns a source's nodes into a WireGuard configuration
// and routes with mesh.Derive, the key store that keeps the node's private
// key on disk, and the ports the loop reaches the world through: a
// NodeSource it reads, a Publisher it announces this node through, a Device
// and a Router it applies to. Adapters live elsewhere: mesh/kube and
// mesh/file are sources, device and routing the data plane, mesh/metrics a
// StatusSink. The pure model and Derive stay in package mesh.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/wgmesh/wgmesh/internal/option"
	"github.com/wgmesh/wgmesh/mesh"
)

// Defaults for the zero values of Options.
const (
	// DefaultResync is the period of the full reconcile that repairs state
	// someone changed by hand (a deleted route, a removed peer).
	DefaultResync = 30 * time.Second
	// DefaultDebounce coalesces a burst of source changes (a rollout touching
	// hundreds of Nodes) into one reconcile, and bounds the delay of a change.
	DefaultDebounce = 200 * time.Millisecond
	// DefaultMinBackoff is the first retry delay after a failed apply or
	// publish; it doubles per consecutive failure.
	DefaultMinBackoff = time.Second
	// DefaultMaxBackoff caps the retry delay: a failure is retried at least
	// this often, so a repaired system converges within it.
	DefaultMaxBackoff = 30 * time.Second
)

// syncPoll is how often the loop checks NodeSource.Synced before the first sync,
// for sources that do not signal Changes when they become synced.
const syncPoll = time.Second

// Options configure a Reconciler. NodeName, Nodes, Publisher, Device,
// Router, Key and Keys are required.
type Options struct {
	// NodeName is the local node's name in the source.
	NodeName string
	// Nodes is what the loop reads; Publisher is what it announces this node
	// and the problems through. One Source usually serves as both.
	Nodes     NodeSource
	Publisher Publisher
	Device    Device
	Router    Router
	// Sink receives every reconcile Result; optional.
	Sink StatusSink
	// Key is the private key at start, as Keys.LoadOrCreate returned it:
	// the caller reads it before changing the host, so that a bad key file
	// fails the start with nothing changed. From then on the Reconciler
	// holds the key in use (PublicKey).
	Key mesh.Key
	// Keys is the key file, watched for rotations (`wgmesh rotate-key`).
	Keys *KeyStore
	// Derive steers Derive.
	Derive mesh.DeriveOptions
	// ListenPort is the device's UDP port.
	ListenPort int
	// FwMark marks the device's encrypted packets so they skip the wgmesh
	// routing table.
	FwMark uint32
	// Endpoint is published as this node's endpoint; the zero value lets the
	// source choose (the Node's InternalIP).
	Endpoint netip.AddrPort
	// Backend is published as this node's backend.
	Backend mesh.Backend
	// Resync is the full reconcile period; 0 means DefaultResync.
	Resync time.Duration
	// Debounce is the delay between a source change and the reconcile; 0
	// means DefaultDebounce.
	Debounce time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after failures; 0 means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Reconciler is the agent's control loop: it derives the desired state from
// the NodeSource's nodes and the local key, and makes the Device and the Router
// match it, on every change, every Resync and after every key rotation.
//
// Its rules:
//   - nothing is applied before NodeSource.Synced: an agent restarting next to a
//     working data plane must not prune peers and routes it has not yet
//     learned again (the old state keeps forwarding, encrypted);
//   - a failed apply is retried with exponential backoff, and both the device
//     and the router are always attempted (converge as far as possible);
//   - the public key is published at start, after every rotation and when the
//     Publisher reports it undone (Republisher), retried with backoff until it
//     succeeds. The loop is the only layer that retries a publish: it alone
//     knows a failure is stale state (the PublishFailed condition) and it
//     retries sooner when the source changes (the peers file got the key).
//   - Run never tears down the data plane: on shutdown the interface, peers
//     and routes stay, so packets keep flowing encrypted or are dropped, and
//     the next agent takes over. Removal is `wgmesh cleanup`'s business.
type Reconciler struct {
	o      Options
	log    *slog.Logger
	reload chan struct{}

	running atomic.Bool
	ready   atomic.Bool

	mu   sync.Mutex
	last Result
	key  mesh.Key // the private key in use; the loop's copy is l.key
	// pubErr is the last publish failure, nil after a success; pubSince
	// is when the failures began.
	pubErr   error
	pubSince time.Time
}

// ValidateListenPort is the rule for the device's UDP port: 1-65535 (0
// would let the kernel pick one, which no peer could know). The error wraps
// an *option.Error naming ListenPort.
func ValidateListenPort(port int) error {
	if port < 1 || port > 65535 {
		return option.Errorf("ListenPort", port, "want 1-65535")
	}
	return nil
}

// New checks o (the required ports and key, ValidateListenPort and
// mesh.DeriveOptions.Validate for o.Derive) and fills its defaults.
func New(o Options) (*Reconciler, error) {
	var missing []string
	for name, isNil := range map[string]bool{
		"NodeName": o.NodeName == "", "Nodes": o.Nodes == nil, "Publisher": o.Publisher == nil,
		"Device": o.Device == nil, "Router": o.Router == nil, "Key": o.Key.IsZero(), "Keys": o.Keys == nil,
	} {
		if isNil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("reconciler: options %s are required", strings.Join(missing, ", "))
	}
	if err := ValidateListenPort(o.ListenPort); err != nil {
		return nil, fmt.Errorf("reconciler: %w", err)
	}
	if err := o.Derive.Validate(); err != nil {
		return nil, fmt.Errorf("reconciler: %w", err)
	}
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{
		o:      o,
		key:    o.Key,
		log:    log.With("component", "reconciler", "node", o.NodeName),
		reload: make(chan struct{}, 1),
	}, nil
}

// Reload re-reads the key file and asks the source to re-read its input (if
// it is a Reloader), then reconciles: the SIGHUP handler. It never
// blocks and may be called before Run.
func (r *Reconciler) Reload() {
	select {
	case r.reload <- struct{}{}:
	default:
	}
}

// PublicKey returns the public key of the private key in use: the one the
// device has (or is about to get) and the one published. It follows
// rotations once the loop has picked them up.
func (r *Reconciler) PublicKey() mesh.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.key.PublicKey()
}

// Ready reports whether the source has synced and the last apply succeeded.
func (r *Reconciler) Ready() bool { return r.ready.Load() }

// Conditions returns why the configuration in force is stale, oldest
// first: the source's current input is not in force or disagrees with this
// agent (sources implementing StateReporter), or publishing this node's
// identity fails. Empty when the agent runs what its input asks for. The
// agent is not ready while any condition holds (see cmd/wgmesh).
func (r *Reconciler) Conditions() []Condition {
	var cs []Condition
	if sr, ok := r.o.Nodes.(StateReporter); ok {
		st := sr.State()
		if st.Err != nil {
			cs = append(cs, Condition{Reason: ConditionSourceInvalid, Message: st.Err.Error(), Since: st.FailingSince})
		}
		if st.SelfErr != nil {
			cs = append(cs, Condition{Reason: ConditionSelfMismatch, Message: st.SelfErr.Error()})
		}
	}
	r.mu.Lock()
	if r.pubErr != nil {
		cs = append(cs, Condition{Reason: ConditionPublishFailed, Message: r.pubErr.Error(), Since: r.pubSince})
	}
	r.mu.Unlock()
	slices.SortStableFunc(cs, func(a, b Condition) int { return a.Since.Compare(b.Since) })
	return cs
}

// Last returns the result of the last reconcile (the zero Result before the
// first one).
func (r *Reconciler) Last() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Run runs the NodeSource and reconciles until ctx is done; then it returns
// nil, leaving the data plane in place. Run starts Nodes.Run itself: callers
// must not run the source. It returns an error if the source stops on its
// own. Run may be called only once.
func (r *Reconciler) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("reconciler: Run called twice")
	}
	priv := r.o.Key

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srcDone := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		srcDone <- r.o.Nodes.Run(ctx)
	}()

	l := &loop{r: r, key: priv, needPublish: true}
	return l.run(ctx, srcDone)
}

// loop is the state of one Run, owned by its goroutine.
type loop struct {
	r   *Reconciler
	key mesh.Key

	keyWatch   *fsnotify.Watcher
	keyErr     string // last key file error logged, to log each distinct one once
	synced     bool
	waitLogged bool

	failures    int // consecutive failed applies
	needPublish bool
	pubFailures int
	lastDesired *mesh.Desired

	debounce, retry, publish, keyDebounce *time.Timer
	debounceArmed                         bool
}

func (l *loop) run(ctx context.Context, srcDone <-chan error) error {
	r := l.r
	l.keyWatch = l.watchKey()
	defer func() {
		if l.keyWatch != nil {
			l.keyWatch.Close()
		}
	}()
	l.debounce, l.retry, l.publish, l.keyDebounce = stopped(), stopped(), stopped(), stopped()
	defer func() {
		for _, t := range []*time.Timer{l.debounce, l.retry, l.publish, l.keyDebounce} {
			t.Stop()
		}
	}()
	resync := time.NewTicker(r.o.Resync)
	defer resync.Stop()

	var keyEvents <-chan fsnotify.Event
	var keyErrs <-chan error
	if l.keyWatch != nil {
		keyEvents, keyErrs = l.keyWatch.Events, l.keyWatch.Errors
	}
	var republish <-chan struct{}
	if rp, ok := r.o.Publisher.(Republisher); ok {
		republish = rp.Republish()
	}

	l.doPublish(ctx)
	l.reconcile(ctx)
	for {
		select {
		case <-ctx.Done():
			r.log.Info("stopping; the WireGuard interface, peers and routes stay in place")
			return nil
		case err := <-srcDone:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("it returned without error")
			}
			return fmt.Errorf("reconciler: the node source stopped: %w", err)
		case <-r.o.Nodes.Changes():
			// A publish waiting for its backoff may succeed now (the peers
			// file got this node's new key): try at once, so that the
			// PublishFailed condition clears with the fix.
			if l.needPublish && l.pubFailures > 0 {
				l.publish.Stop()
				l.doPublish(ctx)
			}
			l.changed()
		case <-l.debounce.C:
			l.debounceArmed = false
			l.reconcile(ctx)
		case <-l.retry.C:
			l.reconcile(ctx)
		case <-resync.C:
			l.checkKey(ctx)
			if l.failures == 0 {
				l.reconcile(ctx)
			}
		case <-l.publish.C:
			l.doPublish(ctx)
		case <-republish:
			// What was published was undone: publish again, unless a
			// retry is already pending (it publishes the same Self).
			if !l.needPublish {
				r.log.Info("this node's published identity was changed by someone else; publishing it again")
				l.needPublish, l.pubFailures = true, 0
				l.doPublish(ctx)
			}
		case ev, ok := <-keyEvents:
			if !ok {
				keyEvents = nil
				continue
			}
			if l.keyFileEvent(ev.Name) {
				l.keyDebounce.Reset(r.o.Debounce)
			}
		case err, ok := <-keyErrs:
			if !ok {
				keyErrs = nil
				continue
			}
			r.log.Warn("key file watch error; checking the key file", "error", err)
			l.keyDebounce.Reset(r.o.Debounce)
		case <-l.keyDebounce.C:
			l.checkKey(ctx)
		case <-r.reload:
			r.log.Info("reload requested: re-reading the key file and the node source")
			if s, ok := r.o.Nodes.(Reloader); ok {
				s.Reload()
			}
			if !l.checkKey(ctx) {
				l.reconcile(ctx)
			}
		}
	}
}

// stopped returns a timer that has not been started.
func stopped() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// changed handles a source change: reconcile after the debounce, unless a
// failure's backoff is pending (the retry will use the latest nodes).
func (l *loop) changed() {
	if l.failures > 0 || l.debounceArmed {
		return
	}
	l.debounceArmed = true
	l.debounce.Reset(l.r.o.Debounce)
}

// watchKey watches the key file's directory, where `wgmesh rotate-key`
// renames a new file over the old one (and a Secret volume swaps a
// symlink). Without a watch, rotations are still noticed on Reload and on
// every resync.
func (l *loop) watchKey() *fsnotify.Watcher {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		l.r.log.Warn("cannot watch the key file; key rotations are noticed on SIGHUP and every resync", "error", err)
		return nil
	}
	if err := w.Add(filepath.Dir(l.r.o.Keys.Path())); err != nil {
		w.Close()
		l.r.log.Warn("cannot watch the key file's directory; key rotations are noticed on SIGHUP and every resync", "error", err)
		return nil
	}
	return w
}

func (l *loop) keyFileEvent(name string) bool {
	base := filepath.Base(name)
	return base == filepath.Base(l.r.o.Keys.Path()) || strings.HasPrefix(base, "..")
}

// checkKey re-reads the key file; when the key changed it reconfigures the
// device and publishes the new public key, and reports true. A file that
// cannot be read keeps the current key (logged once per distinct error).
func (l *loop) checkKey(ctx context.Context) bool {
	r := l.r
	k, err := r.o.Keys.Load()
	if err != nil {
		if msg := err.Error(); msg != l.keyErr {
			l.keyErr = msg
			r.log.Error("cannot read the key file; the key in use stays (a restart would fail or create a new key)", "error", err)
		}
		return false
	}
	l.keyErr = ""
	if k == l.key {
		return false
	}
	l.key = k
	r.mu.Lock()
	r.key = k
	r.mu.Unlock()
	r.log.Info("private key changed: reconfiguring the device and publishing the new public key", "publicKey", k.PublicKey().String())
	// A rotation must reach the device now, even during a backoff.
	l.reconcile(ctx)
	l.needPublish, l.pubFailures = true, 0
	l.publish.Stop()
	l.doPublish(ctx)
	return true
}

// doPublish publishes the local identity if needed, scheduling a retry on
// failure.
func (l *loop) doPublish(ctx context.Context) {
	r := l.r
	if !l.needPublish || ctx.Err() != nil {
		return
	}
	self := Self{Name: r.o.NodeName, PublicKey: l.key.PublicKey(), Endpoint: r.o.Endpoint, Backend: r.o.Backend}
	if err := r.o.Publisher.Publish(ctx, self); err != nil {
		if ctx.Err() != nil {
			return
		}
		// Before the first sync a failure is expected and the agent is
		// not ready anyway; it is not a stale configuration.
		if l.synced {
			r.mu.Lock()
			if r.pubErr == nil {
				r.pubSince = time.Now()
			}
			r.pubErr = err
			r.mu.Unlock()
		}
		l.pubFailures++
		delay := r.backoff(l.pubFailures)
		// Before the first sync a source may not be able to publish yet (the
		// peers file is checked against its entry); that is expected.
		level := slog.LevelWarn
		if !l.synced {
			level = slog.LevelInfo
		}
		r.log.Log(ctx, level, "cannot publish this node's identity; retrying", "error", err, "retryIn", delay)
		l.publish.Reset(delay)
		return
	}
	l.needPublish, l.pubFailures = false, 0
	r.mu.Lock()
	r.pubErr = nil
	r.mu.Unlock()
	r.log.Info("published this node's identity", "publicKey", self.PublicKey.String(), "endpoint", endpointText(self.Endpoint), "backend", string(self.Backend))
}

func endpointText(ep netip.AddrPort) string {
	if !ep.IsValid() {
		return "chosen by the source"
	}
	return ep.String()
}

// reconcile derives the desired state and applies it, if the source has
// synced.
func (l *loop) reconcile(ctx context.Context) {
	r := l.r
	if ctx.Err() != nil {
		return
	}
	if !l.synced {
		if !r.o.Nodes.Synced() {
			if !l.waitLogged {
				l.waitLogged = true
				r.log.Info("waiting for the node source to sync before changing the data plane")
			}
			l.retry.Reset(syncPoll)
			return
		}
		l.synced = true
		r.log.Info("node source synced")
		// A publish that failed only because the source was not ready can
		// go now rather than after its backoff.
		if l.needPublish && l.pubFailures > 0 {
			l.publish.Stop()
			l.doPublish(ctx)
		}
	}

	start := time.Now()
	self := mesh.Node{Name: r.o.NodeName, PublicKey: l.key.PublicKey(), Endpoint: r.o.Endpoint}
	o := r.o.Derive
	if cr, ok := r.o.Nodes.(ClusterRanger); ok {
		// The source's ranges (peers file, cluster configuration) add to
		// the flag's: the union is what no unknown node may leak into.
		if cs := cr.ClusterCIDRs(); len(cs) > 0 {
			o.ClusterCIDRs = append(slices.Clone(o.ClusterCIDRs), cs...)
		}
	}
	d := mesh.Derive(self, r.o.Nodes.Nodes(), o)
	var errs []error
	// The device goes first: a route into the tunnel for a peer not yet
	// configured drops packets; it never leaks them. A device failure does
	// not stop the router: converge as far as possible.
	cfg := mesh.DeviceConfig{PrivateKey: l.key, ListenPort: r.o.ListenPort, FwMark: r.o.FwMark, Peers: d.Peers}
	if err := r.o.Device.Configure(ctx, cfg); err != nil {
		errs = append(errs, fmt.Errorf("configure the WireGuard device: %w", err))
	}
	if err := r.o.Router.Apply(ctx, d); err != nil {
		errs = append(errs, fmt.Errorf("apply routes: %w", err))
	}
	err := errors.Join(errs...)
	if err != nil && ctx.Err() != nil {
		return // shutting down: the error is the cancellation, not a result
	}
	r.o.Publisher.Report(d.Problems)
	res := Result{Time: start, Duration: time.Since(start), Desired: d, Err: err}
	r.mu.Lock()
	r.last = res
	r.mu.Unlock()
	r.ready.Store(err == nil)
	if r.o.Sink != nil {
		r.o.Sink.Observe(res)
	}

	if err != nil {
		l.failures++
		delay := r.backoff(l.failures)
		r.log.Warn("reconcile failed; retrying", "error", err, "failures", l.failures, "retryIn", delay)
		l.retry.Reset(delay)
		return
	}
	if l.failures > 0 {
		r.log.Info("reconcile succeeded again", "afterFailures", l.failures)
	}
	l.failures = 0
	l.retry.Stop()
	if l.lastDesired == nil || !reflect.DeepEqual(*l.lastDesired, d) {
		r.log.Info("applied", "peers", len(d.Peers), "routes", len(d.Routes), "hostRoutes", len(d.HostRoutes), "unencrypted", len(d.Unencrypted), "problems", len(d.Problems), "took", res.Duration)
	} else {
		r.log.Debug("resynced", "peers", len(d.Peers), "took", res.Duration)
	}
	l.lastDesired = &d
}

// backoff returns the delay before retry number n (1-based): Backoff
// between MinBackoff and MaxBackoff.
func (r *Reconciler) backoff(n int) time.Duration {
	return Backoff(n, r.o.MinBackoff, r.o.MaxBackoff)
}

// Backoff returns the delay before retry number n (1-based) of something
// that failed n times in a row: lo doubled per failure, capped at hi (lo
// if hi is smaller), minus up to 10% jitter so thousands of agents failing
// together (API server outage) do not retry in lockstep. The jitter only
// shortens, so hi stays a true bound on the wait.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	hi = max(hi, lo)
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d - time.Duration(rand.Int64N(int64(d)/10+1))
}
