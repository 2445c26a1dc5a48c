package mesh

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/internal/prefixes"
)

// This file holds Derive's rules, read top to bottom in the order Derive
// applies them: who is a peer, conflicts, keep-outside addresses, claims
// and their overlaps, cluster ranges, and what gets built. The machinery
// that keeps them fast at thousands of nodes (sorted indexes, merges) is in
// derive_index.go and internal/prefixes; it decides nothing.

// Reasons Derive reports in addition to those declared with Problem. Sources
// never produce them: Kubernetes names are unique and non-empty, and the
// peers file parser rejects such files, but Derive must stay total for any
// input.
const (
	// ReasonInvalidName marks a node without a name: it cannot be told apart
	// from the others in peers, routes, metrics and events.
	ReasonInvalidName Reason = "InvalidName"
	// ReasonDuplicateName marks nodes that share a name; none of them is
	// programmed because no output could say which one a peer is.
	ReasonDuplicateName Reason = "DuplicateName"
)

// maxNamesInDetail bounds how many other node names a Problem's Detail lists,
// so a key copied onto thousands of nodes does not make megabyte-long events.
const maxNamesInDetail = 3

// Derive computes the desired data plane of the local node self from every
// node of the cluster. It is deterministic (every output slice is sorted and
// prefixes are masked, so the order of nodes does not matter) and total: bad
// input never panics, it becomes a Problem and the node, or the claim, is left
// out.
//
// The local node is recognised by name: every entry of nodes named self.Name
// is the local node (its pod CIDRs, host IPs and endpoints are merged with
// self's); its key is the caller's business. If no entry has that name,
// Derive reports SelfMissing and still derives the peers.
//
// Every other node is exactly one of:
//   - a peer: managed, with a usable key and endpoint, in conflict with no
//     other node. Its claims (pod CIDRs and host IPs as /32 or /128, of the
//     enabled families) become its AllowedIPs, so replies from its node
//     address through the tunnel are accepted. Its pod CIDRs become
//     ViaTunnel routes and StrictSources. Its host IPs become ViaTunnel
//     HostRoutes, which only traffic from the local pod CIDRs (PodSources)
//     consults, and with HostEncryption also ViaTunnel routes.
//   - unmanaged (DeriveOptions.Unmanaged matches its labels, key or not): its pod
//     CIDRs get Throw routes, it is listed in Unencrypted and reported.
//   - left out because of a Problem (NoKey, InvalidKey, NoEndpoint,
//     InvalidEndpoint, DuplicateKey, InvalidName, DuplicateName): in strict
//     mode its pod CIDRs get Unreachable routes and are StrictSources; with
//     AllowUnencrypted they get Throw routes and the node is listed in
//     Unencrypted.
//
// Duplicates are settled so that an established node never loses its place
// to a newcomer, and every agent settles them alike without talking to the
// others:
//   - nodes sharing a name are all left out (DuplicateName).
//   - of the nodes publishing one public key, the local node included, the
//     senior one keeps it: the earliest Node.Created, a known instant before
//     an unknown one, the lower name on a tie. Every other one is left out
//     and reported (DuplicateKey, naming the keeper); the keeper is not
//     reported. If the keeper is another node, the local node is the
//     newcomer: every other agent leaves it out, and it reports that on
//     itself (DuplicateKey on self.Name) and has no peers at all, so that a
//     copied private key cannot take over the keeper's sessions (its
//     handshakes would make every peer roam the keeper's endpoint here).
//   - nodes sharing an endpoint, with each other or with the local node,
//     stay programmed and are reported (DuplicateEndpoint, a Warning):
//     WireGuard tells peers apart by key and roams each peer to the address
//     its packets come from.
//
// Claims are checked independently of the node's standing:
//   - a claim that overlaps one of another node's (equal, containing or
//     contained) is contested: neither claim is programmed, only the contested
//     prefixes — the nodes' other claims still are. A contested pod CIDR gets
//     an Unreachable route (Throw with AllowUnencrypted) owned by no node, so
//     its traffic goes to neither claimant; contested host IPs get no route.
//   - a claim inside one of the local node's pod CIDRs or host IPs is
//     reported as OwnCIDROverlap and gets no route: the own Throw route (or
//     the local table) keeps that traffic local.
//   - a claim that contains an own pod CIDR, or a pod CIDR that contains an
//     address that must stay outside the tunnel (any node's endpoint or host
//     IP, a KeepOutside address), is reported and not programmed; it gets an
//     Unreachable route (Throw with AllowUnencrypted) and is no strict
//     source, and each such address inside it gets its own Throw route (the
//     local node's addresses are local anyway). So the agent always reaches
//     its peers and the API server outside the tunnel, and nothing else in
//     the prefix leaks.
//   - a host IP equal to an endpoint or KeepOutside address (the usual node
//     address that is also its endpoint, an API server on a node) never
//     gets a route in Routes, so host traffic to it — the agent's to the
//     API server and to the peers' endpoints — stays outside the tunnel.
//     It is still an AllowedIP and a HostRoute: only packets from the local
//     pod CIDRs look HostRoutes up, never the host's own or the device's
//     encrypted ones. With HostEncryption, peers' endpoints and KeepOutside
//     addresses get Throw routes.
//
// Cluster ranges (DeriveOptions.ClusterCIDRs) cover what no node claims: each gets
// an Unreachable route (Throw with AllowUnencrypted) owned by no node, every
// route above is more specific, every keep-outside address inside it (the
// local node's included) gets a Throw route unless the tunnel carries it,
// and in strict mode the range minus all Throw destinations and keep-outside
// addresses is EncryptOnly. A range inside or equal to a node's pod CIDR,
// or inside another range, is ignored.
//
// Host IPs of nodes that are not peers get no routes: the promise of strict
// mode covers pod traffic only, and a host without an agent must stay
// reachable. A contested host IP (two nodes claim it) is left out of both
// nodes' AllowedIPs and HostRoutes; their pod CIDRs are not affected. A
// disabled address family is ignored entirely: its pod CIDRs, host IPs,
// tunnel addresses and keep-outside routes are not considered.
// Problems carried in Node.Problems are copied to the output.
func Derive(self Node, nodes []Node, o DeriveOptions) Desired {
	d := &deriver{o: o, selfName: self.Name, selfKey: self.PublicKey}
	d.collectSelf(self, nodes)
	d.collectOthers(nodes)
	d.findConflicts()
	d.collectKeepOutside()
	d.collectClaims()
	d.checkOwnAndKeepOutside()
	d.sweepOverlaps()
	d.collectCluster()
	return d.build()
}

