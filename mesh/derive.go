package mesh

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

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
//   - unmanaged (Options.Unmanaged matches its labels, key or not): its pod
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
// Cluster ranges (Options.ClusterCIDRs) cover what no node claims: each gets
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
func Derive(self Node, nodes []Node, o Options) Desired {
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
	o        Options
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
	keepKeys []addrKey

	// cluster are the cluster ranges in force: Options.ClusterCIDRs that
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
// host IP, or an Options.KeepOutside address.
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
	keepOption = -2 // Options.KeepOutside
)

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

// hasReason reports whether the source already reported r for n.
func hasReason(n *Node, r Reason) bool {
	return slices.ContainsFunc(n.Problems, func(p Problem) bool { return p.Reason == r })
}

// usableEndpointAddr reports whether a can be a node's address on the
// underlay.
func usableEndpointAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast()
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
	keyHeads := make([]uint64, len(d.cands))
	for _, i := range managed {
		keyHeads[i] = binary.BigEndian.Uint64(d.cands[i].node.PublicKey[:8])
	}

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
	d.groups(managed, func(i int) bool { return d.cands[i].keyOK && !hasSelfKey(i) },
		func(a, b int) int {
			// The keys' leading bytes as integers decide almost always.
			if ha, hb := keyHeads[a], keyHeads[b]; ha != hb {
				return cmp.Compare(ha, hb)
			}
			return bytes.Compare(d.cands[a].node.PublicKey[:], d.cands[b].node.PublicKey[:])
		},
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

	// Pointer-free keys of the endpoints' addresses compare without calls;
	// only equal ones need the zone and port, which is
	// netip.AddrPort.Compare's order.
	epKeys := make([]addrKey, len(d.cands))
	for _, i := range managed {
		if d.cands[i].endpointOK {
			epKeys[i] = keyOf(d.cands[i].endpoint.Addr())
		}
	}
	d.groups(managed, func(i int) bool { return d.cands[i].endpointOK },
		func(a, b int) int {
			if ka, kb := epKeys[a], epKeys[b]; ka != kb {
				if ka.less(kb) {
					return -1
				}
				return 1
			}
			ea, eb := d.cands[a].endpoint, d.cands[b].endpoint
			if c := strings.Compare(ea.Addr().Zone(), eb.Addr().Zone()); c != 0 {
				return c
			}
			return cmp.Compare(ea.Port(), eb.Port())
		},
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

// groups sorts the members of idx that pass keep by cmpFn and calls settle
// with each group of two or more equal ones, sorted by name.
func (d *deriver) groups(idx []int, keep func(int) bool, cmpFn func(a, b int) int, settle func(group []int)) {
	s := make([]int, 0, len(idx))
	for _, i := range idx {
		if keep(i) {
			s = append(s, i)
		}
	}
	slices.SortFunc(s, func(a, b int) int {
		if c := cmpFn(a, b); c != 0 {
			return c
		}
		return strings.Compare(d.cands[a].node.Name, d.cands[b].node.Name)
	})
	for start := 0; start < len(s); {
		end := start + 1
		for end < len(s) && cmpFn(s[start], s[end]) == 0 {
			end++
		}
		if end-start > 1 {
			settle(s[start:end])
		}
		start = end
	}
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
		// Options first, then the local node, then by node name, so this
		// order does not depend on the input's.
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
	d.keepKeys = make([]addrKey, len(d.keep))
	for i := range d.keep {
		d.keepKeys[i] = keyOf(d.keep[i].addr)
	}
}

// addrKey is an address without its zone, ordered like netip.Addr.Compare
// orders addresses: by length, then by value.
type addrKey struct {
	hi, lo uint64
	bits   int
}

func keyOf(a netip.Addr) addrKey {
	b := a.As16()
	return addrKey{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:]), bits: a.BitLen()}
}

