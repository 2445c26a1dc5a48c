package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/instance"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/routing"
)

func (a *app) cleanupCommand() *cobra.Command {
	var (
		iface             string
		table             int
		hostTable         int
		priority          int
		fwmark            string
		removeAnnotations bool
		kubeconfig        string
		nodeName          string
		removeKey         bool
		keyFile           string
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
configuration (kubectl's loading rules). With --remove-key it also removes the
private key file (--key-file, the agent's default /var/lib/wgmesh/private.key);
a file that is not a WireGuard private key is refused. Every local step is
done before the API is called. What was not found is reported and is no
error: running cleanup again, or on a node the agent never ran on, exits 0.
The --route-table, --host-route-table, --rule-priority and
--fwmark the agent ran with are read from the interface (its alias records
them); flags given explicitly win. Only the instance of --interface is
touched: other wgmesh instances' rules, routes and tables stay. cleanup
refuses while an agent runs for the interface, and refuses an interface
wgmesh did not create.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The router's own rule (routing.Options.Validate), as for
			// the agent: a value the agent would refuse cannot name one
			// of its instances.
			ro := routing.DefaultOptions()
			ro.Interface, ro.Table, ro.HostTable, ro.Priority = iface, table, hostTable, priority
			names := optionFlags
			if hostTable == 0 {
				ro.HostTable = table + 1
				names = withFlag(names, "HostTable", fmt.Sprintf("--host-route-table (default: --route-table %d + 1)", table))
			}
			var err error
			if ro.FwMark, err = parseFwMark(fwmark); err != nil {
				return err
			}
			if err := ro.Validate(); err != nil {
				return flagged(err, names)
			}
			ro.Logger = a.log
			if removeAnnotations && strings.TrimSpace(nodeName) == "" {
				return usagef("--remove-annotations needs --node-name (or NODE_NAME)")
			}
			if !removeAnnotations && cmd.Flags().Changed("kubeconfig") {
				return usagef("--kubeconfig is used only with --remove-annotations")
			}
			if !removeKey && cmd.Flags().Changed("key-file") {
				return usagef("--key-file is used only with --remove-key")
			}
			if removeKey && strings.TrimSpace(keyFile) == "" {
				return usagef("--key-file must not be empty")
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
			// The key last among the local steps, after the interface
			// that used it; it is removed even if a step above failed
			// (converge as far as possible, then report).
			if removeKey {
				switch removed, err := removeKeyFile(keyFile); {
				case err != nil:
					errs = append(errs, err)
				case removed:
					fmt.Fprintf(a.out, "removed: private key %s\n", keyFile)
				default:
					fmt.Fprintf(a.out, "not found: private key %s\n", keyFile)
				}
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
	f.IntVar(&table, "route-table", d.Table, "the agent's --route-table (read from the interface when not given; 1-4294967295, not 253-255)")
	f.IntVar(&hostTable, "host-route-table", 0, "the agent's --host-route-table (0 = --route-table + 1)")
	f.IntVar(&priority, "rule-priority", d.Priority, "the agent's --rule-priority (2-32765)")
	f.StringVar(&fwmark, "fwmark", fmt.Sprintf("%#x", d.FwMark), "the agent's --fwmark (a single bit)")
	f.BoolVar(&removeAnnotations, "remove-annotations", false, "also remove the wgmesh.io/ annotations of the Node")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for --remove-annotations (default: $KUBECONFIG, then ~/.kube/config, then in-cluster, as kubectl)")
	f.StringVar(&nodeName, "node-name", a.getenv("NODE_NAME"), "Node whose annotations --remove-annotations removes (default $NODE_NAME)")
	f.BoolVar(&removeKey, "remove-key", false, "also remove the private key file (--key-file); refused if the file is not a WireGuard private key")
	f.StringVar(&keyFile, "key-file", agent.DefaultKeyFile, "the agent's --key-file, for --remove-key")
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

// removeKeyFile removes the private key file at path and reports whether
// there was one. Only a regular file holding a WireGuard private key (the
// format of 'wg genkey' and the agent's own files) is removed: a wrong
// --key-file must not delete someone else's file.
func removeKeyFile(path string) (bool, error) {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("--remove-key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("--remove-key: refusing to remove %s (--key-file): not a regular file (%s)", path, st.Mode().Type())
	}
	if st.Size() > maxKeyFileBytes {
		return false, fmt.Errorf("--remove-key: refusing to remove %s (--key-file): %d bytes, too large for a WireGuard private key", path, st.Size())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("--remove-key: %w", err)
	}
	// ParseKey's error never contains its input.
	if _, err := mesh.ParseKey(strings.TrimSpace(string(data))); err != nil {
		return false, fmt.Errorf("--remove-key: refusing to remove %s (--key-file): not a WireGuard private key: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("--remove-key: %w", err)
	}
	return true, nil
}

// maxKeyFileBytes bounds what --remove-key reads, as the key store's
// loader does: a key file is 45 bytes.
const maxKeyFileBytes = 4096

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
