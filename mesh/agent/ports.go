package agent

import (
	"context"
	"net/netip"

	"github.com/wgmesh/wgmesh/mesh"
)

// NodeSource is what the loop reads: the cluster's nodes, from mesh/kube
// (Node objects and annotations) or mesh/file (the peers file). A source may
// also offer Reloader, ClusterRanger and StateReporter; the loop uses them
// when it does.
type NodeSource interface {
	// Run starts watching and blocks until ctx is done or watching fails for
	// good. It is called once, by the Reconciler.
	Run(ctx context.Context) error
	// Synced reports whether the source has delivered a complete view at
	// least once. The reconciler never removes peers or routes before that.
	Synced() bool
	// Nodes returns a snapshot of all nodes, including the local one. After a
	// lost watch it keeps returning the last known state.
	Nodes() []mesh.Node
	// Changes is signalled (coalesced, never blocking the sender) whenever
	// Nodes may have changed.
	Changes() <-chan struct{}
}

// Publisher is what the loop announces: this node's identity (Self) and the
// problems of the last reconcile. A publisher may also offer Republisher.
type Publisher interface {
	// Publish makes one attempt to make the local node's identity known to
	// the other nodes (annotations on the own Node; for the peers file, a
	// check that the file's entry agrees) and returns its error. It must be
	// idempotent and must not retry: the Reconciler owns the retries (with
	// backoff, and the PublishFailed condition while they fail), so that
	// there is one schedule and one place that knows publishing is failing.
	Publish(ctx context.Context, self Self) error
	// Report surfaces the current problems (Events, logs), rate-limited by
	// the publisher; called after every reconcile with the full list.
	Report(problems []mesh.Problem)
}

// Source is a NodeSource that is also the Publisher of this node, as
// mesh/kube and mesh/file are.
type Source interface {
	NodeSource
	Publisher
}

// Reloader is a NodeSource that can re-read its input on request (the peers
// file on SIGHUP).
type Reloader interface {
	// Reload asks the source to re-read its input soon; it never blocks.
	Reload()
}

// ClusterRanger is a NodeSource that knows the cluster's pod ranges itself:
// the peers file's clusterCIDRs field, the cluster's kubeadm configuration.
// The reconciler adds them to mesh.DeriveOptions.ClusterCIDRs on every reconcile.
type ClusterRanger interface {
	// ClusterCIDRs returns the ranges of the configuration in force (nil:
	// none known). The caller must not modify the slice.
	ClusterCIDRs() []netip.Prefix
}

// Republisher is a Publisher that notices when what it published was undone
// (someone removed or edited the own Node's annotations).
type Republisher interface {
	// Republish is signalled (coalesced) when the last published Self is no
	// longer in place; the Reconciler then publishes it again, with its
	// retries.
	Republish() <-chan struct{}
}

// Self is what the local agent publishes about itself.
type Self struct {
	Name      string
	PublicKey mesh.Key
	Endpoint  netip.AddrPort // zero: let the source choose (e.g. InternalIP)
	Backend   mesh.Backend
}

// Device configures the local WireGuard interface. device.Device satisfies it.
type Device interface {
	// Configure makes the interface's WireGuard state equal cfg, touching only
	// what differs: unchanged peers keep their sessions.
	Configure(ctx context.Context, cfg mesh.DeviceConfig) error
}

// Router programs the routing table, policy rules, interface addresses and
// ingress filter from a Desired. routing.Router satisfies it.
type Router interface {
	// Apply makes the OS state equal d, adding before deleting, and returns
	// every failure joined (it converges as far as it can).
	Apply(ctx context.Context, d mesh.Desired) error
}
