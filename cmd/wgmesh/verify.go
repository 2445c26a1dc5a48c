package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// staleHandshake is how old a peer's last handshake may be before verify
// mentions it: WireGuard re-keys an active session every 2 minutes and
// rejects a session older than 3 (REJECT_AFTER_TIME), so an older handshake
// means the peer was idle or is unreachable.
const staleHandshake = 3 * time.Minute

// hints tell the operator what to do about each kind of problem.
var hints = map[mesh.Reason]string{
	mesh.ReasonNoKey:             "no agent published a key: is the wgmesh pod running there? kubectl -n wgmesh get pods -o wide --field-selector spec.nodeName=<node>",
	mesh.ReasonInvalidKey:        "the wgmesh.io/public-key annotation is not a WireGuard public key: remove the annotation and restart that node's agent",
	mesh.ReasonDuplicateKey:      "the node publishes a key an older node already has (a copied key file or disk image, or a forged annotation); the older node keeps it: run 'wgmesh rotate-key' on the node named, and find out how the key got there",
	mesh.ReasonInvalidEndpoint:   "the wgmesh.io/endpoint or wgmesh.io/force-endpoint annotation is not IP:port: fix wgmesh.io/force-endpoint or the agent's --endpoint",
	mesh.ReasonNoEndpoint:        "no endpoint is known: give the node an InternalIP, or set the wgmesh.io/force-endpoint annotation",
	mesh.ReasonDuplicateEndpoint: "nodes publish the same endpoint (sites behind NAT with one private address, or a stale Node): both stay in the mesh, as WireGuard follows each peer to where its packets come from; delete a stale Node, or set distinct --endpoint or wgmesh.io/force-endpoint values so first handshakes reach the right host",
	mesh.ReasonInvalidCIDR:       "spec.podCIDRs holds an invalid prefix: check the controller manager's --cluster-cidr and node CIDR allocation",
	mesh.ReasonCIDROverlap:       "pod CIDRs of different nodes overlap: fix spec.podCIDRs allocation (controller manager --cluster-cidr, --node-cidr-mask-size)",
	mesh.ReasonOwnCIDROverlap:    "a node's pod CIDR overlaps another node's: fix spec.podCIDRs allocation",
	mesh.ReasonUnmanaged:         "outside the mesh by --unmanaged-nodes: its pod traffic is plaintext by choice",
	mesh.ReasonSelfMissing:       "the node is missing from the source",
	mesh.ReasonSelfKeyMismatch:   "the published key does not match the node's key file: restart the agent so it publishes again",
}

