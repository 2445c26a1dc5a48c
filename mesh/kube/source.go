// Package kube is the Kubernetes node source of wgmesh: an agent.Source that
// watches Node objects with a client-go informer, publishes the local agent's
// identity as annotations on its own Node, reports problems as Events on the
// offending Node, and offers the cluster-wide Verify and the uninstall helper
// RemoveAnnotations.
//
// It needs only these permissions: nodes get/list/watch/patch, events
// create/patch and (for Options.KubeadmRanges) get on the ConfigMap
// kube-system/kubeadm-config. It never writes node status and uses no leases.
package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wgmesh/wgmesh/internal/ratelog"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// Options configure a Source.
type Options struct {
	// Client talks to the API server. Required.
	Client kubernetes.Interface
	// NodeName is the name of the Node this agent runs on. Required.
	NodeName string
	// ListenPort is the WireGuard port published with the InternalIP when
	// Self.Endpoint is zero; 0 means DefaultListenPort.
	ListenPort int
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Resync is the informer's resync period; 0 disables it (the reconciler
	// resyncs on its own timer).
	Resync time.Duration
	// Recorder, if set, receives the problem Events instead of a recorder
	// writing to the API server (tests, or a caller sharing one broadcaster).
	Recorder record.EventRecorder
	// ReportInterval is how often the same problem (node, reason, detail) is
	// reported again while it persists; 0 means DefaultReportInterval.
	ReportInterval time.Duration
	// KubeadmRanges makes Run read the cluster's pod ranges from kubeadm's
	// ConfigMap (KubeadmPodSubnet) in the background, retrying until they
	// are read or definitely absent, and signal Changes when they arrive;
	// ClusterCIDRs returns them, ClusterRanges the state of the read.
	KubeadmRanges bool
	// KubeadmMinBackoff, KubeadmMaxBackoff and KubeadmForbiddenRetry pace
	// the retries of that read; 0 means DefaultKubeadmMinBackoff,
	// DefaultKubeadmMaxBackoff and DefaultKubeadmForbiddenRetry.
	KubeadmMinBackoff, KubeadmMaxBackoff, KubeadmForbiddenRetry time.Duration
}

// DefaultReportInterval bounds how often one persisting problem is logged and
// turned into an Event: often enough that an operator sees it in
// `kubectl get events` (whose default TTL is one hour), rarely enough not to
// flood the API server from thousands of agents.
const DefaultReportInterval = 10 * time.Minute

// Source is the Kubernetes agent.Source and agent.Republisher. Create it
// with New, start it with Run; Publish and Report may be called from any
// goroutine.
type Source struct {
	o        Options
	log      *slog.Logger
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
	changes  chan struct{}
	started  atomic.Bool

	// republish is signalled when the own Node's annotations may have
	// diverged from the last published Self; lost (Republish) when they
	// have.
	republish, lost chan struct{}
	// republishLimit keeps a fight with another writer of our annotations
	// from hammering the API server.
	republishLimit *rate.Limiter

	pubMu sync.Mutex // serialises patches of the own Node
	mu    sync.Mutex
	self  *agent.Self // last Self given to Publish; nil before the first
	// reported lets each (node, reason, detail) through once per
	// Options.ReportInterval.
	reported *ratelog.Limiter[mesh.Problem]
	now      func() time.Time

	// nodesMu guards the converted nodes: the event handlers convert each
	// Node once, when it changes, so a reconcile does not convert the whole
	// store (at 5,000 nodes that was 3 MB and tens of milliseconds a call).
	nodesMu sync.Mutex
	byName  map[string]mesh.Node
	sorted  []mesh.Node // byName sorted by name; nil after a change

	// rangeMu guards ranges, the state of the kubeadm pod range read.
	rangeMu sync.Mutex
	ranges  ClusterRangeState

	broadcaster record.EventBroadcaster // nil when Options.Recorder is set
	recorder    record.EventRecorder
	closeOnce   sync.Once
	closed      bool // guarded by mu; no Events after Close
}