// deriver holds the intermediate state of one Derive call.
type deriver struct {
	o        DeriveOptions
	selfName string
	selfKey  Key

	selfFound bool
	// selfCreated is the local node's seniority: the earliest known
	// Created of self and the list's entries named like it (zero: unknown).
	selfCreated   time.Time
	ownPods       []netip.Prefix
	ownHosts      []netip.Addr
	selfEndpoints []netip.AddrPort

	cands []candidate
	// own are the local node's claims, sorted and pairwise disjoint.
	own []claim
	// claims are every other node's claims; claim.owner indexes cands.
	claims []claim
	// order indexes claims sorted by prefix (then owner name).
	order []int
	// keep are the addresses that never go through the tunnel, sorted.
	keep []keepOut
	// keepKeys holds keep's addresses in the same order, as pointer-free
	// keys that searchKeep compares without calls.
	keepKeys []prefixes.Key

	// cluster are the cluster ranges in force: DeriveOptions.ClusterCIDRs that
	// are valid, of an enabled family, not inside a pod CIDR claim and not
	// inside one another; sorted.
	cluster []netip.Prefix

	problems []Problem
}

// candidate is a node other than the local one.
type candidate struct {
	node *Node
	// endpoint is the node's endpoint with the address unmapped, valid only
	// if endpointOK.
	endpoint   netip.AddrPort
	keyOK      bool
	endpointOK bool
	unmanaged  bool
	// blocked says the node is managed but cannot be a peer (a Problem says
	// why).
	blocked bool
	// claims is the range of deriver.claims that belongs to this node.
	claimStart, claimEnd int
}

// isPeer reports whether c is programmed as a WireGuard peer.
func (c *candidate) isPeer() bool { return !c.unmanaged && !c.blocked }

// claim is one prefix a node asks to have routed to it.
type claim struct {
	prefix netip.Prefix
	owner  int // index into deriver.cands; -1 for the local node
	host   bool
	// outside: a host IP that is also an endpoint or a KeepOutside
	// address (set with HostEncryption only). It is an AllowedIP and a
	// host-table route like any host IP, but never a main-table route:
	// host-sourced traffic to it (the agent's) must not enter the tunnel.
	outside bool
	// contested: overlaps another node's claim.
	contested bool
	// dropped: overlaps an own claim or contains a keep-outside address; never
	// programmed for its node.
	dropped bool
	// wider: dropped, but not inside an own claim, so the prefix still needs
	// a route that keeps its traffic from leaking (Unreachable, or Throw
	// with AllowUnencrypted); the own and keep-outside Throw routes inside
	// it are more specific.
	wider bool
}

// keepOut is an address that must stay outside the tunnel: an endpoint, a
// host IP, or an DeriveOptions.KeepOutside address.
type keepOut struct {
	addr netip.Addr
	// cand indexes deriver.cands for another node's address; it is keepSelf
	// or keepOption otherwise.
	cand int
	// host marks a host IP rather than an endpoint or option. Host IPs are
	// never inside another claim, but with HostEncryption they are claims
	// themselves.
	host bool
	// route says a wider claim that contains the address got a route, so
	// the address needs its own Throw route.
	route bool
	// inRange says a cluster range contains the address, so it needs its
	// own Throw route unless the tunnel carries it (a peer's host IP with
	// HostEncryption).
	inRange bool
}

const (
	keepSelf   = -1 // the local node's endpoint or host IP
	keepOption = -2 // DeriveOptions.KeepOutside
)

func (d *deriver) collectSelf(self Node, nodes []Node) {
	d.ownPods = append(d.ownPods, self.PodCIDRs...)
	d.ownHosts = append(d.ownHosts, self.HostIPs...)
	d.selfEndpoints = append(d.selfEndpoints, self.Endpoint)
	d.selfCreated = self.Created
	d.copyProblems(&self)
	for i := range nodes {
		n := &nodes[i]
		if n.Name != d.selfName {
			continue
		}
		d.selfFound = true
		d.ownPods = append(d.ownPods, n.PodCIDRs...)
		d.ownHosts = append(d.ownHosts, n.HostIPs...)
		d.selfEndpoints = append(d.selfEndpoints, n.Endpoint)
		if older(n.Created, "", d.selfCreated, "") {
			d.selfCreated = n.Created
		}
		d.copyProblems(n)
	}
	if !d.selfFound {
		d.problem(d.selfName, ReasonSelfMissing,
			"the local node %q is not in the node list; peers are derived without its entry", d.selfName)
	}
}