func (a *app) verifyCommand() *cobra.Command {
	var (
		kubeconfig  string
		unmanaged   string
		iface       string
		metricsAddr string
		allowUnenc  bool
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check that the whole cluster is encrypted; exit 1 if any node is not",
		Long: `verify lists every Node and checks, with the same rules the agents use, that
each node's pod traffic is encrypted: every node has a valid key and endpoint, no
node publishes a key an older node already has, and no pod CIDRs overlap. It
prints each problem with what to do about it and exits 1 unless the whole
cluster is encrypted. Warnings (nodes sharing an endpoint) are listed too but
leave every node in the mesh and do not change the exit status. When this host has the wgmesh interface it also lists peers without
a recent handshake (idle, or unreachable over UDP).

Pass the agents' --unmanaged-nodes so nodes left out on purpose are reported as
such; they still count as unencrypted.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := clusterOptions(unmanaged, allowUnenc)
			if err != nil {
				return err
			}
			if err := checkInterfaceFlag(iface); err != nil {
				return err
			}
			base, err := metricsURL(metricsAddr)
			if err != nil {
				return usagef("--metrics-addr %q: %v", metricsAddr, err)
			}
			client, rc, err := cliKubeClient(kubeconfig)
			if err != nil {
				return err
			}
			rep, err := kube.Verify(cmd.Context(), client, o)
			if err != nil {
				return fmt.Errorf("verify cluster at %s: %w", rc.Host, err)
			}
			ok := printVerify(a.out, rep)

			// The local view is informational: a missing interface is
			// normal on a machine outside the cluster.
			if st, err := a.readStatus(cmd.Context(), base, iface, device.Inspect); err == nil {
				printHandshakes(a.out, st, time.Now())
				printClusterRanges(a.out, st)
			} else {
				a.log.Debug("no local interface to check", "interface", iface, "err", err)
			}
			if !ok {
				fmt.Fprintln(a.out, "RESULT: NOT fully encrypted")
				return exitCodeError{exitFailure, fmt.Errorf("cluster not fully encrypted")}
			}
			fmt.Fprintln(a.out, "RESULT: every node's pod traffic is encrypted")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster configuration, as kubectl)")
	f.StringVar(&unmanaged, "unmanaged-nodes", "", "the agents' --unmanaged-nodes selector")
	f.BoolVar(&allowUnenc, "allow-unencrypted", false, "the agents' --allow-unencrypted")
	f.StringVar(&iface, "interface", device.DefaultName, "local WireGuard interface whose handshakes to check")
	f.StringVar(&metricsAddr, "metrics-addr", fmt.Sprintf(":%d", metrics.DefaultPort), "the local agent's --metrics-addr")
	return cmd
}

// parseUnmanaged parses an --unmanaged-nodes label selector: nil for a
// blank one, a usage error naming the flag for one that does not parse.
func parseUnmanaged(s string) (labels.Selector, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	sel, err := labels.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, usagef("--unmanaged-nodes %q: not a label selector: %v", s, err)
	}
	return sel, nil
}

// unmanagedFunc is sel as mesh.DeriveOptions.Unmanaged wants it; nil for none.
func unmanagedFunc(sel labels.Selector) func(map[string]string) bool {
	if sel == nil {
		return nil
	}
	return func(l map[string]string) bool { return sel.Matches(labels.Set(l)) }
}

// clusterOptions are the rules verify and graph --cluster judge the cluster
// by: both families, and the agents' --unmanaged-nodes and
// --allow-unencrypted as given to the command.
func clusterOptions(unmanaged string, allowUnenc bool) (mesh.DeriveOptions, error) {
	sel, err := parseUnmanaged(unmanaged)
	if err != nil {
		return mesh.DeriveOptions{}, err
	}
	o := mesh.DeriveOptions{IPv4: true, IPv6: true, AllowUnencrypted: allowUnenc, Unmanaged: unmanagedFunc(sel)}
	// The agents' rule for their options, as for `wgmesh agent`.
	return o, flagged(o.Validate(), optionFlags)
}

// coverageNote says what "encrypted" means for a node without problems.
const coverageNote = "Between nodes without problems the tunnel carries pod-to-pod traffic, pod traffic to other nodes' " +
	"addresses (InternalIP: API server, kubelet, hostNetwork pods) and host traffic to pods; traffic between the " +
	"nodes' own addresses only with the agents' --host-encryption (wgmesh status shows a node's view)."

// printVerify writes the report and returns whether the cluster is fully
// encrypted. Warnings are printed but do not change the answer.
func printVerify(w io.Writer, rep kube.VerifyReport) bool {
	fmt.Fprintf(w, "Checked %d nodes.\n", rep.Nodes)
	fmt.Fprintln(w, coverageNote)
	ok := rep.OK()
	if ok {
		fmt.Fprintln(w, "No problems found.")
	}
	if len(rep.Problems) > 0 {
		printProblems(w, fmt.Sprintf("%d problems:", len(rep.Problems)), rep.Problems)
	}
	if len(rep.Warnings) > 0 {
		printProblems(w, fmt.Sprintf("%d warnings (every node they name stays in the mesh):", len(rep.Warnings)), rep.Warnings)
	}
	if ok {
		return true
	}
	if len(rep.Unencrypted) > 0 {
		noun := "these nodes"
		if len(rep.Unencrypted) == 1 {
			noun = "this node"
		}
		fmt.Fprintf(w, "\nPod traffic of %s is NOT encrypted: %s\n", noun, strings.Join(rep.Unencrypted, ", "))
	} else {
		fmt.Fprintln(w, "\nNodes with problems are unreachable from the mesh (strict mode), not plaintext, until fixed.")
	}
	return false
}

// printProblems writes a table of ps under title and one hint per reason.
func printProblems(w io.Writer, title string, ps []mesh.Problem) {
	fmt.Fprintf(w, "\n%s\n", title)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREASON\tDETAIL")
	seen := map[mesh.Reason]bool{}
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Node, p.Reason, p.Detail)
		seen[p.Reason] = true
	}
	tw.Flush()
	fmt.Fprintln(w, "\nWhat to do:")
	for _, p := range ps {
		if !seen[p.Reason] {
			continue
		}
		seen[p.Reason] = false
		hint := hints[p.Reason]
		if hint == "" {
			hint = "see the Events on the node: kubectl describe node " + p.Node
		}
		fmt.Fprintf(w, "  %s: %s\n", p.Reason, hint)
	}
}

// printClusterRanges says whether the local agent covers the cluster's pod
// ranges; Kubernetes cannot tell (it is the agents' configuration).
func printClusterRanges(w io.Writer, st metrics.Status) {
	switch {
	case !st.AgentRunning || st.LastReconcile == nil:
	case len(st.ClusterCIDRs) > 0:
		fmt.Fprintf(w, "Local agent covers the cluster ranges %s.\n", strings.Join(st.ClusterCIDRs, ", "))
	case st.ClusterCIDRsPending != "":
		fmt.Fprintf(w, "Local agent: no cluster ranges yet, kubeadm's podSubnet is pending: %s.\n", st.ClusterCIDRsPending)
	default:
		fmt.Fprintf(w, "Local agent: %s.\n", metrics.NoClusterCIDRs)
	}
}

// printHandshakes lists the local peers without a recent handshake.
func printHandshakes(w io.Writer, st metrics.Status, now time.Time) {
	var stale []string
	for _, p := range st.Peers {
		name := p.Node
		if name == "" {
			name = p.PublicKey
		}
		if d, ok := p.HandshakeAge(now); !ok {
			stale = append(stale, name+" (never)")
		} else if d > staleHandshake {
			stale = append(stale, fmt.Sprintf("%s (%s ago)", name, age(d)))
		}
	}
	fmt.Fprintf(w, "\nLocal interface %s: %d peers, %d without a handshake in the last %s.\n",
		st.Interface, len(st.Peers), len(stale), staleHandshake)
	for _, s := range stale {
		fmt.Fprintf(w, "  %s\n", s)
	}
	if len(stale) > 0 {
		fmt.Fprintln(w, "  Idle peers handshake only when traffic flows; if traffic is failing, check that UDP to the peer's endpoint port is allowed.")
	}
}