// less reports whether k orders before o.
func (k addrKey) less(o addrKey) bool {
	if k.bits != o.bits {
		return k.bits < o.bits
	}
	if k.hi != o.hi {
		return k.hi < o.hi
	}
	return k.lo < o.lo
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

// searchKeep returns the index of the first keep-outside address >= a.
func (d *deriver) searchKeep(a netip.Addr) int {
	if a.Zone() != "" {
		i, _ := slices.BinarySearchFunc(d.keep, a, func(k keepOut, a netip.Addr) int { return k.addr.Compare(a) })
		return i
	}
	// Without a zone, a orders after every address whose key is less, and
	// not after any other: zoned addresses order after their unzoned form.
	q := keyOf(a)
	lo, hi := 0, len(d.keepKeys)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if d.keepKeys[m].less(q) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// isEndpointOrOption reports whether a is an endpoint or an option's
// keep-outside address (host IPs do not count: they may be claims).
func (d *deriver) isEndpointOrOption(a netip.Addr) bool {
	for i := d.searchKeep(a); i < len(d.keep) && d.keep[i].addr == a; i++ {
		if !d.keep[i].host {
			return true
		}
	}
	return false
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
		if c := comparePrefix(a.prefix, b.prefix); c != 0 {
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

// ownOverlap returns an own claim overlapping p and whether that claim
// contains p. Own claims are sorted and pairwise disjoint, so the only
// candidates are the one starting where p starts, the last one starting
// before p (which may contain p) and the first one starting after p (which
// p may contain).
func (d *deriver) ownOverlap(p netip.Prefix) (o claim, inside, ok bool) {
	i, found := slices.BinarySearchFunc(d.own, p.Addr(), func(c claim, a netip.Addr) int { return c.prefix.Addr().Compare(a) })
	switch {
	case found:
		return d.own[i], d.own[i].prefix.Bits() <= p.Bits(), true
	case i > 0 && d.own[i-1].prefix.Contains(p.Addr()):
		return d.own[i-1], true, true
	case i < len(d.own) && p.Contains(d.own[i].prefix.Addr()):
		return d.own[i], false, true
	}
	return claim{}, false, false
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
// contested in O(n log n): in a list sorted by start address, shorter prefix
// first, two prefixes overlap only if one contains the other, so a stack of
// nested prefixes finds every overlap. Claims of one node are disjoint, so
// every overlap found is between two nodes.
func (d *deriver) sweepOverlaps() {
	// Pointer-free copies of the prefixes compare without calls; prefixes
	// carry no zone, so the keys order them as comparePrefix does.
	type prefixKey struct {
		addr addrKey
		bits int
	}
	keys := make([]prefixKey, len(d.claims))
	for i := range d.claims {
		p := d.claims[i].prefix
		keys[i] = prefixKey{addr: keyOf(p.Addr()), bits: p.Bits()}
	}
	order := d.sortClaims(func(a, b int) int {
		ka, kb := &keys[a], &keys[b]
		switch {
		case ka.addr != kb.addr:
			if ka.addr.less(kb.addr) {
				return -1
			}
			return 1
		case ka.bits != kb.bits:
			return cmp.Compare(ka.bits, kb.bits)
		}
		ca, cb := &d.claims[a], &d.claims[b]
		// Equal prefixes: order by owner so the partner named in a
		// Problem does not depend on the input order.
		if c := strings.Compare(d.cands[ca.owner].node.Name, d.cands[cb.owner].node.Name); c != 0 {
			return c
		}
		return compareBool(ca.host, cb.host)
	})
	d.order = order
	// partner remembers one overlapping claim per claim for the Problem.
	partner := make([]int, len(d.claims))
	var stack []int
	for _, i := range order {
		c := &d.claims[i]
		for len(stack) > 0 && !d.claims[stack[len(stack)-1]].prefix.Contains(c.prefix.Addr()) {
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 {
			// Every claim below the top is already contested: it was when
			// the second claim was pushed onto it.
			top := stack[len(stack)-1]
			c.contested = true
			partner[i] = top
			if !d.claims[top].contested {
				partner[top] = i
			}
			d.claims[top].contested = true
		}
		stack = append(stack, i)
	}
	for _, i := range order {
		c := d.claims[i]
		if !c.contested {
			continue
		}
		o := d.claims[partner[i]]
		d.problem(d.cands[c.owner].node.Name, ReasonCIDROverlap, "%s overlaps %s of node %q; neither claim is programmed",
			describe(c), describe(o), d.cands[o.owner].node.Name)
	}
}

// maxRuns bounds the number of sorted runs sortClaims merges; nodes with
// more claims than that are rare, and a plain sort serves them.
const maxRuns = 8

// sortClaims returns the indexes of d.claims sorted by compare. Run r holds
// every node's r-th claim: a node's claims are sorted, and clusters hand
// out pod CIDRs and host IPs in order, so each run is often sorted already
// (which the sort finds in linear time) and merging a few runs costs far
// fewer comparisons than sorting everything at once. Claims that compare
// equal are interchangeable in every output, so which comes first does not
// matter.
func (d *deriver) sortClaims(compare func(a, b int) int) []int {
	order := make([]int, 0, len(d.claims))
	runs := 0
	for i := range d.cands {
		runs = max(runs, d.cands[i].claimEnd-d.cands[i].claimStart)
	}
	if runs <= 1 || runs > maxRuns {
		for i := range d.claims {
			order = append(order, i)
		}
		slices.SortFunc(order, compare)
		return order
	}
	// ends[r] is where run r ends in order; it starts where run r-1 ends.
	ends := make([]int, runs)
	for r := range runs {
		start := len(order)
		for i := range d.cands {
			if c := &d.cands[i]; c.claimStart+r < c.claimEnd {
				order = append(order, c.claimStart+r)
			}
		}
		slices.SortFunc(order[start:], compare)
		ends[r] = len(order)
	}
	heads := make([]int, runs)
	for r := 1; r < runs; r++ {
		heads[r] = ends[r-1]
	}
	merged := make([]int, 0, len(order))
	for {
		best := -1
		for r := range runs {
			if heads[r] < ends[r] && (best < 0 || compare(order[heads[r]], order[heads[best]]) < 0) {
				best = r
			}
		}
		if best < 0 {
			return merged
		}
		merged = append(merged, order[heads[best]])
		heads[best]++
	}
}

// describe names a claim for a Problem detail.
func describe(c claim) string {
	if c.host {
		return "host IP " + c.prefix.Addr().String()
	}
	return "pod CIDR " + c.prefix.String()
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
	d.cluster = outermost(cs)
	for _, p := range d.cluster {
		for k := d.searchKeep(p.Addr()); k < len(d.keep) && p.Contains(d.keep[k].addr); k++ {
			// The local node's addresses included: usually local (the
			// local table answers first), but a published endpoint may be
			// a NAT's address, which the range must not swallow.
			d.keep[k].inRange = true
		}
	}
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
		encrypt = subtractPrefixes(encrypt, c, holes)
	}
	return outermost(encrypt)
}

// outermost sorts ps in place and drops every prefix inside (or equal to)
// another; it returns ps shortened.
func outermost(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefix)
	kept := ps[:0]
	for _, p := range ps {
		// Sorted by address, shorter first: a prefix inside another follows
		// it directly or after prefixes inside it too.
		if n := len(kept); n > 0 && kept[n-1].Contains(p.Addr()) {
			continue
		}
		kept = append(kept, p)
	}
	return kept
}

// subtractPrefixes appends to dst the prefixes that cover r except the
// holes: r itself if no hole overlaps it, nothing if one contains it, else
// both halves, each minus the holes. Only holes overlapping r are passed
// on, so the cost is O(holes × prefix length).
func subtractPrefixes(dst []netip.Prefix, r netip.Prefix, holes []netip.Prefix) []netip.Prefix {
	var in []netip.Prefix
	for _, h := range holes {
		if h.Overlaps(r) {
			if h.Bits() <= r.Bits() {
				return dst
			}
			in = append(in, h)
		}
	}
	if len(in) == 0 {
		return append(dst, r)
	}
	lo := netip.PrefixFrom(r.Addr(), r.Bits()+1)
	dst = subtractPrefixes(dst, lo, in)
	return subtractPrefixes(dst, netip.PrefixFrom(upperHalf(r), r.Bits()+1), in)
}

// upperHalf returns the first address of the upper half of the masked
// prefix p (p.Bits() < its address's length).
func upperHalf(p netip.Prefix) netip.Addr {
	bit := p.Bits()
	if p.Addr().Is4() {
		b := p.Addr().As4()
		b[bit/8] |= 0x80 >> (bit % 8)
		return netip.AddrFrom4(b)
	}
	b := p.Addr().As16()
	b[bit/8] |= 0x80 >> (bit % 8)
	return netip.AddrFrom16(b)
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

// routeMerger merges routes sorted by destination into one list with one
// route per destination: the fixed lists, in which on equal destinations
// the earlier list wins, and the routes passed to add in order, which lose
// to both.
type routeMerger struct {
	out   []Route
	fixed [3][]Route
}

// add emits the fixed routes up to r's destination, then r unless one of
// them or an earlier r had its destination.
func (m *routeMerger) add(r Route) {
	m.flush(&r.Dst)
	m.emit(r)
}

// finish emits the remaining fixed routes and returns the merged list.
func (m *routeMerger) finish() []Route {
	m.flush(nil)
	return m.out
}

// flush emits the fixed routes whose destination orders before or equal to
// *upTo, or all of them if upTo is nil.
func (m *routeMerger) flush(upTo *netip.Prefix) {
	for {
		best := -1
		for i, l := range m.fixed {
			if len(l) > 0 && (best < 0 || comparePrefix(l[0].Dst, m.fixed[best][0].Dst) < 0) {
				best = i
			}
		}
		if best < 0 || (upTo != nil && comparePrefix(m.fixed[best][0].Dst, *upTo) > 0) {
			return
		}
		m.emit(m.fixed[best][0])
		m.fixed[best] = m.fixed[best][1:]
	}
}

func (m *routeMerger) emit(r Route) {
	if n := len(m.out); n == 0 || m.out[n-1].Dst != r.Dst {
		m.out = append(m.out, r)
	}
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
	slices.SortFunc(addrs, comparePrefix)
	return slices.Compact(addrs)
}

// comparePrefix orders prefixes by address, then by length, as
// Desired.Routes promises.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}