func (d *deriver) collectOthers(nodes []Node) {
	d.cands = make([]candidate, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		if n.Name == d.selfName {
			continue
		}
		d.copyProblems(n)
		c := candidate{node: n}
		if n.Name == "" {
			d.problem("", ReasonInvalidName, "a node has no name; not programmed; %s", d.consequence())
			c.blocked = true
		}
		c.endpoint = netip.AddrPortFrom(n.Endpoint.Addr().Unmap(), n.Endpoint.Port())
		if d.o.Unmanaged != nil && d.o.Unmanaged(n.Labels) {
			c.unmanaged = true
			d.problem(n.Name, ReasonUnmanaged,
				"node matches the unmanaged-nodes selector: it is outside the mesh and its pod traffic is not encrypted")
			d.cands = append(d.cands, c)
			continue
		}
		switch {
		case hasReason(n, ReasonInvalidKey):
			// The source reported why; the key field holds nothing usable.
		case n.PublicKey.IsZero():
			d.problem(n.Name, ReasonNoKey, "node has published no WireGuard public key (is the agent running?); %s", d.consequence())
		default:
			c.keyOK = true
		}
		ep := n.Endpoint
		switch {
		case hasReason(n, ReasonInvalidEndpoint):
		case !ep.Addr().IsValid():
			// A node without key and endpoint runs no agent: NoKey says so,
			// and a second problem would send the operator looking for a
			// missing address.
			if c.keyOK || hasReason(n, ReasonInvalidKey) {
				d.problem(n.Name, ReasonNoEndpoint, "node has published no WireGuard endpoint; %s", d.consequence())
			}
		case !usableEndpointAddr(ep.Addr()):
			d.problem(n.Name, ReasonInvalidEndpoint, "endpoint %s is not a unicast address; %s", ep, d.consequence())
		case ep.Port() == 0:
			d.problem(n.Name, ReasonInvalidEndpoint, "endpoint %s has port 0; %s", ep, d.consequence())
		default:
			c.endpointOK = true
		}
		if !c.keyOK || !c.endpointOK {
			c.blocked = true
		}
		d.cands = append(d.cands, c)
	}
}

// findConflicts settles managed nodes that share a name, a key or an
// endpoint. Nodes sharing a name are all blocked: no output could say which
// one a peer is. Of the nodes publishing one key (the local node included)
// the senior one keeps it and every other one is blocked and reported: see
// older for the rule every agent applies alike. Nodes sharing an endpoint
// all stay as they are and are reported with a warning: WireGuard tells
// peers apart by key.
func (d *deriver) findConflicts() {
	managed := make([]int, 0, len(d.cands))
	for i := range d.cands {
		if !d.cands[i].unmanaged {
			managed = append(managed, i)
		}
	}
	name := func(i int) string { return d.cands[i].node.Name }

	d.groups(managed, func(i int) bool { return name(i) != "" },
		func(a, b int) int { return strings.Compare(name(a), name(b)) },
		func(group []int) {
			for _, i := range group {
				d.cands[i].blocked = true
				d.problem(name(i), ReasonDuplicateName, "several nodes have this name; none of them is programmed; %s", d.consequence())
			}
		})
	// Only the self argument's key is the local key: entries of the list
	// named like the local node may be stale, and the sources check them.
	// The nodes holding it are settled together with the local node below.
	hasSelfKey := func(i int) bool {
		return d.cands[i].keyOK && !d.selfKey.IsZero() && d.cands[i].node.PublicKey == d.selfKey
	}
	d.groups(managed, func(i int) bool { return d.cands[i].keyOK && !hasSelfKey(i) }, d.byKey(managed),
		func(group []int) {
			keeper := d.senior(group)
			for _, i := range group {
				if i != keeper {
					d.cands[i].blocked = true
					d.problem(name(i), ReasonDuplicateKey, "public key is also published by node %q, which keeps it (%s); not programmed; %s; %s",
						name(keeper), keeperWhy, d.consequence(), newcomerFix)
				}
			}
		})
	d.settleSelfKey(managed, hasSelfKey)

	d.groups(managed, func(i int) bool { return d.cands[i].endpointOK }, d.byEndpoint(managed),
		func(group []int) {
			for k, i := range group {
				d.problem(name(i), ReasonDuplicateEndpoint, "endpoint %s is also published by %s; %s",
					d.cands[i].endpoint, d.otherNames(group, k), sharedEndpoint)
			}
		})
	// The same for the local endpoint: every agent, this one included,
	// keeps both nodes programmed.
	for _, i := range managed {
		c := &d.cands[i]
		if c.endpointOK && slices.ContainsFunc(d.selfEndpoints, func(ep netip.AddrPort) bool {
			return ep.Addr().IsValid() && netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()) == c.endpoint
		}) {
			d.problem(name(i), ReasonDuplicateEndpoint, "node publishes the endpoint %s of the local node %q; %s", c.endpoint, d.selfName, sharedEndpoint)
		}
	}
}

// Fixed parts of the duplicate problems' details.
const (
	keeperWhy   = "it was there first: older Node object or earlier peers-file entry"
	newcomerFix = "if this node is genuine, run 'wgmesh rotate-key' on it"
	// sharedEndpoint is the detail's end of every DuplicateEndpoint.
	sharedEndpoint = "both stay programmed (a warning: WireGuard tells peers apart by key and roams each to the address its packets come from)"
)

