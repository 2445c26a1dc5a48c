package kube

import (
	"cmp"
	"hash/fnv"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
)

// maxEventMessage bounds an Event's message; the API server's events.k8s.io
// view refuses notes longer than 1 KiB.
const maxEventMessage = 1024

// reportersPerNode is how many agents turn one node's problems into Events.
// Every agent derives the whole cluster and sees every problem: if all of
// them wrote Events, one keyless node in a cluster of n nodes would get n
// Events per interval, and n keyless nodes during a rollout n². Two keep the
// Event coming when one reporter is down; every agent still logs.
const reportersPerNode = 2

// Report logs each problem and records it as a Warning Event on the offending
// Node (reason = Problem.Reason, message = Problem.Detail), at most once per
// Options.ReportInterval for the same (node, reason, detail). Events about
// the own Node are always written; about another Node only if this agent is
// one of its reportersPerNode reporters (see reporters). Problems of nodes not
// in the informer's store (or with no node) are only logged. The event
// broadcaster additionally aggregates and rate-limits per Node.
func (s *Source) Report(problems []mesh.Problem) {
	now := s.now()
	s.reported.Prune(now)
	var fresh []mesh.Problem
	for _, p := range problems {
		if ok, _ := s.reported.Allow(p, now); ok {
			fresh = append(fresh, p)
		}
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()

	if len(fresh) == 0 {
		return
	}
	store := s.informer.GetStore()
	ring := newReporters(healthy(store.ListKeys(), problems, s.o.NodeName))
	for _, p := range fresh {
		s.log.Warn("node problem", "node", p.Node, "reason", string(p.Reason), "detail", p.Detail)
		if closed || p.Node == "" || p.Node != s.o.NodeName && !ring.reports(s.o.NodeName, p.Node) {
			continue
		}
		obj, ok, err := store.GetByKey(p.Node)
		if err != nil || !ok {
			continue
		}
		n, ok := obj.(*corev1.Node)
		if !ok {
			continue
		}
		ref := &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
		s.recorder.Event(ref, corev1.EventTypeWarning, string(p.Reason), truncate(p.Detail, maxEventMessage))
	}
}

// healthy returns the nodes that no problem names, and the local node: the
// ones that demonstrably run a working agent. Only they may be reporters; a
// ring over every node could hand a keyless node's Events to other nodes
// without an agent, and then nobody would write them. Warnings count as
// problems here: of two nodes sharing an endpoint one is often a stale Node
// without an agent.
func healthy(names []string, problems []mesh.Problem, self string) []string {
	bad := make(map[string]bool, len(problems))
	for _, p := range problems {
		bad[p.Node] = true
	}
	out := names[:0:0]
	for _, n := range names {
		if !bad[n] || n == self {
			out = append(out, n)
		}
	}
	return out
}

// truncate shortens s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// reporters assigns every node its Event reporters by consistent hashing:
// node names are placed on a ring by hash, and the reporters of a node are
// the reportersPerNode nodes that follow it on the ring. Every agent sees
// the same node list, so they agree without talking to each other, and a
// node joining or leaving moves the duty of only its neighbours.
type reporters struct {
	ring []ringEntry // sorted by hash, then name
}

type ringEntry struct {
	hash uint64
	name string
}

// ringHash places a name on the ring. FNV-1a alone moves mostly the low bits
// when only the last characters differ, so names like node-17 and node-18
// would sit side by side and share their reporters; murmur3's 64-bit
// finalizer spreads every input bit over the whole hash.
func ringHash(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func newReporters(names []string) reporters {
	r := reporters{ring: make([]ringEntry, 0, len(names))}
	for _, n := range names {
		r.ring = append(r.ring, ringEntry{ringHash(n), n})
	}
	slices.SortFunc(r.ring, compareEntry)
	return r
}

func compareEntry(a, b ringEntry) int {
	if c := cmp.Compare(a.hash, b.hash); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}

// reports says whether agent is one of node's reporters. The node itself
// does not count: it may be the one without an agent.
func (r reporters) reports(agent, node string) bool {
	if len(r.ring) == 0 {
		return false
	}
	i, _ := slices.BinarySearchFunc(r.ring, ringEntry{ringHash(node), node}, compareEntry)
	for seen, k := 0, 0; k < len(r.ring) && seen < reportersPerNode; k++ {
		e := r.ring[(i+k)%len(r.ring)]
		if e.name == node {
			continue
		}
		if e.name == agent {
			return true
		}
		seen++
	}
	return false
}
