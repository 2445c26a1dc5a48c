package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/routing"
)

func (a *app) cleanupCommand() *cobra.Command {
	var (
		iface             string
		table             int64
		hostTable         int64
		priority          int
		fwmark            string
		removeAnnotations bool
		kubeconfig        string
		nodeName          string
	)
	d := routing.DefaultOptions()
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove the interface, policy rules, routes and nftables table (uninstall)",
		Long: `cleanup removes everything the agent installed on this host: the WireGuard
interface (either backend), the policy rules, the wgmesh routing table's routes,
the tunnel addresses and the nftables table. It touches nothing that is not
wgmesh's, and running it twice is safe. Stop the agent first: pod traffic to
other nodes then leaves in plaintext through the main routing table.

With --remove-annotations it also removes the wgmesh.io/ annotations from the
Node (--node-name, default $NODE_NAME) using --kubeconfig or the in-cluster
configuration. The --route-table, --host-route-table, --rule-priority and
--fwmark the agent ran with are read from the interface (its alias records
them); flags given explicitly win. Only the instance of --interface is
touched: other wgmesh instances' rules, routes and tables stay. cleanup
refuses while an agent runs for the interface, and refuses an interface
wgmesh did not create.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The agent's own rules for these flags: a value the agent
			// would refuse cannot name one of its instances.
			if err := validateInterface(iface); err != nil {
				return err
			}
			ro := routing.DefaultOptions()
			ro.Interface = iface
			var err error
			if ro.Table, ro.HostTable, ro.Priority, ro.FwMark, err = validateRouting(table, hostTable, priority, fwmark); err != nil {
				return err
			}
			ro.Logger = a.log
			if removeAnnotations && strings.TrimSpace(nodeName) == "" {
				return usagef("--remove-annotations needs --node-name (or NODE_NAME)")
			}
			if !removeAnnotations && cmd.Flags().Changed("kubeconfig") {
				return usagef("--kubeconfig is used only with --remove-annotations")
			}
			// The API client is built before anything changes (a wrong
			// kubeconfig must not stop a cleanup halfway); no API call is
			// made before every local step is done.
			var client kubernetes.Interface
			if removeAnnotations {
				cs, _, err := cliKubeClient(kubeconfig)
				if err != nil {
					return fmt.Errorf("refusing to clean up, nothing changed: --remove-annotations: %w", err)
				}
				client = cs
			}

			ctx := cmd.Context()
			// A running agent would lose its data plane and rebuild it:
			// refuse. Holding the lock keeps an agent from starting
			// meanwhile.
			lock, err := instance.Acquire(iface)
			if err != nil {
				return fmt.Errorf("refusing to clean up wgmesh instance %s, nothing changed: %w: stop the agent first", iface, err)
			}
			defer lock.Close()
			if err := a.cleanupOptions(cmd, &ro); err != nil {
				return err
			}
			// The table's rules and routes would be another instance's.
			if err := instance.Check(instance.Params{Interface: iface, Table: ro.Table, HostTable: ro.HostTable}); err != nil {
				return fmt.Errorf("refusing to clean up wgmesh instance %s with --route-table %d, nothing changed: %w", iface, ro.Table, err)
			}
			before := takeInventory(ro)
			var errs []error
			// Routes first: once they are gone nothing points at the
			// interface any more.
			if err := routing.Cleanup(ctx, ro); err != nil {
				errs = append(errs, fmt.Errorf("remove routing state: %w", err))
			}
			if err := device.Remove(iface); err != nil {
				errs = append(errs, fmt.Errorf("remove interface %s: %w", iface, err))
			}
			lines, left := cleanupReport(ro, before, takeInventory(ro))
			for _, l := range lines {
				fmt.Fprintln(a.out, l)
			}
			if len(left) > 0 && len(errs) == 0 {
				errs = append(errs, fmt.Errorf("cleanup of %s left %s", iface, strings.Join(left, "; ")))
			}
			if before.nothingFound() {
				a.log.Warn("nothing of this wgmesh instance was found: already cleaned up, or another --interface or --route-table?",
					"interface", iface, "routeTable", ro.Table)
			}
			if removeAnnotations {
				removed, err := removeNodeAnnotations(ctx, client, nodeName)
				switch {
				case err != nil:
					errs = append(errs, err)
				case len(removed) == 0:
					fmt.Fprintf(a.out, "not found: wgmesh.io/ annotations on node %s\n", nodeName)
				default:
					fmt.Fprintf(a.out, "removed: annotations %s from node %s\n", strings.Join(removed, ", "), nodeName)
				}
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&iface, "interface", device.DefaultName, "WireGuard interface")
	f.Int64Var(&table, "route-table", int64(d.Table), "the agent's --route-table (read from the interface when not given; 1-4294967295, not 253-255)")
	f.Int64Var(&hostTable, "host-route-table", 0, "the agent's --host-route-table (0 = --route-table + 1)")
	f.IntVar(&priority, "rule-priority", d.Priority, "the agent's --rule-priority (2-32765)")
	f.StringVar(&fwmark, "fwmark", fmt.Sprintf("%#x", d.FwMark), "the agent's --fwmark (a single bit)")
	f.BoolVar(&removeAnnotations, "remove-annotations", false, "also remove the wgmesh.io/ annotations of the Node")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for --remove-annotations (default: $KUBECONFIG, then ~/.kube/config, then in-cluster, as kubectl)")
	f.StringVar(&nodeName, "node-name", a.getenv("NODE_NAME"), "Node whose annotations --remove-annotations removes (default $NODE_NAME)")
	return cmd
}

// cleanupOptions completes ro from the instance's interface: an interface
// that is not wgmesh's is refused before anything is changed (routing's
// cleanup would delete its addresses); the table, priority and mark its
// alias records replace the defaults of the flags not given.
func (a *app) cleanupOptions(cmd *cobra.Command, ro *routing.Options) error {
	l, err := netlink.LinkByName(ro.Interface)
	if err != nil {
		// No interface (already removed, or never created): the flags
		// say what to remove.
		return nil
	}
	alias := l.Attrs().Alias
	rec, ours := instance.ParseAlias(alias)
	if !ours {
		return fmt.Errorf("refusing to clean up (nothing changed): interface %s is a %s interface not created by wgmesh (alias %q); give the --interface of the wgmesh instance", ro.Interface, l.Type(), alias)
	}
	f := cmd.Flags()
	if rec.Table > 0 && !f.Changed("route-table") {
		ro.Table = rec.Table
		if !f.Changed("host-route-table") {
			// The host table's default follows the route table.
			ro.HostTable = rec.Table + 1
		}
	}
	if rec.HostTable > 0 && !f.Changed("host-route-table") {
		ro.HostTable = rec.HostTable
	}
	if rec.Priority > 0 && !f.Changed("rule-priority") {
		ro.Priority = rec.Priority
	}
	if rec.FwMark != 0 && !f.Changed("fwmark") {
		ro.FwMark = rec.FwMark
	}
	a.log.Info("cleaning up wgmesh instance", "interface", ro.Interface, "alias", alias,
		"routeTable", ro.Table, "hostRouteTable", ro.HostTable, "rulePriority", ro.Priority, "fwmark", fmt.Sprintf("%#x", ro.FwMark))
	if rec.Table > 0 && rec.Table != ro.Table {
		a.log.Warn("the interface records another route table than --route-table; that table's entries stay",
			"interface", ro.Interface, "recorded", rec.Table, "routeTable", ro.Table)
	}
	return nil
}

// removeNodeAnnotations removes wgmesh's annotations from the Node and
// returns the ones it had (none: nothing to remove). A Node that does not
// exist is an error: the name is probably wrong.
func removeNodeAnnotations(ctx context.Context, client kubernetes.Interface, node string) ([]string, error) {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("--remove-annotations: read node %q (--node-name): %w", node, err)
	}
	var had []string
	for _, k := range []string{kube.AnnotationPublicKey, kube.AnnotationEndpoint, kube.AnnotationBackend} {
		if _, ok := n.Annotations[k]; ok {
			had = append(had, k)
		}
	}
	if len(had) == 0 {
		return nil, nil
	}
	if err := kube.RemoveAnnotations(ctx, client, node); err != nil {
		return nil, err
	}
	return had, nil
}
