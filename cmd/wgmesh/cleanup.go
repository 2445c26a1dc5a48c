package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/instance"
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
			ro := routing.DefaultOptions()
			ro.Interface = iface
			if table <= 0 || table > 0xffffffff || (table >= 253 && table <= 255) {
				return usagef("--route-table %d: want 1-4294967295 except 253, 254 and 255", table)
			}
			ro.Table = int(table)
			ht, err := hostRouteTable(table, hostTable)
			if err != nil {
				return err
			}
			ro.HostTable = ht
			if priority < 2 || priority > 32765 {
				return usagef("--rule-priority %d: want 2-32765", priority)
			}
			ro.Priority = priority
			mark, err := strconv.ParseUint(strings.TrimSpace(fwmark), 0, 32)
			if err != nil || mark == 0 {
				return usagef("--fwmark %q: want a nonzero number such as 0x2000", fwmark)
			}
			ro.FwMark = uint32(mark)
			ro.Logger = a.log
			if removeAnnotations && nodeName == "" {
				return usagef("--remove-annotations needs --node-name (or NODE_NAME)")
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
			var errs []error
			// Routes first: once they are gone nothing points at the
			// interface any more.
			if err := routing.Cleanup(ctx, ro); err != nil {
				errs = append(errs, fmt.Errorf("remove routing state: %w", err))
			}
			if err := device.Remove(iface); err != nil {
				errs = append(errs, fmt.Errorf("remove interface %s: %w", iface, err))
			}
			if removeAnnotations {
				if err := a.removeAnnotations(ctx, kubeconfig, nodeName); err != nil {
					errs = append(errs, err)
				}
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "removed wgmesh interface %s, rules, routes (tables %d and %d) and nftables table inet %s\n", iface, ro.Table, ro.HostTable, routing.NFTTableName(iface))
			if removeAnnotations {
				fmt.Fprintf(a.out, "removed wgmesh.io/ annotations from node %s\n", nodeName)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&iface, "interface", device.DefaultName, "WireGuard interface")
	f.Int64Var(&table, "route-table", int64(d.Table), "the agent's --route-table")
	f.Int64Var(&hostTable, "host-route-table", 0, "the agent's --host-route-table (0 = --route-table + 1)")
	f.IntVar(&priority, "rule-priority", d.Priority, "the agent's --rule-priority")
	f.StringVar(&fwmark, "fwmark", fmt.Sprintf("%#x", d.FwMark), "the agent's --fwmark")
	f.BoolVar(&removeAnnotations, "remove-annotations", false, "also remove the wgmesh.io/ annotations of the Node")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig for --remove-annotations (default: in-cluster)")
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