// settleSelfKey settles the nodes publishing the local node's key (those
// for which hasSelfKey is true) as every other agent settles them, with the
// local node as one more claimant. If the local node is the senior one, the
// others are blocked and reported. Otherwise every other agent gives the key
// to the senior node and leaves the local node out, and the local node is
// reported (DuplicateKey on the local node) naming the senior one. The local
// interface then holds the senior node's identity: were it to handshake with
// any peer, that peer would roam the senior node's endpoint to this host and
// send it the senior node's traffic. So every managed node is blocked here
// (no peers; strict mode makes their pod CIDRs unreachable), the newcomers
// among the claimants are reported as everywhere, and the agent keeps
// serving its status; a new key ('wgmesh rotate-key') brings it back.
func (d *deriver) settleSelfKey(managed []int, hasSelfKey func(int) bool) {
	var group []int
	for _, i := range managed {
		if hasSelfKey(i) {
			group = append(group, i)
		}
	}
	if len(group) == 0 {
		return
	}
	keeper := d.senior(group)
	selfKeeps := !older(d.cands[keeper].node.Created, d.cands[keeper].node.Name, d.selfCreated, d.selfName)
	for _, i := range group {
		c := &d.cands[i]
		c.blocked = true
		switch {
		case selfKeeps:
			d.problem(c.node.Name, ReasonDuplicateKey, "node publishes the public key of the local node %q, which keeps it (%s); not programmed; %s; %s",
				d.selfName, keeperWhy, d.consequence(), newcomerFix)
		case i != keeper:
			d.problem(c.node.Name, ReasonDuplicateKey, "public key is also published by node %q, which keeps it (%s); not programmed; %s; %s",
				d.cands[keeper].node.Name, keeperWhy, d.consequence(), newcomerFix)
		}
	}
	if !selfKeeps {
		for _, i := range managed {
			d.cands[i].blocked = true
		}
		d.problem(d.selfName, ReasonDuplicateKey,
			"the local node's public key is also published by node %q, which keeps it (%s): every other agent leaves this node out, "+
				"and this one programs no peers so that its copy of the key cannot take over %q's sessions; "+
				"run 'wgmesh rotate-key' on this node",
			d.cands[keeper].node.Name, keeperWhy, d.cands[keeper].node.Name)
	}
}

// senior returns the member of group that keeps a shared key.
func (d *deriver) senior(group []int) int {
	best := group[0]
	for _, i := range group[1:] {
		if older(d.cands[i].node.Created, d.cands[i].node.Name, d.cands[best].node.Created, d.cands[best].node.Name) {
			best = i
		}
	}
	return best
}

// older reports whether the node (at, an) is senior to the node (bt, bn):
// it was created earlier (a known instant before an unknown one), or at the
// same instant with a lower name. Every agent sees the same Created values
// and names, so they all pick the same senior node without talking to each
// other.
func older(at time.Time, an string, bt time.Time, bn string) bool {
	if az, bz := at.IsZero(), bt.IsZero(); az != bz {
		return bz
	}
	if !at.Equal(bt) {
		return at.Before(bt)
	}
	return an < bn
}

// otherNames lists the names of group except its k-th member, sorted (group
// is sorted by name within equal keys), at most maxNamesInDetail of them.
func (d *deriver) otherNames(group []int, k int) string {
	var names []string
	for j, i := range group {
		if j != k {
			names = append(names, fmt.Sprintf("%q", d.cands[i].node.Name))
		}
	}
	if len(names) == 1 {
		return "node " + names[0]
	}
	last := names[len(names)-1]
	if len(names) > maxNamesInDetail {
		last = fmt.Sprintf("%d more", len(names)-maxNamesInDetail)
		names = names[:maxNamesInDetail+1]
	}
	return "nodes " + strings.Join(names[:len(names)-1], ", ") + " and " + last
}

func (d *deriver) collectKeepOutside() {
	addHosts := func(cand int, hosts []netip.Addr) {
		for _, a := range hosts {
			if a = a.Unmap().WithZone(""); usableEndpointAddr(a) {
				d.keep = append(d.keep, keepOut{addr: a, cand: cand, host: true})
			}
		}
	}
	n := len(d.selfEndpoints) + len(d.ownHosts) + len(d.o.KeepOutside)
	for i := range d.cands {
		n += 1 + len(d.cands[i].node.HostIPs)
	}
	d.keep = make([]keepOut, 0, n)
	// The few local and option addresses go first: appended after the
	// nodes' they would have to travel the whole list in the sort below,
	// which is nearly free when the nodes come in address order. Entries
	// the sort finds equal are interchangeable, so this order does not
	// change the result.
	for _, ep := range d.selfEndpoints {
		if a := ep.Addr().Unmap(); usableEndpointAddr(a) {
			d.keep = append(d.keep, keepOut{addr: a, cand: keepSelf})
		}
	}
	addHosts(keepSelf, d.ownHosts)
	for _, a := range d.o.KeepOutside {
		if a = a.Unmap().WithZone(""); a.IsValid() {
			d.keep = append(d.keep, keepOut{addr: a, cand: keepOption})
		}
	}
	for i := range d.cands {
		c := &d.cands[i]
		if a := c.endpoint.Addr(); usableEndpointAddr(a) {
			d.keep = append(d.keep, keepOut{addr: a, cand: i})
		}
		addHosts(i, c.node.HostIPs)
	}
	slices.SortFunc(d.keep, func(a, b keepOut) int {
		// DeriveOptions.KeepOutside first, then the local node, then by node
		// name, so this order does not depend on the input's.
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		if c := cmp.Compare(min(a.cand, 0), min(b.cand, 0)); c != 0 {
			return c
		}
		if c := strings.Compare(d.keepName(a), d.keepName(b)); c != 0 {
			return c
		}
		return compareBool(a.host, b.host)
	})
	d.keepKeys = make([]prefixes.Key, len(d.keep))
	for i := range d.keep {
		d.keepKeys[i] = prefixes.AddrKey(d.keep[i].addr)
	}
}

