package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// chachaBound measures single-core ChaCha20-Poly1305 seal+open throughput on
// 1420-byte payloads (a full WireGuard packet at the default MTU) — the work
// every userspace implementation must do per packet, so no tunnel on this
// core can exceed it.
func chachaBound(d time.Duration) float64 {
	key := make([]byte, chacha20poly1305.KeySize)
	_, _ = rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return 0
	}
	const size = 1420
	plain := make([]byte, size)
	buf := make([]byte, 0, size+aead.Overhead())
	nonce := make([]byte, aead.NonceSize())
	var n int
	start := time.Now()
	for time.Since(start) < d {
		for i := 0; i < 256; i++ {
			sealed := aead.Seal(buf[:0], nonce, plain, nil)
			if _, err := aead.Open(plain[:0], nonce, sealed, nil); err != nil {
				return 0
			}
			n++
		}
	}
	return float64(n) * size * 8 / time.Since(start).Seconds() / 1e9
}

func median(r *result) float64 {
	var g []float64
	for _, s := range r.samples {
		g = append(g, s.gbps)
	}
	_, m, _ := stats(g)
	return m
}

// paired is the median over rounds of a's figure divided by b's in the same
// round: on a machine whose load drifts, neighbours in time are the fairest
// comparison. ok is false when no round has both.
func paired(a, b *result, value func(sample) (float64, bool)) (float64, int, bool) {
	var rs []float64
	for _, sa := range a.samples {
		for _, sb := range b.samples {
			if sa.round != sb.round {
				continue
			}
			va, oka := value(sa)
			vb, okb := value(sb)
			if oka && okb && vb > 0 {
				rs = append(rs, va/vb)
			}
		}
	}
	if len(rs) == 0 {
		return 0, 0, false
	}
	_, m, _ := stats(rs)
	return m, len(rs), true
}

func gbpsOf(s sample) (float64, bool) { return s.gbps, s.gbps > 0 }
func cpuOf(s sample) (float64, bool)  { return s.cpuPerGB, s.hasCPU }

func rssOf(s sample) (float64, bool) { return s.peakRSS, s.peakRSS > 0 }

// figureRatio writes the line "- label = a/b (paired …)" for a figure other
// than throughput, or nothing when either side lacks it.
func figureRatio(w *strings.Builder, label string, a, b *result, med func(*result) (float64, bool), value func(sample) (float64, bool), suffix string) {
	ma, oka := med(a)
	mb, okb := med(b)
	if !oka || !okb || mb <= 0 {
		return
	}
	line := fmt.Sprintf("- %s = %.2f", label, ma/mb)
	if pr, n, ok := paired(a, b, value); ok {
		line += fmt.Sprintf(" (paired %.2f over %d rounds)", pr, n)
	}
	fmt.Fprintln(w, line+suffix)
}

// medianRSS is the median over rounds of the larger side's peak RSS.
func medianRSS(r *result) (float64, bool) {
	var c []float64
	for _, s := range r.samples {
		if s.peakRSS > 0 {
			c = append(c, s.peakRSS)
		}
	}
	if len(c) == 0 {
		return 0, false
	}
	_, m, _ := stats(c)
	return m, true
}

func medianCPU(r *result) (float64, bool) {
	var c []float64
	for _, s := range r.samples {
		if s.hasCPU {
			c = append(c, s.cpuPerGB)
		}
	}
	if len(c) == 0 {
		return 0, false
	}
	_, m, _ := stats(c)
	return m, true
}

// loadAvg is the first three fields of /proc/loadavg, the machine's load
// during the run (the harness is meant for a quiet machine; say when not).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// pkgVersion is the installed Debian package version of name, or "not
// installed".
func pkgVersion(name string) string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", name).Output()
	if err != nil || len(out) == 0 {
		return "not installed (or not a Debian system)"
	}
	return string(out)
}

