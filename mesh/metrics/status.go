package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
)

// APIVersion and KindStatus identify the /status document. Fields are only
// ever added to this version; a change of meaning gets a new version.
const (
	APIVersion = "wgmesh.io/v1"
	KindStatus = "Status"
)

// Status is the /status document: everything `wgmesh status` prints.
type Status struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Node is the local node name ("" when read without an agent).
	Node      string       `json:"node,omitempty"`
	Interface string       `json:"interface"`
	Backend   mesh.Backend `json:"backend,omitempty"`
	PublicKey string       `json:"publicKey,omitempty"`
	// ListenPort is the UDP port the interface listens on.
	ListenPort int `json:"listenPort,omitempty"`
	// LinkMTU is the WireGuard interface's MTU; PodMTU is the MTU pods should
	// use so their packets fit through the tunnel.
	LinkMTU int `json:"linkMTU,omitempty"`
	PodMTU  int `json:"podMTU,omitempty"`
	// Strict is true when keyless nodes are unreachable rather than plaintext.
	Strict bool `json:"strict"`
	// Ready mirrors /readyz.
	Ready bool `json:"ready"`
	// Conditions say why the configuration in force is stale (each makes
	// the agent not ready); empty when it is current or without an agent.
	Conditions []ConditionStatus `json:"conditions"`
	// AgentRunning is false when the status was read from the interface alone
	// because no agent answered; node names are then unknown.
	AgentRunning   bool            `json:"agentRunning"`
	LastReconcile  *ReconcileState `json:"lastReconcile,omitempty"`
	IngressDropped uint64          `json:"ingressDroppedPackets"`
	// EgressDropped counts packets to remote pod CIDRs the egress guard
	// dropped because they were about to leave outside the tunnel.
	EgressDropped uint64 `json:"egressDroppedPackets"`
	// Offloads is the userspace data path's offload state (tun_gso, then
	// udp_gso); absent for the kernel backend and without an agent.
	Offloads []OffloadStatus `json:"offloads,omitempty"`
	// RoutingWarnings are the router's problems that did not fail the last
	// reconcile (see routing.Status.Warnings).
	RoutingWarnings []string `json:"routingWarnings,omitempty"`
	// Peers sorted by node name (by public key when names are unknown).
	Peers []PeerStatus `json:"peers"`
	// Unencrypted lists nodes whose pod traffic is not encrypted, sorted.
	Unencrypted []string        `json:"unencryptedNodes"`
	Problems    []ProblemStatus `json:"problems"`
	// ClusterCIDRs are the cluster pod ranges the last reconcile covered
	// (mesh.Desired.ClusterCIDRs): pod traffic to any part no known node
	// claims is dropped (strict) or thrown (allow-unencrypted). Empty after
	// a reconcile means NoClusterCIDRs holds.
	ClusterCIDRs []string `json:"clusterCIDRs,omitempty"`
	// ClusterCIDRsPending, when set, says that the cluster's pod ranges
	// from kubeadm's networking.podSubnet are still being read (and why):
	// they join ClusterCIDRs with the reconcile after they arrive.
	ClusterCIDRsPending string `json:"clusterCIDRsPending,omitempty"`
	// Coverage says which traffic the tunnel carries (see Coverage);
	// absent before the first reconcile and without an agent.
	Coverage []CoverageStatus `json:"coverage,omitempty"`
}

// ConditionStatus is one agent.Condition.
type ConditionStatus struct {
	// Reason is SourceInvalid, SelfMismatch or PublishFailed.
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Since is when the condition began; absent when unknown.
	Since *time.Time `json:"since,omitempty"`
}

// NoClusterCIDRs says what an agent without cluster ranges leaves open:
// `wgmesh status` and `wgmesh verify` print it.
const NoClusterCIDRs = "no --cluster-cidrs: traffic to pod CIDRs of nodes unknown to this agent is not covered " +
	"(it leaves through the main table, in plaintext); set --cluster-cidrs, the peers file's clusterCIDRs, or let the agent read kubeadm's podSubnet"

// ReconcileState is the outcome of the last reconcile.
type ReconcileState struct {
	Time            time.Time `json:"time"`
	DurationSeconds float64   `json:"durationSeconds"`
	// Error is empty when the reconcile applied cleanly.
	Error string `json:"error,omitempty"`
}

// PeerStatus is one WireGuard peer.
type PeerStatus struct {
	Node       string   `json:"node,omitempty"`
	PublicKey  string   `json:"publicKey"`
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowedIPs"`
	// LastHandshake is absent when no handshake has completed.
	LastHandshake *time.Time `json:"lastHandshake,omitempty"`
	ReceiveBytes  int64      `json:"receiveBytes"`
	TransmitBytes int64      `json:"transmitBytes"`
}

// ProblemStatus is one mesh.Problem.
type ProblemStatus struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
	Detail string `json:"detail,omitempty"`
	// Warning is set when the problem leaves everything programmed (see
	// mesh.Reason.Warning), such as DuplicateEndpoint.
	Warning bool `json:"warning,omitempty"`
}

// NewOffloadStatus renders the device's offload state for /status; nil or
// empty (kernel backend) gives nil, which the document omits.
func NewOffloadStatus(states []device.OffloadState) []OffloadStatus {
	if len(states) == 0 {
		return nil
	}
	out := make([]OffloadStatus, 0, len(states))
	for _, o := range states {
		s := OffloadStatus{Kind: string(o.Kind), Active: o.Active, Reason: o.Reason, Fallbacks: o.Fallbacks}
		if !o.Since.IsZero() {
			t := o.Since.UTC()
			s.LastFallback = &t
		}
		out = append(out, s)
	}
	return out
}