// keepName is the name of the node whose endpoint k is ("" for options).
func (d *deriver) keepName(k keepOut) string {
	switch {
	case k.cand >= 0:
		return d.cands[k.cand].node.Name
	case k.cand == keepSelf:
		return d.selfName
	}
	return ""
}

// describeKeep names a keep-outside address for a Problem detail.
func (d *deriver) describeKeep(k keepOut) string {
	what := "endpoint address"
	if k.host {
		what = "host IP"
	}
	switch {
	case k.cand >= 0:
		return fmt.Sprintf("the %s %s of node %q", what, k.addr, d.cands[k.cand].node.Name)
	case k.cand == keepSelf:
		return fmt.Sprintf("the local node's %s %s", what, k.addr)
	}
	return fmt.Sprintf("the keep-outside (API server) address %s", k.addr)
}

func (d *deriver) collectClaims() {
	d.own = d.appendClaims(nil, -1, d.selfName, d.ownPods, d.ownHosts)
	n := 0
	for i := range d.cands {
		n += len(d.cands[i].node.PodCIDRs) + len(d.cands[i].node.HostIPs)
	}
	d.claims = make([]claim, 0, n)
	for i := range d.cands {
		c := &d.cands[i]
		c.claimStart = len(d.claims)
		d.claims = d.appendClaims(d.claims, i, c.node.Name, c.node.PodCIDRs, c.node.HostIPs)
		c.claimEnd = len(d.claims)
	}
}

// appendClaims validates one node's pod CIDRs and host IPs and appends its
// claims to dst, sorted, with claims inside another claim of the same node
// removed, so a node's claims are pairwise disjoint.
func (d *deriver) appendClaims(dst []claim, owner int, name string, pods []netip.Prefix, hosts []netip.Addr) []claim {
	start := len(dst)
	cs := dst
	for _, p := range pods {
		switch {
		case !p.IsValid():
			d.problem(name, ReasonInvalidCIDR, "pod CIDR %q is not a valid prefix; ignored", p.String())
			continue
		case p.Addr().Is4In6():
			d.problem(name, ReasonInvalidCIDR, "pod CIDR %s is an IPv4-mapped IPv6 prefix; ignored (use the IPv4 form)", p)
			continue
		case p.Bits() == 0:
			d.problem(name, ReasonInvalidCIDR, "pod CIDR %s covers a whole address family; ignored", p)
			continue
		}
		p = p.Masked()
		if d.familyEnabled(p.Addr()) {
			cs = append(cs, claim{prefix: p, owner: owner})
		}
	}
	// Host IPs are claims whatever HostEncryption says: a peer's are its
	// AllowedIPs (replies from a remote node's address arrive through the
	// tunnel) and the host table's routes (pod-sourced traffic to them is
	// encrypted). HostEncryption only adds main-table routes for them.
	for _, a := range hosts {
		a = a.Unmap().WithZone("")
		if !usableEndpointAddr(a) {
			d.problem(name, ReasonInvalidCIDR, "host IP %q is not a unicast address; ignored", a.String())
			continue
		}
		if !d.familyEnabled(a) {
			continue
		}
		// A peer's endpoint (usually its host IP) and the API server stay
		// outside the tunnel for host traffic, so the agent can always
		// reach them: such a claim gets no main-table route. Only host
		// encryption gives host IPs main-table routes, so only then does
		// the lookup matter.
		outside := owner >= 0 && d.o.HostEncryption && d.isEndpointOrOption(a)
		cs = append(cs, claim{prefix: netip.PrefixFrom(a, a.BitLen()), owner: owner, host: true, outside: outside})
	}
	mine := cs[start:]
	slices.SortFunc(mine, func(a, b claim) int {
		if c := prefixes.Compare(a.prefix, b.prefix); c != 0 {
			return c
		}
		return compareBool(a.host, b.host)
	})
	kept := 0
	for i := range mine {
		// Sorted by start address, shorter first: a claim is inside an
		// earlier one only if it is inside the last one kept.
		if kept > 0 && mine[kept-1].prefix.Contains(mine[i].prefix.Addr()) {
			continue
		}
		// Claims stay in place until one is removed: copying a claim onto
		// itself would still cost write barriers.
		if kept != i {
			mine[kept] = mine[i]
		}
		kept++
	}
	return cs[:start+kept]
}

// checkOwnAndKeepOutside drops claims that overlap the local node's or
// contain an address that must stay outside the tunnel.
func (d *deriver) checkOwnAndKeepOutside() {
	for i := range d.claims {
		c := &d.claims[i]
		name := d.cands[c.owner].node.Name
		o, inside, ok := d.ownOverlap(c.prefix)
		if ok && o.host && !inside && !c.host {
			// A pod CIDR holding a local host IP: the keep-outside check
			// below reports it, unless it holds an own pod CIDR as well.
			j := slices.IndexFunc(d.own, func(x claim) bool { return !x.host && c.prefix.Overlaps(x.prefix) })
			if ok = j >= 0; ok {
				o = d.own[j]
			}
		}
		if ok {
			c.dropped = true
			if inside {
				// The local node's Throw route covers it: own traffic
				// stays local and nothing else is inside.
				d.problem(name, ReasonOwnCIDROverlap, "%s is inside the local node's %s; not programmed", describe(*c), describe(o))
				continue
			}
			c.wider = true
			d.problem(name, ReasonOwnCIDROverlap, "%s contains the local node's %s; not programmed, %s", describe(*c), describe(o), d.blocked())
		}
		if c.host {
			continue
		}
		first := true
		for k := d.searchKeep(c.prefix.Addr()); k < len(d.keep) && c.prefix.Contains(d.keep[k].addr); k++ {
			d.keep[k].route = true
			if first {
				first = false
				c.dropped, c.wider = true, true
				d.problem(name, ReasonCIDROverlap, "%s contains %s; not programmed, %s, and that address stays reachable outside the tunnel",
					describe(*c), d.describeKeep(d.keep[k]), d.blocked())
			}
		}
	}
}