func writeReport(w *strings.Builder, results []*result, crypto []float64, goBench string, d time.Duration, rounds int, wgmeshBin string) {
	host, _ := exec.Command("uname", "-srm").Output()
	cpu, _ := exec.Command("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").Output()
	ver, _ := exec.Command(wgmeshBin, "version").Output()
	fmt.Fprintf(w, "# wgmesh benchmark results\n\n")
	fmt.Fprintf(w, "Reproduce with `make bench` (as root; needs iperf3, wireguard-tools, wireguard-go). See bench/README.md.\n\n")
	fmt.Fprintf(w, "- date: %s\n- machine: %s, %d cores, %s\n- load average at start: %s, at end: %s\n- go: %s\n- wireguard-go module (B2, B3, B4): %s\n- wireguard-go module (B5, Kilo's sidecar): %s\n- Debian wireguard-go (B1): %s\n- iperf3: %s\n- wgmesh: %s\n- run: %s (iperf3) for %s, %d interleaved rounds per competitor; figures are min / median / max\n\n",
		time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(host)), runtime.NumCPU(), strings.TrimSpace(string(cpu)),
		startLoad, loadAvg(), runtime.Version(), wireguardVersion(), kiloWireguardGo, pkgVersion("wireguard-go"), pkgVersion("iperf3"), strings.TrimSpace(string(ver)), streamModesText(), d, rounds)
	cLo, cMed, cHi := stats(crypto)
	cryptoGbps := cMed
	fmt.Fprintf(w, "ChaCha20-Poly1305 seal+open bound, one core, 1420-byte packets (sampled %d times between rounds): min %.2f / **median %.2f** / max %.2f Gbit/s\n\n",
		len(crypto), cLo, cMed, cHi)
	if len(results) == 0 {
		fmt.Fprintf(w, "Throughput comparison: skipped (needs root and iperf3).\n\n")
	}
	for _, st := range streamModes {
		for _, pinned := range []bool{false, true} {
			var rs []*result
			for _, r := range results {
				if r.pinned == pinned && r.streams == st {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				continue
			}
			writeSection(w, rs, st, pinned, cryptoGbps)
		}
	}
	if goBench != "" {
		fmt.Fprintf(w, "## Go benchmarks\n\n`go test -run '^$' -bench . -benchmem -count %d ./bench/ ./mesh/ ./device/... ./routing/`; ns/op is wall time, so it carries the machine's load.\n\n", goBenchCount)
		writeGoBench(w, parseGoBench(goBench))
		fmt.Fprintf(w, "<details><summary>raw output</summary>\n\n```\n%s```\n\n</details>\n", goBench)
	}
}

// streamsText names one stream mode.
func streamsText(n int) string {
	if n == 1 {
		return "one TCP stream"
	}
	return fmt.Sprintf("%d parallel TCP streams", n)
}

// streamModesText names every stream mode of the run.
func streamModesText() string {
	var parts []string
	for _, n := range streamModes {
		parts = append(parts, streamsText(n))
	}
	return strings.Join(parts, ", then ")
}

// medianRTT is the median over rounds of a figure of the ping under load.
func medianRTT(r *result, fig func(sample) float64) (float64, bool) {
	var c []float64
	for _, s := range r.samples {
		if s.hasRTT {
			c = append(c, fig(s))
		}
	}
	if len(c) == 0 {
		return 0, false
	}
	_, m, _ := stats(c)
	return m, true
}

func rttP50Of(s sample) (float64, bool) { return s.rttP50, s.hasRTT }
func rttP99Of(s sample) (float64, bool) { return s.rttP99, s.hasRTT }

func medianP50(r *result) (float64, bool) {
	return medianRTT(r, func(s sample) float64 { return s.rttP50 })
}
func medianP99(r *result) (float64, bool) {
	return medianRTT(r, func(s sample) float64 { return s.rttP99 })
}

