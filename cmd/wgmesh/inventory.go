package main

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/wgmesh/wgmesh/routing"
)

// inventory is what of one wgmesh instance exists on the host, for
// cleanup's report of what it removed and what it did not find.
type inventory struct {
	Interface bool
	// Rules are the policy rules looking up the instance's tables.
	Rules int
	// Routes are wgmesh's routes (protocol 87) in the instance's tables.
	Routes int
	// NFTTable is whether the instance's nftables table exists.
	NFTTable bool
}

// takeInventory reads the instance's state. Read errors count as "not
// found" for the report; routing.Cleanup reports its own failures.
func takeInventory(o routing.Options) inventory {
	var inv inventory
	if _, err := netlink.LinkByName(o.Interface); err == nil {
		inv.Interface = true
	}
	tables := map[int]bool{o.Table: true, o.HostTable: true}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		if rules, err := netlink.RuleList(fam); err == nil {
			for _, r := range rules {
				if tables[r.Table] {
					inv.Rules++
				}
			}
		}
		for t := range tables {
			rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: t, Protocol: netlink.RouteProtocol(routing.RouteProtocol)},
				netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
			if err == nil {
				inv.Routes += len(rs)
			}
		}
	}
	if c, err := nftables.New(); err == nil {
		if ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
			for _, t := range ts {
				if t.Name == routing.NFTTableName(o.Interface) {
					inv.NFTTable = true
				}
			}
		}
	}
	return inv
}

// cleanupReport says, line by line, what cleanup removed, what it did not
// find and what is still there (the last is a failure).
func cleanupReport(o routing.Options, before, after inventory) (lines []string, left []string) {
	item := func(what string, had, has bool) {
		switch {
		case has:
			left = append(left, what)
			lines = append(lines, "still present: "+what)
		case had:
			lines = append(lines, "removed: "+what)
		default:
			lines = append(lines, "not found: "+what)
		}
	}
	count := func(n int, what string) string {
		if n == 0 {
			return what
		}
		return fmt.Sprintf("%d %s", n, what)
	}
	item("interface "+o.Interface+" (with its tunnel addresses)", before.Interface, after.Interface)
	item(count(max(before.Rules, after.Rules), fmt.Sprintf("policy rules looking up tables %d and %d", o.Table, o.HostTable)), before.Rules > 0, after.Rules > 0)
	item(count(max(before.Routes, after.Routes), fmt.Sprintf("wgmesh routes (protocol %d) in tables %d and %d", routing.RouteProtocol, o.Table, o.HostTable)), before.Routes > 0, after.Routes > 0)
	item("nftables table inet "+routing.NFTTableName(o.Interface), before.NFTTable, after.NFTTable)
	return lines, left
}

// nothingFound reports whether an inventory is empty.
func (inv inventory) nothingFound() bool {
	return !inv.Interface && inv.Rules == 0 && inv.Routes == 0 && !inv.NFTTable
}