// blocked says what happens to a wider claim that is not programmed.
func (d *deriver) blocked() string {
	if d.o.AllowUnencrypted {
		return "its traffic is sent unencrypted (allow-unencrypted)"
	}
	return "its traffic is blocked (strict mode)"
}

// sweepOverlaps marks every claim that overlaps another node's claim as
// contested, and reports it naming one claim it overlaps. Claims of one
// node are disjoint, so every overlap is between two nodes. It also sets
// d.order, the order build visits the claims in.
func (d *deriver) sweepOverlaps() {
	d.order = d.sortClaims()
	// partner remembers one overlapping claim per claim for the Problem.
	partner := make([]int, len(d.claims))
	for k, pk := range prefixes.Parents(d.order, func(i int) netip.Prefix { return d.claims[i].prefix }) {
		if pk < 0 {
			continue
		}
		i, top := d.order[k], d.order[pk]
		// Every claim containing top is already contested: it was when
		// top was found inside it.
		d.claims[i].contested = true
		partner[i] = top
		if !d.claims[top].contested {
			partner[top] = i
		}
		d.claims[top].contested = true
	}
	for _, i := range d.order {
		c := d.claims[i]
		if !c.contested {
			continue
		}
		o := d.claims[partner[i]]
		d.problem(d.cands[c.owner].node.Name, ReasonCIDROverlap, "%s overlaps %s of node %q; neither claim is programmed",
			describe(c), describe(o), d.cands[o.owner].node.Name)
	}
}

// describe names a claim for a Problem detail.
func describe(c claim) string {
	if c.host {
		return "host IP " + c.prefix.Addr().String()
	}
	return "pod CIDR " + c.prefix.String()
}

// collectCluster picks the cluster ranges in force (see deriver.cluster)
// and marks the keep-outside addresses inside them. A range inside or equal
// to a node's pod CIDR adds nothing (that node's route, whatever its kind,
// covers it) and would cut a hole into a local or a peer's CIDR, so it is
// ignored.
func (d *deriver) collectCluster() {
	var cs []netip.Prefix
	for _, p := range d.o.ClusterCIDRs {
		if !p.IsValid() || p.Addr().Is4In6() || p.Bits() == 0 || !d.familyEnabled(p.Addr()) {
			continue
		}
		p = p.Masked()
		inside := func(c claim) bool { return c.prefix.Bits() <= p.Bits() && c.prefix.Contains(p.Addr()) }
		if slices.ContainsFunc(d.own, inside) || slices.ContainsFunc(d.claims, inside) {
			continue
		}
		cs = append(cs, p)
	}
	d.cluster = prefixes.Outermost(cs)
	for _, p := range d.cluster {
		for k := d.searchKeep(p.Addr()); k < len(d.keep) && p.Contains(d.keep[k].addr); k++ {
			// The local node's addresses included: usually local (the
			// local table answers first), but a published endpoint may be
			// a NAT's address, which the range must not swallow.
			d.keep[k].inRange = true
		}
	}
}