var (
	_ agent.Source      = (*Source)(nil)
	_ agent.Republisher = (*Source)(nil)
)

// New creates a Source; nothing talks to the API server before Run or
// Publish.
func New(o Options) (*Source, error) {
	if o.Client == nil {
		return nil, errors.New("kube source: no Kubernetes client")
	}
	if o.NodeName == "" {
		return nil, errors.New("kube source: no node name (set --node-name or NODE_NAME)")
	}
	if o.ListenPort == 0 {
		o.ListenPort = DefaultListenPort
	}
	if err := agent.ValidateListenPort(o.ListenPort); err != nil {
		return nil, fmt.Errorf("kube source: %w", err)
	}
	if o.ReportInterval <= 0 {
		o.ReportInterval = DefaultReportInterval
	}
	if o.KubeadmMinBackoff <= 0 {
		o.KubeadmMinBackoff = DefaultKubeadmMinBackoff
	}
	if o.KubeadmMaxBackoff <= 0 {
		o.KubeadmMaxBackoff = DefaultKubeadmMaxBackoff
	}
	o.KubeadmMaxBackoff = max(o.KubeadmMaxBackoff, o.KubeadmMinBackoff)
	if o.KubeadmForbiddenRetry <= 0 {
		o.KubeadmForbiddenRetry = DefaultKubeadmForbiddenRetry
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Source{
		o:         o,
		log:       log.With("component", "kube"),
		changes:   make(chan struct{}, 1),
		republish: make(chan struct{}, 1),
		lost:      make(chan struct{}, 1),
		// Three immediate republishes, then one every ten seconds.
		republishLimit: rate.NewLimiter(rate.Every(10*time.Second), 3),
		reported:       &ratelog.Limiter[mesh.Problem]{Burst: 1, Window: o.ReportInterval},
		byName:         make(map[string]mesh.Node),
		now:            time.Now,
		recorder:       o.Recorder,
		ranges:         ClusterRangeState{Pending: o.KubeadmRanges, Detail: kubeadmNotYet(o.KubeadmRanges)},
	}

	nodes := o.Client.CoreV1().Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return nodes.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return nodes.Watch(ctx, opts)
		},
	}
	s.informer = cache.NewSharedIndexInformerWithOptions(lw, &corev1.Node{}, cache.SharedIndexInformerOptions{
		ResyncPeriod:      o.Resync,
		ObjectDescription: "nodes",
	})
	if err := s.informer.SetTransform(Strip); err != nil {
		return nil, fmt.Errorf("kube source: set informer transform: %w", err)
	}
	if err := s.informer.SetWatchErrorHandlerWithContext(s.watchError); err != nil {
		return nil, fmt.Errorf("kube source: set watch error handler: %w", err)
	}
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.onAdd,
		UpdateFunc: s.onUpdate,
		DeleteFunc: s.onDelete,
	})
	if err != nil {
		return nil, fmt.Errorf("kube source: add node event handler: %w", err)
	}
	s.reg = reg

	if s.recorder == nil {
		s.broadcaster = record.NewBroadcasterWithCorrelatorOptions(record.CorrelatorOptions{
			// One agent reports on many nodes: remember enough of them
			// for aggregation and spam filtering at thousands of nodes.
			LRUCacheSize: 8192,
			// Per involved Node: a burst of 25, then one every five
			// minutes (client-go's defaults, stated so they are visible).
			BurstSize: 25,
			QPS:       1.0 / 300,
		})
		s.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: o.Client.CoreV1().Events("")})
		s.recorder = s.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "wgmesh", Host: o.NodeName})
	}
	return s, nil
}

// Run runs the informer, the watch for a diverging own Node (Republish) and (with
// Options.KubeadmRanges) the read of kubeadm's pod range until ctx is done,
// then releases the event broadcaster. It returns nil on cancellation: a
// lost watch is retried by the informer forever, keeping the last state.
func (s *Source) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("kube source: Run called twice")
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.divergenceLoop(ctx)
	}()
	if s.o.KubeadmRanges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.kubeadmLoop(ctx)
		}()
	}
	s.informer.RunWithContext(ctx)
	wg.Wait()
	return nil
}

