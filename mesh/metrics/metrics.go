// Package metrics exposes what the wgmesh agent knows about itself: a
// Prometheus registry (its own, never the global one), the /healthz, /readyz
// and /status endpoints, and a agent.StatusSink that records every reconcile.
//
// Per-peer series are not kept in vectors that would need pruning: a custom
// collector reads the device's peer statistics at scrape time and names each
// peer after the node the last reconcile programmed it for, so a peer that
// leaves the mesh disappears from the next scrape by itself.
package metrics

import (
	"context"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/routing"
)

// Namespace prefixes every wgmesh metric name.
const Namespace = "wgmesh"

// OffloadStatus is one offload of the userspace data path in the /status
// document: device.OffloadState as JSON (see NewOffloadStatus).
type OffloadStatus struct {
	// Kind is tun_gso (coalesced GSO writes to the TUN device) or udp_gso
	// (UDP GSO sends).
	Kind string `json:"kind"`
	// Active is true while the data path uses the offload.
	Active bool `json:"active"`
	// Reason says why it is not in use (configuration, kernel support, or
	// the kernel's refusal at run time); empty while Active.
	Reason string `json:"reason,omitempty"`
	// Fallbacks counts the run-time fallbacks since the device opened.
	Fallbacks uint64 `json:"fallbacks"`
	// LastFallback is when the last one happened; absent when none did.
	LastFallback *time.Time `json:"lastFallback,omitempty"`
}

// Options configure a Metrics. Every func is optional; a nil func means the
// information is not available and is left out.
type Options struct {
	// NodeName is the local node, shown by /status.
	NodeName string
	// Interface is the WireGuard interface name.
	Interface string
	// Backend is the WireGuard implementation in use.
	Backend mesh.Backend
	// ListenPort is the UDP port of the interface.
	ListenPort int
	// Strict is true unless unencrypted traffic to keyless nodes is allowed.
	Strict bool
	// HostEncryption is the agent's --host-encryption, for /status's
	// coverage.
	HostEncryption bool
	// Stats reads the device's peers (device.Device.Stats); called on every
	// scrape and /status.
	Stats func(ctx context.Context) ([]device.PeerStats, error)
	// Router reads the router's status (routing.Router.Status); called on
	// every scrape and /status.
	Router func() routing.Status
	// Offloads reads the data path's offload state (userspace backend
	// only; nil or an empty result for the kernel backend); called on every
	// scrape and /status.
	Offloads func() []device.OffloadState
	// Inflight reads the data path's in-flight windows (userspace backend
	// with --inflight-packets; nil or an empty result otherwise); called on
	// every scrape.
	Inflight func() []device.InflightState
	// PublicKey returns the local node's current public key.
	PublicKey func() (mesh.Key, error)
	// Ready reports whether the agent is ready: device up, source synced and
	// last apply successful (agent.Reconciler.Ready).
	Ready func() bool
	// Conditions returns why the configuration in force is stale
	// (agent.Reconciler.Conditions). Any condition makes the agent not
	// ready; /readyz, /status and wgmesh_stale report them.
	Conditions func() []agent.Condition
	// SourceState reads the source's state, for
	// wgmesh_source_last_success_timestamp_seconds; ok is false for sources
	// that do not report one (Kubernetes).
	SourceState func() (st agent.SourceState, ok bool)
	// ClusterRangesPending reports whether the source's cluster pod ranges
	// (kubeadm's networking.podSubnet) are still being read, and why;
	// /status's clusterCIDRsPending and wgmesh_cluster_cidrs_pending.
	ClusterRangesPending func() (pending bool, detail string)
	// Version and Commit label wgmesh_build_info.
	Version, Commit string
	// Logger receives scrape-time errors; nil discards them.
	Logger *slog.Logger
}

// Metrics is the agent's observability surface. It implements
// agent.StatusSink; all methods are safe for concurrent use.
type Metrics struct {
	o   Options
	log *slog.Logger
	reg *prometheus.Registry

	peers         prometheus.Gauge
	unencrypted   prometheus.Gauge
	problems      *prometheus.GaugeVec
	warnings      *prometheus.GaugeVec
	reconciles    *prometheus.CounterVec
	reconcileTime prometheus.Histogram

	mu   sync.Mutex
	last *agent.Result
	// nodeOf maps a peer's public key to its node name, from the last
	// reconcile's Desired.
	nodeOf map[mesh.Key]string
}

var _ agent.StatusSink = (*Metrics)(nil)

