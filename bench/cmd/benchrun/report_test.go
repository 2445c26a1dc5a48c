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
	b2 := &result{b: backend{ID: "B2", Name: "upstream"}, streams: 1, samples: []sample{
		{gbps: 2, cpuPerGB: 6, hasCPU: true, peakRSS: 200, rssGrowth: 0.1, hasGrowth: true, round: 0, hasRTT: true, rttP50: 1, rttP99: 10, pingSent: 100, pingLost: 1},
		{gbps: 3, cpuPerGB: 5, hasCPU: true, peakRSS: 300, rssGrowth: 0.2, hasGrowth: true, round: 1, hasRTT: true, rttP50: 2, rttP99: 20, pingSent: 100},
		{gbps: 4, cpuPerGB: 4, hasCPU: true, peakRSS: 400, rssGrowth: 0, hasGrowth: true, round: 2, hasRTT: true, rttP50: 3, rttP99: 30, pingSent: 100},
	}}
	b3 := &result{b: backend{ID: "B3", Name: "wgmesh"}, streams: 1, samples: []sample{
		{gbps: 2.2, cpuPerGB: 6, hasCPU: true, peakRSS: 220, round: 0, hasRTT: true, rttP50: 0.5, rttP99: 5, pingSent: 100},
		{gbps: 3.3, cpuPerGB: 5, hasCPU: true, peakRSS: 330, round: 1, hasRTT: true, rttP50: 1.5, rttP99: 15, pingSent: 100},
	}, errs: []string{"round 3: iperf3 | failed"}}
	// The same competitor with eight streams is a section of its own.
	b3x8 := &result{b: backend{ID: "B3", Name: "wgmesh"}, streams: 8, samples: []sample{
		{gbps: 5, cpuPerGB: 4, hasCPU: true, peakRSS: 500, round: 0},
	}}
	results := []*result{{b: missing, streams: 1}, b2, b3, {b: missing, streams: 8}, b3x8}
	var w strings.Builder
	writeReport(&w, results, []float64{7, 8, 9}, "", 8e9, 3, filepath.Join(t.TempDir(), "wgmesh"))
	out := w.String()
	for _, want := range []string{
		"## One TCP stream, unpinned",
		"| B1 | Debian wireguard-go | – | – | – | – | – | – | – | – | skipped: ",
		"| B2 | upstream | 2.00 | 3.00 | 4.00 | 5.00 | 300 | +10 % | 2.00 / 20.00 | 0.3 % | 3/3 rounds ok |",
		// Two samples: the median is their mean; the error is shown, its
		// pipe escaped so the table survives.
		"| B3 | wgmesh | 2.20 | 2.75 | 3.30 | 5.50 | 275 | – | 1.00 / 10.00 | 0.0 % | 2/3 rounds ok; first error: round 3: iperf3 / failed |",
		"- RTT p50 under load B3/B2 = 0.50 (paired 0.62 over 2 rounds)",
		"- RTT p99 under load B3/B2 = 0.50 (paired 0.62 over 2 rounds)",
		"- B3/B5: n/a (a competitor was skipped or failed)",
		"## 8 parallel TCP streams, unpinned",
		"| B3 | wgmesh | 5.00 | 5.00 | 5.00 | 4.00 | 500 | – | – | – | 1/1 rounds ok |",
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

func TestPingParsing(t *testing.T) {
	out := `PING 10.244.202.1 (10.244.202.1) 56(84) bytes of data.
64 bytes from 10.244.202.1: icmp_seq=1 ttl=64 time=0.412 ms
64 bytes from 10.244.202.1: icmp_seq=2 ttl=64 time=12.5 ms
64 bytes from 10.244.202.1: icmp_seq=4 ttl=64 time=3 ms

--- 10.244.202.1 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 61ms
rtt min/avg/max/mdev = 0.412/5.304/12.500/5.231 ms
`
	got := parsePingRTTs(out)
	if len(got) != 3 || got[0] != 0.412 || got[1] != 12.5 || got[2] != 3 {
		t.Errorf("parsed %v", got)
	}
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	if p50, p99, p100 := percentile(xs, 50), percentile(xs, 99), percentile(xs, 100); p50 != 50 || p99 != 99 || p100 != 100 {
		t.Errorf("percentiles of 1..100: p50 %v p99 %v p100 %v", p50, p99, p100)
	}
	if xs[0] != 100 {
		t.Error("percentile sorted its input")
	}
	if p := percentile([]float64{7}, 99); p != 7 {
		t.Errorf("p99 of one sample: %v", p)
	}
}

func TestParseStreams(t *testing.T) {
	if got, err := parseStreams("1, 8"); err != nil || len(got) != 2 || got[0] != 1 || got[1] != 8 {
		t.Errorf("1, 8: %v %v", got, err)
	}
	for _, bad := range []string{"", "0", "1,x", "200"} {
		if _, err := parseStreams(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
