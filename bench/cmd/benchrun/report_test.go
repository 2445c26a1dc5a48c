package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestReportSkipsAndRatios renders a report from made-up samples: a missing
// competitor is a "skipped" row with its reason and its ratios are n/a,
// never estimated; the other ratios are the medians' and the paired ones.
func TestReportSkipsAndRatios(t *testing.T) {
	missing := wireguardGoBackend("B1", "Debian wireguard-go", filepath.Join(t.TempDir(), "no-such-wireguard-go"))
	if missing.skip == "" || !strings.Contains(missing.skip, "not found") {
		t.Fatalf("a missing binary is not skipped: %+v", missing)
	}
	b2 := &result{b: backend{ID: "B2", Name: "upstream"}, samples: []sample{
		{gbps: 2, cpuPerGB: 6, hasCPU: true, peakRSS: 200, round: 0},
		{gbps: 3, cpuPerGB: 5, hasCPU: true, peakRSS: 300, round: 1},
		{gbps: 4, cpuPerGB: 4, hasCPU: true, peakRSS: 400, round: 2},
	}}
	b3 := &result{b: backend{ID: "B3", Name: "wgmesh"}, samples: []sample{
		{gbps: 2.2, cpuPerGB: 6, hasCPU: true, peakRSS: 220, round: 0},
		{gbps: 3.3, cpuPerGB: 5, hasCPU: true, peakRSS: 330, round: 1},
	}, errs: []string{"round 3: iperf3 | failed"}}
	results := []*result{{b: missing}, b2, b3}
	var w strings.Builder
	writeReport(&w, results, []float64{7, 8, 9}, "", 8e9, 3, filepath.Join(t.TempDir(), "wgmesh"))
	out := w.String()
	for _, want := range []string{
		"| B1 | Debian wireguard-go | – | – | – | – | – | skipped: ",
		"| B2 | upstream | 2.00 | 3.00 | 4.00 | 5.00 | 300 | 3/3 rounds ok |",
		// Two samples: the median is their mean; the error is shown, its
		// pipe escaped so the table survives.
		"| B3 | wgmesh | 2.20 | 2.75 | 3.30 | 5.50 | 275 | 2/3 rounds ok; first error: round 3: iperf3 / failed |",
		"- B3/B1: n/a (a competitor was skipped or failed)",
		"- B3/B2 = 0.92 (paired 1.10 over 2 rounds)",
		"- CPU-s/GB B3/B2 = 1.10 (paired 1.00 over 2 rounds) (target ≤ 1)",
		"- peak RSS B3/B2 = 0.92 (paired 1.10 over 2 rounds)",
		"median 8.00",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