// writeSection writes the table and ratios of one stream count and
// pinning mode.
func writeSection(w *strings.Builder, rs []*result, streams int, pinned bool, cryptoGbps float64) {
	mode := "unpinned (scheduler decides)"
	if pinned {
		mode = "pinned (each namespace's processes on one core)"
	}
	fmt.Fprintf(w, "## %s, %s\n\n", upperFirst(streamsText(streams)), mode)
	fmt.Fprintf(w, "BK (kernel WireGuard) runs only on a host whose kernel has the WireGuard module; "+
		"the e2e lab's UML kernel nodes prove the kernel backend's function, never its speed, and are not measured here. "+
		"RTT is a ping through the same tunnel during the transfer (every %s); loss is the share of its requests unanswered.\n\n", pingInterval)
	fmt.Fprintf(w, "| id | competitor | Gbit/s min | median | max | tunnel CPU-s/GB (median) | tunnel peak RSS MiB (median) | peak RSS growth in the 2nd half (median) | RTT p50 / p99 ms under load (median) | ping loss | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	byID := map[string]*result{}
	for _, r := range rs {
		if strings.HasPrefix(r.b.skip, notSelected) {
			continue // left out on purpose (--only): not a finding
		}
		byID[r.b.ID] = r
		if r.b.skip != "" {
			fmt.Fprintf(w, "| %s | %s | – | – | – | – | – | – | – | – | skipped: %s |\n", r.b.ID, r.b.Name, strings.ReplaceAll(r.b.skip, "|", "/"))
			continue
		}
		var g []float64
		sent, lost := 0, 0
		for _, s := range r.samples {
			g = append(g, s.gbps)
			sent += s.pingSent
			lost += s.pingLost
		}
		lo, med, hi := stats(g)
		cpuCol := "–"
		if c, ok := medianCPU(r); ok {
			cpuCol = fmt.Sprintf("%.2f", c)
		}
		rssCol := "–"
		if m, ok := medianRSS(r); ok {
			rssCol = fmt.Sprintf("%.0f", m)
		}
		rttCol := "–"
		p50, ok50 := medianP50(r)
		p99, ok99 := medianP99(r)
		if ok50 && ok99 {
			rttCol = fmt.Sprintf("%.2f / %.2f", p50, p99)
		}
		growthCol := "–"
		var gr []float64
		for _, s := range r.samples {
			if s.hasGrowth {
				gr = append(gr, s.rssGrowth)
			}
		}
		if len(gr) > 0 {
			_, m, _ := stats(gr)
			growthCol = fmt.Sprintf("%+.0f %%", 100*m)
		}
		lossCol := "–"
		if sent > 0 {
			lossCol = fmt.Sprintf("%.1f %%", 100*float64(lost)/float64(sent))
		}
		note := fmt.Sprintf("%d/%d rounds ok", len(r.samples), len(r.samples)+len(r.errs))
		if len(r.errs) > 0 {
			note += "; first error: " + strings.ReplaceAll(r.errs[0], "|", "/")
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %.2f | %.2f | %s | %s | %s | %s | %s | %s |\n", r.b.ID, r.b.Name, lo, med, hi, cpuCol, rssCol, growthCol, rttCol, lossCol, note)
	}
	fmt.Fprintf(w, "\nRatios: of the medians, and (paired) the median of the per-round ratios, which cancels load that drifts between rounds:\n\n")
	ratio := func(a, b string) {
		ra, rb := byID[a], byID[b]
		if ra == nil || rb == nil || len(ra.samples) == 0 || len(rb.samples) == 0 {
			fmt.Fprintf(w, "- %s/%s: n/a (a competitor was skipped or failed)\n", a, b)
			return
		}
		line := fmt.Sprintf("- %s/%s = %.2f", a, b, median(ra)/median(rb))
		if pr, n, ok := paired(ra, rb, gbpsOf); ok {
			line += fmt.Sprintf(" (paired %.2f over %d rounds)", pr, n)
		}
		fmt.Fprintln(w, line)
	}
	ratio("B3", "B2")
	ratio("B3", "B1")
	ratio("B3", "B5")
	ratio("B3", "B0")
	ratio("B3", "B4")
	if r3, r2 := byID["B3"], byID["B2"]; r3 != nil && r2 != nil {
		figureRatio(w, "CPU-s/GB B3/B2", r3, r2, medianCPU, cpuOf, " (target ≤ 1)")
		figureRatio(w, "peak RSS B3/B2", r3, r2, medianRSS, rssOf, "")
		figureRatio(w, "RTT p50 under load B3/B2", r3, r2, medianP50, rttP50Of, "")
		figureRatio(w, "RTT p99 under load B3/B2", r3, r2, medianP99, rttP99Of, "")
	}
	for _, r := range rs {
		r3 := byID["B3"]
		if !strings.HasPrefix(r.b.ID, "X") || r3 == nil || len(r.samples) == 0 || len(r3.samples) == 0 {
			continue
		}
		line := fmt.Sprintf("- experiment %s/B3 = %.2f", r.b.ID, median(r)/median(r3))
		if pr, n, ok := paired(r, r3, gbpsOf); ok {
			line += fmt.Sprintf(" (paired %.2f over %d rounds)", pr, n)
		}
		cx, okx := medianCPU(r)
		c3, ok3 := medianCPU(r3)
		if okx && ok3 && c3 > 0 {
			line += fmt.Sprintf(", CPU-s/GB %s/B3 = %.2f", r.b.ID, cx/c3)
			if pr, _, ok := paired(r, r3, cpuOf); ok {
				line += fmt.Sprintf(" (paired %.2f)", pr)
			}
		}
		mx, okx := medianRSS(r)
		m3, ok3 := medianRSS(r3)
		if okx && ok3 && m3 > 0 {
			line += fmt.Sprintf(", peak RSS %s/B3 = %.2f", r.b.ID, mx/m3)
		}
		px, okx := medianP99(r)
		p3, ok3 := medianP99(r3)
		if okx && ok3 && p3 > 0 {
			line += fmt.Sprintf(", RTT p99 %s/B3 = %.2f", r.b.ID, px/p3)
		}
		fmt.Fprintln(w, line+" ("+r.b.Name+")")
	}
	if r3 := byID["B3"]; r3 != nil && len(r3.samples) > 0 && cryptoGbps > 0 {
		fmt.Fprintf(w, "- B3 / one-core ChaCha20-Poly1305 bound = %.2f\n", median(r3)/cryptoGbps)
	}
	fmt.Fprintln(w)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
