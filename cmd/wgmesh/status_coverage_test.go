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
