package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// TestPrintStatusCoverage: the table says which traffic the tunnel carries.
func TestPrintStatusCoverage(t *testing.T) {
	st := metrics.Status{
		Interface: "wgmesh0", AgentRunning: true, Strict: true,
		Coverage: []metrics.CoverageStatus{
			{From: metrics.CoverPods, To: metrics.CoverRHost, Encrypted: true, Detail: "2 addresses of 2 peers"},
			{From: metrics.CoverHost, To: metrics.CoverRHost, Encrypted: false, Detail: "plaintext unless --host-encryption"},
		},
	}
	var buf bytes.Buffer
	if err := printStatus(&buf, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"Encrypted traffic:",
		"pods -> remote node addresses:  encrypted      (2 addresses of 2 peers)",
		"host -> remote node addresses:  NOT encrypted  (plaintext unless --host-encryption)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
}

// TestPrintClusterRanges: status and verify say whether pod traffic to
// nodes the agent does not know is covered.
func TestPrintClusterRanges(t *testing.T) {
	last := &metrics.ReconcileState{Time: time.Now()}
	for _, tc := range []struct {
		st   metrics.Status
		want string
	}{
		{metrics.Status{Interface: "wgmesh0", AgentRunning: true, Strict: true, LastReconcile: last},
			"none: no --cluster-cidrs: traffic to pod CIDRs of nodes unknown to this agent is not covered"},
		{metrics.Status{Interface: "wgmesh0", AgentRunning: true, Strict: true, LastReconcile: last, ClusterCIDRs: []string{"10.244.0.0/16", "fd00:10:244::/48"}},
			"10.244.0.0/16, fd00:10:244::/48 (pod traffic to nodes unknown here is dropped)"},
		{metrics.Status{Interface: "wgmesh0", AgentRunning: true, LastReconcile: last, ClusterCIDRs: []string{"10.244.0.0/16"}},
			"10.244.0.0/16 (pod traffic to nodes unknown here is PLAINTEXT: --allow-unencrypted)"},
		{metrics.Status{Interface: "wgmesh0", AgentRunning: true, Strict: true, LastReconcile: last, ClusterCIDRsPending: "connection refused; retrying in 4s"},
			"none yet: kubeadm's podSubnet pending (connection refused; retrying in 4s)"},
		{metrics.Status{Interface: "wgmesh0", AgentRunning: true, Strict: true, LastReconcile: last, ClusterCIDRs: []string{"10.245.0.0/16"}, ClusterCIDRsPending: "RBAC forbids"},
			"Cluster ranges pending:"},
	} {
		var buf bytes.Buffer
		if err := printStatus(&buf, tc.st, time.Now()); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), tc.want) {
			t.Errorf("status table lacks %q:\n%s", tc.want, buf.String())
		}
	}
	var buf bytes.Buffer
	printClusterRanges(&buf, metrics.Status{AgentRunning: true, LastReconcile: last})
	if want := "Local agent: no --cluster-cidrs: traffic to pod CIDRs of nodes unknown to this agent is not covered"; !strings.Contains(buf.String(), want) {
		t.Errorf("verify's local view lacks %q: %s", want, buf.String())
	}
	buf.Reset()
	printClusterRanges(&buf, metrics.Status{AgentRunning: true, LastReconcile: last, ClusterCIDRsPending: "connection refused"})
	if want := "Local agent: no cluster ranges yet, kubeadm's podSubnet is pending: connection refused."; !strings.Contains(buf.String(), want) {
		t.Errorf("verify's local view lacks %q: %s", want, buf.String())
	}
	buf.Reset()
	printClusterRanges(&buf, metrics.Status{AgentRunning: true, LastReconcile: last, ClusterCIDRs: []string{"10.244.0.0/16"}})
	if want := "Local agent covers the cluster ranges 10.244.0.0/16."; !strings.Contains(buf.String(), want) {
		t.Errorf("verify's local view lacks %q: %s", want, buf.String())
	}
}

// TestPrintOffloads: status shows each offload of the userspace data path,
// and when the data path fell back from one, why and when.
func TestPrintOffloads(t *testing.T) {
	now := time.Date(2026, 11, 30, 15, 10, 0, 0, time.UTC)
	last := now.Add(-3 * time.Minute)
	st := metrics.Status{Interface: "wgmesh0", AgentRunning: true, Strict: true, Offloads: []metrics.OffloadStatus{
		{Kind: "tun_gso", Reason: "the kernel refused a coalesced TUN write (write /dev/net/tun: invalid argument); writing packets one by one", Fallbacks: 1, LastFallback: &last},
		{Kind: "udp_gso", Active: true},
	}}
	var buf bytes.Buffer
	if err := printStatus(&buf, st, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Offload tun_gso:    OFF: the kernel refused a coalesced TUN write (write /dev/net/tun: invalid argument); writing packets one by one (the kernel refused it 1 time(s), last 3m0s ago)",
		"Offload udp_gso:    on\n",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, buf.String())
		}
	}
}