// build turns the resolved claims into the Desired state. Claims are
// visited in the sweep's order, sorted by prefix, so routes and strict
// sources come out sorted without another sort of thousands of entries.
func (d *deriver) build() Desired {
	nHost := 0
	for i := range d.claims {
		if d.claims[i].host {
			nHost++
		}
	}
	out := Desired{
		Peers:         make([]Peer, 0, len(d.cands)),
		StrictSources: make([]netip.Prefix, 0, len(d.claims)-nHost),
		Underlay:      d.underlay(),
	}
	if nHost > 0 {
		out.HostRoutes = make([]Route, 0, nHost)
	}
	// fallback is the route for pod CIDRs that cannot be encrypted.
	fallback := Unreachable
	if d.o.AllowUnencrypted {
		fallback = Throw
	}

	var ownRoutes []Route
	for _, c := range d.own {
		if !c.host {
			ownRoutes = append(ownRoutes, Route{Dst: c.prefix, Kind: Throw, Node: d.selfName})
		}
	}
	// Peers' endpoints and the API server are reached outside the tunnel:
	// with HostEncryption they get Throw routes, and so does any address
	// inside a wider claim's route. The local node's addresses are local.
	nKeep := 0
	for i := range d.keep {
		if d.needsKeepRoute(&d.keep[i]) {
			nKeep++
		}
	}
	keepRoutes := make([]Route, 0, nKeep)
	for _, k := range d.keep {
		if !d.needsKeepRoute(&k) {
			continue
		}
		node := ""
		if k.cand >= 0 {
			node = d.cands[k.cand].node.Name
		}
		keepRoutes = append(keepRoutes, Route{Dst: netip.PrefixFrom(k.addr, k.addr.BitLen()), Kind: Throw, Node: node})
	}
	// On equal destinations own routes win, then keep-outside ones, then
	// the claims': own traffic stays local and control traffic outside the
	// tunnel. The claims' routes are merged in as they are produced.
	// The cluster ranges cover every destination no node claims: pod
	// traffic to a node this agent does not know is dropped (or, with
	// AllowUnencrypted, thrown), never left to the main table unseen. The
	// nodes' own routes are more specific. A range never equals a claim
	// (collectCluster drops those), so its place in the merge only matters
	// against an equal keep-outside address, which wins.
	clusterRoutes := make([]Route, 0, len(d.cluster))
	for _, p := range d.cluster {
		clusterRoutes = append(clusterRoutes, Route{Dst: p, Kind: fallback})
	}
	m := routeMerger{
		out:   make([]Route, 0, len(ownRoutes)+len(keepRoutes)+len(clusterRoutes)+len(d.claims)),
		fixed: [3][]Route{ownRoutes, keepRoutes, clusterRoutes},
	}
	for _, i := range d.order {
		c := &d.claims[i]
		cand := &d.cands[c.owner]
		name := cand.node.Name
		switch {
		case c.dropped && c.wider:
			// Not a strict source: it holds own or keep-outside addresses
			// whose packets legitimately arrive outside the tunnel.
			node := name
			if c.contested {
				node = ""
			}
			m.add(Route{Dst: c.prefix, Kind: fallback, Node: node})
		case c.dropped:
		case c.contested:
			if !c.host {
				// Owned by neither claimant: traffic goes to neither.
				m.add(Route{Dst: c.prefix, Kind: fallback})
				if fallback == Unreachable {
					out.StrictSources = append(out.StrictSources, c.prefix)
				}
			}
		case cand.isPeer() && c.host:
			// Pod-sourced traffic to a peer's host IP takes the tunnel;
			// host traffic only with HostEncryption, and never to an
			// endpoint or keep-outside address.
			out.HostRoutes = append(out.HostRoutes, Route{Dst: c.prefix, Kind: ViaTunnel, Node: name})
			if d.o.HostEncryption && !c.outside {
				m.add(Route{Dst: c.prefix, Kind: ViaTunnel, Node: name})
			}
		case cand.isPeer():
			m.add(Route{Dst: c.prefix, Kind: ViaTunnel, Node: name})
			out.StrictSources = append(out.StrictSources, c.prefix)
		case c.host:
			// Hosts that are not peers stay reachable in plaintext.
		case cand.unmanaged:
			m.add(Route{Dst: c.prefix, Kind: Throw, Node: name})
		default:
			m.add(Route{Dst: c.prefix, Kind: fallback, Node: name})
			if fallback == Unreachable {
				out.StrictSources = append(out.StrictSources, c.prefix)
			}
		}
	}
	// Equal contested prefixes appear once per claimant.
	out.StrictSources = slices.Compact(out.StrictSources)
	// What may only arrive through the tunnel may only leave through it:
	// the same pod CIDRs, kept as a separate list because the two promises
	// (ingress filter, egress guard) may diverge.
	out.EncryptOnly = slices.Clone(out.StrictSources)

	out.Routes = m.finish()
	out.ClusterCIDRs = slices.Clone(d.cluster)
	if fallback == Unreachable && len(d.cluster) > 0 {
		out.EncryptOnly = d.guardCluster(out.EncryptOnly, out.Routes)
	}

	// All peers' AllowedIPs share one array, in slices capped so that an
	// append by the caller copies rather than overwrites a neighbour.
	allowedBuf := make([]netip.Prefix, 0, len(d.claims))
	keepalive := max(d.o.Keepalive, 0)
	for i := range d.cands {
		cand := &d.cands[i]
		switch {
		case cand.isPeer():
			start := len(allowedBuf)
			// A node's claims are sorted already.
			for _, c := range d.claims[cand.claimStart:cand.claimEnd] {
				if !c.dropped && !c.contested {
					allowedBuf = append(allowedBuf, c.prefix)
				}
			}
			var ips []netip.Prefix
			if end := len(allowedBuf); end > start {
				ips = allowedBuf[start:end:end]
			}
			out.Peers = append(out.Peers, Peer{
				Node:       cand.node.Name,
				PublicKey:  cand.node.PublicKey,
				Endpoint:   cand.endpoint,
				AllowedIPs: ips,
				Keepalive:  keepalive,
			})
		case cand.unmanaged || d.o.AllowUnencrypted:
			out.Unencrypted = append(out.Unencrypted, cand.node.Name)
		}
	}

	out.Addresses = d.addresses()
	for _, c := range d.own {
		if !c.host {
			out.PodSources = append(out.PodSources, c.prefix)
		}
	}

	// Peer names are unique (nodes sharing a name are blocked).
	slices.SortFunc(out.Peers, func(a, b Peer) int { return strings.Compare(a.Node, b.Node) })
	slices.Sort(out.Unencrypted)
	out.Unencrypted = slices.Compact(out.Unencrypted)
	slices.SortFunc(d.problems, func(a, b Problem) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Reason), string(b.Reason)); c != 0 {
			return c
		}
		return strings.Compare(a.Detail, b.Detail)
	})
	out.Problems = slices.Compact(d.problems)
	return out
}

// needsKeepRoute reports whether the keep-outside address k gets a Throw
// route.
func (d *deriver) needsKeepRoute(k *keepOut) bool {
	if !d.familyEnabled(k.addr) {
		return false
	}
	if k.cand == keepSelf {
		// Local addresses need no route, unless a cluster range would
		// hold them (see collectCluster).
		return k.inRange && !d.o.AllowUnencrypted
	}
	hostEnc := d.o.HostEncryption && !k.host && (k.cand == keepOption || d.cands[k.cand].isPeer())
	// With AllowUnencrypted the wider claim's route is a Throw already,
	// and so are the cluster ranges'.
	inBlocked := (k.route || (k.inRange && !d.viaTunnel(k))) && !d.o.AllowUnencrypted
	return hostEnc || inBlocked
}