// NewPeerStatus renders device statistics for /status; node may be "".
func NewPeerStatus(node string, s device.PeerStats) PeerStatus {
	p := PeerStatus{
		Node:          node,
		PublicKey:     s.PublicKey.String(),
		AllowedIPs:    make([]string, 0, len(s.AllowedIPs)),
		ReceiveBytes:  s.ReceiveBytes,
		TransmitBytes: s.TransmitBytes,
	}
	if s.Endpoint.IsValid() {
		p.Endpoint = s.Endpoint.String()
	}
	for _, a := range s.AllowedIPs {
		p.AllowedIPs = append(p.AllowedIPs, a.String())
	}
	if !s.LastHandshake.IsZero() {
		t := s.LastHandshake.UTC()
		p.LastHandshake = &t
	}
	return p
}

// SortPeers orders peers by node name, then public key.
func SortPeers(ps []PeerStatus) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Node != ps[j].Node {
			return ps[i].Node < ps[j].Node
		}
		return ps[i].PublicKey < ps[j].PublicKey
	})
}

// Status assembles the current status from the last reconcile and the
// device. A device read failure is returned together with the rest.
func (m *Metrics) Status(ctx context.Context) (Status, error) {
	st := Status{
		APIVersion:   APIVersion,
		Kind:         KindStatus,
		Node:         m.o.NodeName,
		Interface:    m.o.Interface,
		Backend:      m.o.Backend,
		ListenPort:   m.o.ListenPort,
		Strict:       m.o.Strict,
		AgentRunning: true,
		Peers:        []PeerStatus{},
		Unencrypted:  []string{},
		Problems:     []ProblemStatus{},
		Conditions:   []ConditionStatus{},
	}
	conds := m.conditions()
	st.Ready = m.o.Ready != nil && m.ready(conds)
	for _, c := range conds {
		cs := ConditionStatus{Reason: string(c.Reason), Message: c.Message}
		if !c.Since.IsZero() {
			t := c.Since.UTC()
			cs.Since = &t
		}
		st.Conditions = append(st.Conditions, cs)
	}
	if m.o.PublicKey != nil {
		if k, err := m.o.PublicKey(); err == nil {
			st.PublicKey = k.String()
		}
	}
	if m.o.Router != nil {
		rs := m.o.Router()
		st.LinkMTU, st.PodMTU, st.IngressDropped, st.EgressDropped = rs.LinkMTU, rs.PodMTU, rs.IngressDropped, rs.EgressDropped
		st.RoutingWarnings = slices.Clone(rs.Warnings)
	}
	if m.o.Offloads != nil {
		st.Offloads = NewOffloadStatus(m.o.Offloads())
	}
	if m.o.ClusterRangesPending != nil {
		if p, why := m.o.ClusterRangesPending(); p {
			st.ClusterCIDRsPending = why
		}
	}
	last, ok := m.Last()
	if ok {
		st.LastReconcile = &ReconcileState{Time: last.Time.UTC(), DurationSeconds: last.Duration.Seconds()}
		if last.Err != nil {
			st.LastReconcile.Error = last.Err.Error()
		}
		st.Unencrypted = append(st.Unencrypted, last.Desired.Unencrypted...)
		st.Coverage = Coverage(last.Desired, m.o.HostEncryption)
		for _, c := range last.Desired.ClusterCIDRs {
			st.ClusterCIDRs = append(st.ClusterCIDRs, c.String())
		}
		for _, p := range last.Desired.Problems {
			st.Problems = append(st.Problems, ProblemStatus{Node: p.Node, Reason: string(p.Reason), Detail: p.Detail, Warning: p.Reason.Warning()})
		}
	}
	var err error
	if m.o.Stats != nil {
		var stats []device.PeerStats
		stats, err = m.o.Stats(ctx)
		for _, s := range stats {
			st.Peers = append(st.Peers, NewPeerStatus(m.nodeName(s.PublicKey), s))
		}
		if err != nil {
			err = fmt.Errorf("read peers of interface %s: %w", m.o.Interface, err)
		}
	} else if ok {
		// Without device access the desired peers are the best answer.
		for _, p := range last.Desired.Peers {
			st.Peers = append(st.Peers, NewPeerStatus(p.Node, device.PeerStats{PublicKey: p.PublicKey, Endpoint: p.Endpoint, AllowedIPs: p.AllowedIPs}))
		}
	}
	SortPeers(st.Peers)
	return st, err
}

// FetchStatus reads the /status document of an agent at baseURL (for
// example "http://127.0.0.1:9587").
func FetchStatus(ctx context.Context, client *http.Client, baseURL string) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+PathStatus, nil)
	if err != nil {
		return st, fmt.Errorf("agent status at %s: %w", baseURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("agent status at %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("agent status at %s: HTTP %d: %s", baseURL, resp.StatusCode, body)
	}
	// 16 MiB is far beyond a status of thousands of peers; the limit only
	// protects the CLI from something else listening on the port.
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		return st, fmt.Errorf("agent status at %s: decode: %w", baseURL, err)
	}
	if st.APIVersion != APIVersion || st.Kind != KindStatus {
		return st, fmt.Errorf("agent status at %s: got apiVersion %q kind %q, want %q %q (is the agent a different wgmesh version?)",
			baseURL, st.APIVersion, st.Kind, APIVersion, KindStatus)
	}
	return st, nil
}

// HandshakeAge returns how long ago a peer's last handshake was, and false
// when there was none.
func (p PeerStatus) HandshakeAge(now time.Time) (time.Duration, bool) {
	if p.LastHandshake == nil {
		return 0, false
	}
	return now.Sub(*p.LastHandshake), true
}