// Close stops the event broadcaster; Events reported afterwards are only
// logged. Run calls it on return; it is idempotent.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		if s.broadcaster != nil {
			s.broadcaster.Shutdown()
		}
	})
	return nil
}

// Synced reports whether the informer has listed every node once and the
// event handlers have seen that list.
func (s *Source) Synced() bool {
	return s.informer.HasSynced() && s.reg.HasSynced()
}

// Nodes returns the converted nodes, sorted by name. The event handlers keep
// the conversion current, so this copies a slice instead of converting the
// store; the nodes' slices and maps are shared and must not be modified.
// After a lost watch it keeps the last known state; nodes disappear only when
// the API server reports their deletion.
func (s *Source) Nodes() []mesh.Node {
	s.nodesMu.Lock()
	defer s.nodesMu.Unlock()
	if s.sorted == nil {
		s.sorted = make([]mesh.Node, 0, len(s.byName))
		for _, n := range s.byName {
			s.sorted = append(s.sorted, n)
		}
		slices.SortFunc(s.sorted, func(a, b mesh.Node) int { return cmp.Compare(a.Name, b.Name) })
	}
	return slices.Clone(s.sorted)
}

// setNode records the conversion of a Node the informer added or changed.
func (s *Source) setNode(n mesh.Node) {
	s.nodesMu.Lock()
	s.byName[n.Name] = n
	s.sorted = nil
	s.nodesMu.Unlock()
}

// Changes is signalled, coalesced, whenever a node was added or deleted or
// changed in a way that changes its mesh.Node (not on status heartbeats).
func (s *Source) Changes() <-chan struct{} { return s.changes }

func (s *Source) notify() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

func (s *Source) onAdd(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	s.setNode(NodeFromObject(n))
	s.notify()
	if n.Name == s.o.NodeName {
		s.ownNodeChanged()
	}
}

func (s *Source) onUpdate(oldObj, newObj any) {
	n, ok := newObj.(*corev1.Node)
	if !ok {
		return
	}
	now := NodeFromObject(n)
	s.nodesMu.Lock()
	prev, known := s.byName[n.Name]
	s.nodesMu.Unlock()
	if !known {
		if o, ok := oldObj.(*corev1.Node); ok {
			prev = NodeFromObject(o)
		}
	}
	// Kubelets update their Node every few seconds (heartbeats, images);
	// only a change of what the mesh sees wakes the reconciler.
	same := reflect.DeepEqual(prev, now)
	if !known || !same {
		s.setNode(now)
	}
	if !same {
		s.notify()
	}
	// The republish loop compares in memory; it patches only on a real
	// divergence from the last published Self.
	if n.Name == s.o.NodeName {
		s.ownNodeChanged()
	}
}

func (s *Source) onDelete(obj any) {
	var name string
	switch o := obj.(type) {
	case *corev1.Node:
		name = o.Name
	case cache.DeletedFinalStateUnknown:
		// The watch missed the deletion; the key of a cluster-scoped
		// object is its name.
		name = o.Key
		if n, ok := o.Obj.(*corev1.Node); ok {
			name = n.Name
		}
	}
	s.nodesMu.Lock()
	if _, ok := s.byName[name]; ok {
		delete(s.byName, name)
		s.sorted = nil
	}
	s.nodesMu.Unlock()
	s.notify()
}

// watchError logs a dropped watch; the informer keeps its store and retries.
func (s *Source) watchError(_ context.Context, _ *cache.Reflector, err error) {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		s.log.Debug("node watch closed; re-watching")
	case apierrors.IsResourceExpired(err), apierrors.IsGone(err):
		s.log.Debug("node watch expired; re-listing", "error", err)
	default:
		s.log.Warn("watching nodes failed; keeping the last known nodes and retrying", "error", err)
	}
}
