package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

func TestPrintVerify(t *testing.T) {
	var buf bytes.Buffer
	if ok := printVerify(&buf, kube.VerifyReport{Nodes: 3}); !ok || !strings.Contains(buf.String(), "Checked 3 nodes") ||
		!strings.Contains(buf.String(), "pod traffic to other nodes' addresses") {
		t.Errorf("clean report: ok=%v\n%s", ok, buf.String())
	}

	buf.Reset()
	rep := kube.VerifyReport{
		Nodes: 4,
		Problems: []mesh.Problem{
			{Node: "n1", Reason: mesh.ReasonNoKey, Detail: "no wgmesh.io/public-key annotation"},
			{Node: "n2", Reason: mesh.ReasonDuplicateKey, Detail: "same key as n4, which keeps it"},
			{Node: "n3", Reason: mesh.ReasonDuplicateKey, Detail: "same key as n4, which keeps it"},
		},
	}
	if ok := printVerify(&buf, rep); ok {
		t.Error("report with problems counted as encrypted")
	}
	out := buf.String()
	for _, want := range []string{"3 problems", "n1", "NoKey", "DuplicateKey", "rotate-key", "unreachable from the mesh"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "rotate-key") != 1 {
		t.Errorf("hint for DuplicateKey repeated:\n%s", out)
	}

	// A shared endpoint is a warning: listed with its hint, still encrypted.
	buf.Reset()
	rep = kube.VerifyReport{Nodes: 2, Warnings: []mesh.Problem{
		{Node: "n1", Reason: mesh.ReasonDuplicateEndpoint, Detail: "endpoint 198.18.0.1:51820 is also published by node \"n2\""},
		{Node: "n2", Reason: mesh.ReasonDuplicateEndpoint, Detail: "endpoint 198.18.0.1:51820 is also published by node \"n1\""},
	}}
	if ok := printVerify(&buf, rep); !ok {
		t.Errorf("report with only warnings counted as not encrypted:\n%s", buf.String())
	}
	out = buf.String()
	for _, want := range []string{"No problems found", "2 warnings", "DuplicateEndpoint", "both stay in the mesh"} {
		if !strings.Contains(out, want) {
			t.Errorf("warnings report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "unreachable from the mesh") || strings.Contains(out, "NOT") {
		t.Errorf("warnings report says something is not encrypted:\n%s", out)
	}

	buf.Reset()
	if ok := printVerify(&buf, kube.VerifyReport{Nodes: 2, Unencrypted: []string{"win-1"}}); ok || !strings.Contains(buf.String(), "NOT encrypted: win-1") {
		t.Errorf("unencrypted node: ok=%v\n%s", ok, buf.String())
	}
}

func TestEveryReasonHasAHint(t *testing.T) {
	for _, r := range []mesh.Reason{
		mesh.ReasonInvalidKey, mesh.ReasonNoKey, mesh.ReasonDuplicateKey, mesh.ReasonInvalidEndpoint,
		mesh.ReasonNoEndpoint, mesh.ReasonDuplicateEndpoint, mesh.ReasonInvalidCIDR, mesh.ReasonCIDROverlap,
		mesh.ReasonOwnCIDROverlap, mesh.ReasonUnmanaged, mesh.ReasonSelfMissing, mesh.ReasonSelfKeyMismatch,
	} {
		if hints[r] == "" {
			t.Errorf("no hint for %s", r)
		}
	}
}

func TestPrintHandshakes(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	recent, old := now.Add(-30*time.Second), now.Add(-10*time.Minute)
	st := metrics.Status{Interface: "wgmesh0", Peers: []metrics.PeerStatus{
		{Node: "fresh", LastHandshake: &recent},
		{Node: "idle", LastHandshake: &old},
		{PublicKey: "KEY=", LastHandshake: nil},
	}}
	var buf bytes.Buffer
	printHandshakes(&buf, st, now)
	out := buf.String()
	for _, want := range []string{"3 peers, 2 without a handshake", "idle (10m0s ago)", "KEY= (never)"} {
		if !strings.Contains(out, want) {
			t.Errorf("handshake report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "fresh") {
		t.Errorf("fresh peer listed as stale:\n%s", out)
	}
}
