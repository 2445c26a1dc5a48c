package kube

import (
	"unicode/utf8"

	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
)

// maxEventMessage bounds an Event's message; the API server's events.k8s.io
// view refuses notes longer than 1 KiB.
const maxEventMessage = 1024

// Report logs each problem and records it as a Warning Event on the offending
// Node (reason = Problem.Reason, message = Problem.Detail), at most once per
// Options.ReportInterval for the same (node, reason, detail). Problems of
// nodes not in the informer's store (or with no node) are only logged. The
// event broadcaster additionally aggregates and rate-limits per Node.
func (s *Source) Report(problems []mesh.Problem) {
	now := s.now()
	s.mu.Lock()
	for p, t := range s.reported {
		if now.Sub(t) >= s.o.ReportInterval {
			delete(s.reported, p)
		}
	}
	var fresh []mesh.Problem
	for _, p := range problems {
		if _, seen := s.reported[p]; seen {
			continue
		}
		s.reported[p] = now
		fresh = append(fresh, p)
	}
	closed := s.closed
	s.mu.Unlock()

	store := s.informer.GetStore()
	for _, p := range fresh {
		s.log.Warn("node problem", "node", p.Node, "reason", string(p.Reason), "detail", p.Detail)
		if closed || p.Node == "" {
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
