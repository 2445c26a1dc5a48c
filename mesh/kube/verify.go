package kube

import (
	"context"
	"fmt"
	"sort"

	"github.com/wgmesh/wgmesh/mesh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// verifyPageSize is the List page size: large enough for few round trips,
// small enough that one page of stripped-down nodes stays a few MiB.
const verifyPageSize = 500

// VerifyReport is the cluster-wide health of the mesh as `wgmesh verify`
// prints it.
type VerifyReport struct {
	// Nodes is how many Node objects were examined.
	Nodes int
	// NodeNames are their names, sorted (wgmesh graph draws them).
	NodeNames []string
	// Problems are the defects that keep a node, or one of its pod CIDRs,
	// out of the encrypted mesh: nodes without a valid key or endpoint,
	// newcomers publishing a key an older node has, overlapping pod CIDRs
	// and malformed annotations; sorted by node, then reason.
	Problems []mesh.Problem
	// Warnings are problems that leave every node programmed (their Reason
	// is a Warning, such as DuplicateEndpoint); sorted like Problems. They
	// do not count against OK.
	Warnings []mesh.Problem
	// Unencrypted names the nodes whose pod traffic is sent in plaintext
	// (unmanaged nodes, and with AllowUnencrypted the nodes with problems),
	// sorted.
	Unencrypted []string
}

// OK reports whether the whole cluster is encrypted: no problem was found
// and no node's pod traffic is plaintext; warnings do not count. Unmanaged nodes count against it
// even though the operator chose to leave them out: `wgmesh verify` answers
// "is every node encrypted", and they are not.
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 && len(r.Unencrypted) == 0 }

// Verify lists every Node (in pages) and checks the mesh from the viewpoint
// of no node in particular, with the same rules as the agents (mesh.Derive):
// what it reports is what some agent would leave out of the mesh. If o
// enables neither address family, both are checked.
func Verify(ctx context.Context, client kubernetes.Interface, o mesh.DeriveOptions) (VerifyReport, error) {
	var nodes []mesh.Node
	opts := metav1.ListOptions{Limit: verifyPageSize}
	for {
		list, err := client.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return VerifyReport{}, fmt.Errorf("verify: list nodes: %w", explain(err))
		}
		for i := range list.Items {
			nodes = append(nodes, NodeFromObject(&list.Items[i]))
		}
		if list.Continue == "" {
			break
		}
		opts.Continue = list.Continue
	}
	return verifyNodes(nodes, o), nil
}

// verifyNodes is Verify without the API server.
func verifyNodes(nodes []mesh.Node, o mesh.DeriveOptions) VerifyReport {
	if !o.IPv4 && !o.IPv6 {
		o.IPv4, o.IPv6 = true, true
	}
	// A nameless self matches no Node (Kubernetes names are never empty):
	// every node is judged as a remote peer, and nothing is own.
	d := mesh.Derive(mesh.Node{}, nodes, o)
	r := VerifyReport{Nodes: len(nodes), Unencrypted: d.Unencrypted}
	for _, n := range nodes {
		r.NodeNames = append(r.NodeNames, n.Name)
	}
	sort.Strings(r.NodeNames)
	for _, p := range d.Problems {
		switch p.Reason {
		case mesh.ReasonSelfMissing, mesh.ReasonUnmanaged:
			// No self exists here; unmanaged nodes are listed in
			// Unencrypted and are the operator's choice.
			continue
		}
		if p.Reason.Warning() {
			r.Warnings = append(r.Warnings, p)
			continue
		}
		r.Problems = append(r.Problems, p)
	}
	return r
}