// Reconcile results, the values of the wgmesh_reconcile_total result label.
const (
	ResultSuccess = "success"
	ResultError   = "error"
)

// New builds the registry and all metrics.
func New(o Options) *Metrics {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Metrics{
		o:   o,
		log: log,
		reg: prometheus.NewRegistry(),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "peers",
			Help: "WireGuard peers the last reconcile programmed.",
		}),
		unencrypted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "nodes_unencrypted",
			Help: "Nodes whose pod traffic is not encrypted (unmanaged, or keyless with --allow-unencrypted).",
		}),
		problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "problems",
			Help: "Problems found in the nodes' input by the last reconcile that leave a node or pod CIDR out of the mesh, by reason.",
		}, []string{"reason"}),
		warnings: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "warnings",
			Help: "Problems found in the nodes' input by the last reconcile that leave every node programmed (such as DuplicateEndpoint), by reason.",
		}, []string{"reason"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "reconcile_total",
			Help: "Reconciles by result (success or error).",
		}, []string{"result"}),
		reconcileTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "reconcile_duration_seconds",
			Help: "Time one reconcile took to apply device and routing state.",
			// 1 ms to 20 s in round 1-2.5-5 steps: a no-op reconcile takes
			// about a millisecond, a cold start with thousands of peers and
			// routes several seconds.
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20},
		}),
		nodeOf: map[mesh.Key]string{},
	}
	// Pre-create both result series so rate() works from the first scrape.
	m.reconciles.WithLabelValues(ResultSuccess)
	m.reconciles.WithLabelValues(ResultError)
	m.zeroProblems()
	ver, rev := o.Version, o.Commit
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the agent's version and commit and the Go version that built it.",
		ConstLabels: prometheus.Labels{"version": ver, "commit": rev, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(
		buildInfo,
		m.peers, m.unencrypted, m.problems, m.warnings, m.reconciles, m.reconcileTime,
		&scrapeCollector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// knownReasons are exported at 0 when absent, so that wgmesh_problems and
// wgmesh_warnings have series (and HELP/TYPE) from the first scrape. A
// reason missing here still shows once it occurs.
var knownReasons = []mesh.Reason{
	mesh.ReasonInvalidName, mesh.ReasonDuplicateName,
	mesh.ReasonInvalidKey, mesh.ReasonNoKey, mesh.ReasonDuplicateKey,
	mesh.ReasonInvalidEndpoint, mesh.ReasonNoEndpoint, mesh.ReasonDuplicateEndpoint,
	mesh.ReasonInvalidCIDR, mesh.ReasonCIDROverlap, mesh.ReasonOwnCIDROverlap,
	mesh.ReasonUnmanaged, mesh.ReasonSelfMissing, mesh.ReasonSelfKeyMismatch,
}

// zeroProblems resets both problem gauges to 0 for every known reason, so
// that a reason that no longer occurs goes to 0 instead of lingering.
func (m *Metrics) zeroProblems() {
	m.problems.Reset()
	m.warnings.Reset()
	for _, r := range knownReasons {
		if r.Warning() {
			m.warnings.WithLabelValues(string(r)).Set(0)
		} else {
			m.problems.WithLabelValues(string(r)).Set(0)
		}
	}
}

// Registry returns the registry holding every wgmesh metric.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Observe records one reconcile result. It implements agent.StatusSink.
func (m *Metrics) Observe(r agent.Result) {
	result := ResultSuccess
	if r.Err != nil {
		result = ResultError
	}
	m.reconciles.WithLabelValues(result).Inc()
	m.reconcileTime.Observe(r.Duration.Seconds())
	m.peers.Set(float64(len(r.Desired.Peers)))
	m.unencrypted.Set(float64(len(r.Desired.Unencrypted)))

	// Reset so that a reason that no longer occurs disappears instead of
	// lingering at its last count.
	// Warnings have their own gauge, so the alert wgmesh_problems > 0 keeps
	// meaning "something is left out of the mesh".
	m.zeroProblems()
	for _, p := range r.Desired.Problems {
		if p.Reason.Warning() {
			m.warnings.WithLabelValues(string(p.Reason)).Inc()
		} else {
			m.problems.WithLabelValues(string(p.Reason)).Inc()
		}
	}

	nodeOf := make(map[mesh.Key]string, len(r.Desired.Peers))
	for _, p := range r.Desired.Peers {
		nodeOf[p.PublicKey] = p.Node
	}
	m.mu.Lock()
	m.last = &r
	m.nodeOf = nodeOf
	m.mu.Unlock()
}

// Last returns the last observed result and whether there was one.
func (m *Metrics) Last() (agent.Result, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == nil {
		return agent.Result{}, false
	}
	return *m.last, true
}

// conditions returns the current stale conditions (none without
// Options.Conditions).
func (m *Metrics) conditions() []agent.Condition {
	if m.o.Conditions == nil {
		return nil
	}
	return m.o.Conditions()
}

// ready is Options.Ready and no stale condition: an agent whose input is
// not in force is not ready (README, "Metrics", says why).
func (m *Metrics) ready(conds []agent.Condition) bool {
	if m.o.Ready != nil && !m.o.Ready() {
		return false
	}
	return len(conds) == 0
}

// nodeName returns the node a peer key was programmed for, "" if unknown.
func (m *Metrics) nodeName(k mesh.Key) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodeOf[k]
}

// scrapeCollector reads device and router state at scrape time.
type scrapeCollector struct{ m *Metrics }

var (
	descPeerRx = prometheus.NewDesc(Namespace+"_peer_receive_bytes_total",
		"Bytes received from the node's WireGuard peer.", []string{"node"}, nil)
	descPeerTx = prometheus.NewDesc(Namespace+"_peer_transmit_bytes_total",
		"Bytes sent to the node's WireGuard peer.", []string{"node"}, nil)
	descPeerHandshake = prometheus.NewDesc(Namespace+"_peer_last_handshake_timestamp_seconds",
		"Unix time of the last completed handshake with the node's peer (0: never).", []string{"node"}, nil)
	descDeviceInfo = prometheus.NewDesc(Namespace+"_device_info",
		"The WireGuard interface and its backend; always 1.", []string{"backend", "interface"}, nil)
	descIngressDropped = prometheus.NewDesc(Namespace+"_ingress_dropped_packets_total",
		"Plaintext packets from remote pod CIDRs dropped by strict mode because they did not arrive through the tunnel.", nil, nil)
	descEgressDropped = prometheus.NewDesc(Namespace+"_egress_dropped_packets_total",
		"Packets to remote pod CIDRs dropped by the egress guard because they were about to leave outside the tunnel (another component's mark, rule or route).", nil, nil)
	descStale = prometheus.NewDesc(Namespace+"_stale",
		"1 while the configuration in force is stale for the reason (SourceInvalid: the peers file on disk is unreadable or invalid and the last good one stays; SelfMismatch: the file gives this node another public key; PublishFailed: this node's identity could not be published), else 0. The agent is not ready meanwhile.", []string{"reason"}, nil)
	descSourceSuccess = prometheus.NewDesc(Namespace+"_source_last_success_timestamp_seconds",
		"Unix time the peers file was last read validly (0: never).", nil, nil)
	descRangesPending = prometheus.NewDesc(Namespace+"_cluster_cidrs_pending",
		"1 while the cluster's pod ranges from kubeadm's networking.podSubnet are still being read (retried in the background), else 0.", nil, nil)
	descOffload = prometheus.NewDesc(Namespace+"_datapath_offload",
		"1 while the userspace data path uses the offload (tun_gso: coalesced GSO writes to the TUN device; udp_gso: UDP GSO sends), 0 when it is off by configuration, not offered by the kernel, or was refused by the kernel at run time and the data path fell back to one packet at a time.", []string{"kind"}, nil)
	descOffloadFallbacks = prometheus.NewDesc(Namespace+"_datapath_offload_fallbacks_total",
		"Times the userspace data path stopped using the offload because the kernel refused it (EINVAL, EIO, EMSGSIZE).", []string{"kind"}, nil)
	descInflightHeld = prometheus.NewDesc(Namespace+"_datapath_inflight_packets",
		"Packets the userspace data path holds in flight now, per direction (tx: read from the TUN and not yet sent; rx: received and not yet written), bounded by --inflight-packets (the limit label).", []string{"direction", "limit"}, nil)
	descInflightResets = prometheus.NewDesc(Namespace+"_datapath_inflight_resets_total",
		"Times a full in-flight window waited a stall (10-250 ms) and started its count afresh, presuming packets wireguard-go dropped unseen: traffic to a peer without a session, or datagrams that failed to decrypt. Each cost the direction one such pause.", []string{"direction"}, nil)
	// staleReasons are always exported, 0 or 1, so that an alert on
	// wgmesh_stale > 0 has a series from the first scrape.
	staleReasons        = []agent.ConditionReason{agent.ConditionSourceInvalid, agent.ConditionSelfMismatch, agent.ConditionPublishFailed}
	descRoutingWarnings = prometheus.NewDesc(Namespace+"_routing_warnings",
		"Problems of the last routing apply that did not fail it but leave the host short of the intended state (see wgmesh status).", nil, nil)
)

// scrapeTimeout bounds how long a scrape waits for the device.
const scrapeTimeout = 5 * time.Second

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPeerRx
	ch <- descPeerTx
	ch <- descPeerHandshake
	ch <- descDeviceInfo
	ch <- descIngressDropped
	ch <- descEgressDropped
	ch <- descRoutingWarnings
	ch <- descStale
	ch <- descSourceSuccess
	ch <- descRangesPending
	ch <- descOffload
	ch <- descOffloadFallbacks
	ch <- descInflightHeld
	ch <- descInflightResets
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	if m.o.Backend != "" || m.o.Interface != "" {
		ch <- prometheus.MustNewConstMetric(descDeviceInfo, prometheus.GaugeValue, 1, string(m.o.Backend), m.o.Interface)
	}
	if m.o.Router != nil {
		rs := m.o.Router()
		ch <- prometheus.MustNewConstMetric(descIngressDropped, prometheus.CounterValue, float64(rs.IngressDropped))
		ch <- prometheus.MustNewConstMetric(descEgressDropped, prometheus.CounterValue, float64(rs.EgressDropped))
		ch <- prometheus.MustNewConstMetric(descRoutingWarnings, prometheus.GaugeValue, float64(len(rs.Warnings)))
	}
	if m.o.Offloads != nil {
		for _, o := range m.o.Offloads() {
			v := 0.0
			if o.Active {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descOffload, prometheus.GaugeValue, v, string(o.Kind))
			ch <- prometheus.MustNewConstMetric(descOffloadFallbacks, prometheus.CounterValue, float64(o.Fallbacks), string(o.Kind))
		}
	}
	if m.o.Inflight != nil {
		for _, w := range m.o.Inflight() {
			ch <- prometheus.MustNewConstMetric(descInflightHeld, prometheus.GaugeValue, float64(w.Held), w.Direction, strconv.Itoa(w.Limit))
			ch <- prometheus.MustNewConstMetric(descInflightResets, prometheus.CounterValue, float64(w.Resets), w.Direction)
		}
	}
	if m.o.Conditions != nil {
		active := map[agent.ConditionReason]bool{}
		for _, c := range m.o.Conditions() {
			active[c.Reason] = true
		}
		for _, r := range staleReasons {
			v := 0.0
			if active[r] {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, v, string(r))
		}
	}
	if m.o.SourceState != nil {
		if st, ok := m.o.SourceState(); ok {
			var ts float64
			if !st.LastSuccess.IsZero() {
				ts = float64(st.LastSuccess.UnixNano()) / 1e9
			}
			ch <- prometheus.MustNewConstMetric(descSourceSuccess, prometheus.GaugeValue, ts)
		}
	}
	if m.o.ClusterRangesPending != nil {
		v := 0.0
		if p, _ := m.o.ClusterRangesPending(); p {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRangesPending, prometheus.GaugeValue, v)
	}
	if m.o.Stats == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	stats, err := m.o.Stats(ctx)
	if err != nil {
		// A failed read leaves the per-peer series out of this scrape; the
		// rest of the scrape stays useful.
		m.log.Warn("read device statistics for metrics", "interface", m.o.Interface, "err", err)
		return
	}
	seen := make(map[string]bool, len(stats))
	for _, s := range stats {
		node := m.nodeName(s.PublicKey)
		// A peer the last reconcile did not program (a key being replaced)
		// has no node to name; two series with the same label would make the
		// whole scrape fail, so the first one wins.
		if node == "" || seen[node] {
			continue
		}
		seen[node] = true
		var hs float64
		if !s.LastHandshake.IsZero() {
			hs = float64(s.LastHandshake.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(descPeerRx, prometheus.CounterValue, float64(s.ReceiveBytes), node)
		ch <- prometheus.MustNewConstMetric(descPeerTx, prometheus.CounterValue, float64(s.TransmitBytes), node)
		ch <- prometheus.MustNewConstMetric(descPeerHandshake, prometheus.GaugeValue, hs, node)
	}
}