// viaTunnel reports whether the keep-outside address k has a ViaTunnel
// route of its own: a peer's host IP with HostEncryption that is neither an
// endpoint or keep-outside address nor contested, nor dropped.
func (d *deriver) viaTunnel(k *keepOut) bool {
	if !k.host || k.cand < 0 || !d.o.HostEncryption || !d.cands[k.cand].isPeer() {
		return false
	}
	c := &d.cands[k.cand]
	p := netip.PrefixFrom(k.addr, k.addr.BitLen())
	for _, cl := range d.claims[c.claimStart:c.claimEnd] {
		if cl.host && cl.prefix == p {
			return !cl.outside && !cl.dropped && !cl.contested
		}
	}
	return false
}

// guardCluster adds the cluster ranges to the egress guard's prefixes
// encrypt, minus every destination that may leave outside the tunnel: the
// Throw routes inside them (own pod CIDRs, keep-outside addresses, unmanaged
// nodes) and every endpoint, host IP and keep-outside address. The
// result is sorted with no prefix inside another, so the guard never drops
// the device's UDP to an endpoint, the agent's way to the API server, or
// the node's own pods.
func (d *deriver) guardCluster(encrypt []netip.Prefix, routes []Route) []netip.Prefix {
	var holes []netip.Prefix
	for _, r := range routes {
		if r.Kind == Throw {
			holes = append(holes, r.Dst)
		}
	}
	// Every keep-outside address, the local node's included: its host
	// traffic (or the local delivery) must never meet the guard. A peer's
	// host IP that the tunnel carries is routed into it anyway.
	for _, k := range d.keep {
		if d.familyEnabled(k.addr) {
			holes = append(holes, netip.PrefixFrom(k.addr, k.addr.BitLen()))
		}
	}
	for _, c := range d.cluster {
		encrypt = prefixes.Subtract(encrypt, c, holes)
	}
	return prefixes.Outermost(encrypt)
}

// addresses picks the tunnel addresses of the local interface.
func (d *deriver) addresses() []netip.Prefix {
	var addrs []netip.Prefix
	switch d.o.TunnelAddress {
	case TunnelAddressNone:
		return nil
	case TunnelAddressFixed:
		for _, a := range d.o.TunnelAddrs {
			a = a.Unmap().WithZone("")
			if a.IsValid() && d.familyEnabled(a) {
				addrs = append(addrs, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	default:
		// TunnelAddressAuto, TunnelAddressFirst, "" and anything unknown
		// (the flag parser rejects those): one address per family, from
		// the lowest own pod CIDR of that family; tunnel routes use it as
		// their preferred source. A /32 or /128 pod CIDR is its own first
		// address.
		first := d.o.TunnelAddress == TunnelAddressFirst
		var have4, have6 bool
		for _, c := range d.own {
			a := c.prefix.Addr()
			if c.host || (a.Is4() && have4) || (a.Is6() && have6) {
				continue
			}
			have4 = have4 || a.Is4()
			have6 = have6 || a.Is6()
			if a.Is6() && !first && c.prefix.Bits() < 127 {
				// Not the subnet-router anycast address (see TunnelAddressAuto).
				a = a.Next()
			}
			addrs = append(addrs, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return prefixes.Sort(addrs)
}

// underlay lists the local node's own addresses for Desired.Underlay: the
// agent's own endpoint's address, then the other entries' endpoint
// addresses, then the host IPs; valid, unmapped, once each. Each group after
// the first is sorted, so that the order of the input (entries named like
// the local node) does not matter.
func (d *deriver) underlay() []netip.Addr {
	var out []netip.Addr
	add := func(as []netip.Addr) {
		var group []netip.Addr
		for _, a := range as {
			if a = a.Unmap(); a.IsValid() && !a.IsUnspecified() && !slices.Contains(out, a) && !slices.Contains(group, a) {
				group = append(group, a)
			}
		}
		slices.SortFunc(group, netip.Addr.Compare)
		out = append(out, group...)
	}
	// selfEndpoints[0] is the agent's own (collectSelf), the rest the
	// entries'.
	eps := make([]netip.Addr, len(d.selfEndpoints))
	for i, ep := range d.selfEndpoints {
		eps[i] = ep.Addr()
	}
	add(eps[:1])
	add(eps[1:])
	add(d.ownHosts)
	return out
}

func (d *deriver) problem(node string, r Reason, format string, args ...any) {
	d.problems = append(d.problems, Problem{Node: node, Reason: r, Detail: fmt.Sprintf(format, args...)})
}

// copyProblems carries a source's problems into the output, naming the node
// when the source left it out.
func (d *deriver) copyProblems(n *Node) {
	for _, p := range n.Problems {
		if p.Node == "" {
			p.Node = n.Name
		}
		d.problems = append(d.problems, p)
	}
}

// familyEnabled reports whether a's family is switched on; a must be unmapped.
func (d *deriver) familyEnabled(a netip.Addr) bool {
	if a.Is4() {
		return d.o.IPv4
	}
	return a.Is6() && d.o.IPv6
}

// consequence says what happens to a left-out node's pod traffic.
func (d *deriver) consequence() string {
	if d.o.AllowUnencrypted {
		return "its pod traffic is sent unencrypted (allow-unencrypted)"
	}
	return "its pod CIDRs are unreachable until this is fixed (strict mode)"
}

// hasReason reports whether the source already reported r for n.
func hasReason(n *Node, r Reason) bool {
	return slices.ContainsFunc(n.Problems, func(p Problem) bool { return p.Reason == r })
}

// usableEndpointAddr reports whether a can be a node's address on the
// underlay.
func usableEndpointAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast()
}
