// Command benchrun is the throughput comparison harness behind `make bench`.
//
// It joins two network namespaces with a veth pair and measures one TCP
// stream (iperf3) through each competitor in turn, interleaved round by round
// so that the noise of a shared machine hits every competitor alike:
//
//	B0 plain veth (the ceiling)
//	B1 Debian's wireguard-go (the class of userspace peer other meshes ship)
//	B2 upstream wireguard-go, built from the exact module version in go.mod
//	B3 the wgmesh agent (userspace backend, offloads on)
//	B4 the wgmesh agent with offloads off
//	B5 wireguard-go 0.0.20230223, the version Kilo's userspace sidecar ships
//	BK the wgmesh agent with kernel WireGuard (only where the host has the module)
//
// It also measures the ChaCha20-Poly1305 bound of this machine, runs the Go
// benchmarks of ./bench, and writes everything as Markdown. A competitor that
// is not installed is reported as skipped, never estimated.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

func ctxBG() context.Context { return context.Background() }

// streamModes are the numbers of parallel TCP streams measured, each a
// section of the report.
var streamModes = []int{1, 8}

// startLoad is the load average when the harness started.
var startLoad = loadAvg()

type sample struct {
	gbps     float64
	cpuPerGB float64 // tunnel CPU-seconds per GB moved; 0 when no tunnel process
	hasCPU   bool
	peakRSS  float64 // MiB, the larger of the tunnel processes' VmHWM
	// rssGrowth is how much that peak grew in the second half of the
	// transfer, relative to its value halfway (0.1 = 10 %).
	rssGrowth  float64
	hasGrowth  bool
	bytesMoved float64
	// rttP50 and rttP99 are the ping round trips through the tunnel during
	// the transfer, in milliseconds; hasRTT is false when no reply came.
	rttP50, rttP99 float64
	hasRTT         bool
	// pingSent and pingLost count the echo requests of that ping.
	pingSent, pingLost int
	round              int // which interleaved round, for paired ratios
}

type result struct {
	b       backend
	pinned  bool
	streams int
	samples []sample
	errs    []string
}

func main() {
	wgmesh := flag.String("wgmesh", "bin/wgmesh", "path of the wgmesh binary")
	out := flag.String("out", "bench/RESULTS.md", "where to write the Markdown report")
	duration := flag.Duration("duration", 8*time.Second, "length of each iperf3 run")
	rounds := flag.Int("rounds", 3, "interleaved rounds per competitor (median of these)")
	pinned := flag.Bool("pinned", true, "also run with each namespace's processes pinned to one core")
	goBench := flag.Bool("go-bench", true, "run the Go benchmarks of ./bench, ./mesh, ./device and ./routing as well")
	only := flag.String("only", "", "comma-separated competitor IDs to run (e.g. B2,B3); empty runs all")
	alt := flag.String("alt-wgmesh", "", "a second wgmesh binary (e.g. built another way) run as competitor X5 next to B3")
	experiments := flag.Bool("experiments", false, "also run the agent tuning experiments X1… (environment and link settings), for before/after measurements")
	streamsFlag := flag.String("streams", "1,8", "comma-separated numbers of parallel TCP streams per iperf3 run (iperf3 -P), each measured in its own interleaved rounds")
	flag.Parse()
	log.SetFlags(0)
	sm, err := parseStreams(*streamsFlag)
	if err != nil {
		log.Fatal(err)
	}
	streamModes = sm

	report := &strings.Builder{}
	var results []*result
	// The crypto bound is sampled once before and then once per round, so
	// that it sees the same machine load as the tunnels it bounds.
	crypto := []float64{chachaBound(2 * time.Second)}

	if os.Geteuid() != 0 {
		log.Printf("not root: the namespace throughput comparison is skipped (Go benchmarks still run)")
	} else if _, err := exec.LookPath("iperf3"); err != nil {
		log.Printf("iperf3 not installed: the throughput comparison is skipped")
	} else {
		upstream, err := buildUpstream()
		backends := []backend{
			plainBackend(),
			wireguardGoBackend("B1", "Debian wireguard-go", "/usr/bin/wireguard-go"),
		}
		if err != nil {
			backends = append(backends, backend{ID: "B2", Name: "upstream wireguard-go", skip: err.Error()})
		} else {
			backends = append(backends, wireguardGoBackend("B2", "upstream wireguard-go "+wireguardVersion(), upstream))
		}
		if kilo, err := buildPinnedWireguardGo(kiloWireguardGo); err != nil {
			backends = append(backends, backend{ID: "B5", Name: "wireguard-go " + kiloWireguardGo + " (Kilo's userspace sidecar)", skip: err.Error()})
		} else {
			backends = append(backends, wireguardGoBackend("B5", "wireguard-go "+kiloWireguardGo+" (Kilo's userspace sidecar)", kilo))
		}
		backends = append(backends, wgmeshBackend("B3", "wgmesh agent (userspace, offloads on)", *wgmesh))
		b4 := wgmeshBackend("B4", "wgmesh agent (userspace, offloads off)", *wgmesh, "--offloads=false")
		if b4.skip == "" && !agentHasFlag(*wgmesh, "offloads") {
			b4.skip = "this wgmesh binary has no (hidden) --offloads flag, so device.Options.DisableOffloads is not reachable from the agent"
		}
		backends = append(backends, b4)
		// Kernel WireGuard joins only where this host's kernel has the
		// module: numbers from a UML guest (the e2e lab's kernel nodes)
		// measure UML, not WireGuard, and are never put in this table.
		bk := wgmeshBackend("BK", "wgmesh agent (kernel WireGuard)", *wgmesh, "--backend", "kernel")
		if why := noKernelWireGuard(); why != "" && bk.skip == "" {
			bk.skip = why
		}
		backends = append(backends, bk)
		if *experiments {
			backends = append(backends, experimentBackends(*wgmesh)...)
		}
		if *alt != "" {
			backends = append(backends, wgmeshBackend("X5", "B3 with the binary "+*alt, *alt))
		}
		if *only != "" {
			keep := map[string]bool{}
			for _, id := range strings.Split(*only, ",") {
				keep[strings.TrimSpace(id)] = true
			}
			for i := range backends {
				if !keep[backends[i].ID] && backends[i].skip == "" {
					backends[i].skip = notSelected + " (--only " + *only + ")"
				}
			}
		}
		modes := []bool{false}
		if *pinned && runtime.NumCPU() >= 2 {
			modes = append(modes, true)
		}
		for _, st := range streamModes {
			for _, pin := range modes {
				var rs []*result
				for _, b := range backends {
					rs = append(rs, &result{b: b, pinned: pin, streams: st})
				}
				for r := 0; r < *rounds; r++ {
					for _, res := range rs {
						if res.b.skip != "" {
							continue
						}
						s, err := measure(res.b, pin, *duration, st)
						if err != nil {
							log.Printf("%s streams=%d pinned=%v round %d: %v", res.b.ID, st, pin, r+1, err)
							res.errs = append(res.errs, err.Error())
							continue
						}
						s.round = r
						log.Printf("%s streams=%d pinned=%v round %d: %.2f Gbit/s, %.2f tunnel CPU-s/GB, %.0f MiB, RTT p50 %.2f p99 %.2f ms (%d/%d lost)",
							res.b.ID, st, pin, r+1, s.gbps, s.cpuPerGB, s.peakRSS, s.rttP50, s.rttP99, s.pingLost, s.pingSent)
						res.samples = append(res.samples, s)
					}
					crypto = append(crypto, chachaBound(time.Second))
				}
				results = append(results, rs...)
			}
		}
	}

	var goBenchOut string
	if *goBench {
		o, err := output(ctxBG(), "go", "test", "-run", "^$", "-bench", ".", "-benchmem", "-count", fmt.Sprint(goBenchCount), "-timeout", "30m",
			"./bench/", "./mesh/", "./device/...", "./routing/")
		if err != nil {
			log.Printf("go benchmarks: %v", err)
		}
		goBenchOut = o
	}

	writeReport(report, results, crypto, goBenchOut, *duration, *rounds, *wgmesh)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, []byte(report.String()), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Print(report.String())
}

// measure sets up a fresh lab for one competitor, runs iperf3 with streams
// parallel TCP streams and a ping on the same path, and tears the lab down
// again.
func measure(b backend, pinned bool, d time.Duration, streams int) (sample, error) {
	l, err := newLab(pinned)
	if err != nil {
		return sample{}, err
	}
	defer l.close()
	target, pids, err := b.setup(l)
	if err != nil {
		return sample{}, err
	}
	if _, err := l.start("b", nil, "iperf3", "-s", "-1", "-B", target); err != nil {
		return sample{}, err
	}
	if err := l.waitListen("b", 5201, 10*time.Second); err != nil {
		return sample{}, err
	}
	before := totalCPU(pids)
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	c := l.command(ctx, "a", nil, "iperf3", "-c", target, "-t", fmt.Sprint(int(d.Seconds())), "-O", "1", "-J", "-P", fmt.Sprint(streams))
	// The ping starts when iperf3's omitted first second (-O 1, slow start)
	// is over and ends with the transfer: it sees the queues the streams
	// fill.
	pingc := make(chan pingResult, 1)
	go func() {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
		pingc <- l.ping(ctx, "a", target, d-time.Second)
	}()
	// The peak resident set halfway through, to tell a plateau from
	// memory still growing at the end.
	halfc := make(chan float64, 1)
	go func() {
		select {
		case <-time.After(d / 2):
		case <-ctx.Done():
		}
		halfc <- maxPeakRSS(pids)
	}()
	raw, err := c.Output()
	pr := <-pingc
	half := <-halfc
	if err != nil {
		return sample{}, fmt.Errorf("iperf3 client: %w (%s)", err, strings.TrimSpace(string(raw)))
	}
	after := totalCPU(pids)
	var res struct {
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return sample{}, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.Error != "" {
		return sample{}, fmt.Errorf("iperf3: %s", res.Error)
	}
	s := sample{gbps: res.End.SumReceived.BitsPerSecond / 1e9, bytesMoved: res.End.SumReceived.Bytes}
	if len(pids) > 0 && s.bytesMoved > 0 {
		s.hasCPU = true
		s.cpuPerGB = (after - before) / (s.bytesMoved / 1e9)
	}
	if pr.err != nil {
		return sample{}, fmt.Errorf("ping under load: %w", pr.err)
	}
	s.pingSent, s.pingLost = pr.sent, pr.sent-len(pr.rtts)
	if len(pr.rtts) > 0 {
		s.hasRTT = true
		s.rttP50, s.rttP99 = percentile(pr.rtts, 50), percentile(pr.rtts, 99)
	}
	s.peakRSS = maxPeakRSS(pids)
	if half > 0 && s.peakRSS > 0 {
		s.rssGrowth, s.hasGrowth = (s.peakRSS-half)/half, true
	}
	return s, nil
}

// maxPeakRSS is the largest peak resident set of pids in MiB (0: none
// readable).
func maxPeakRSS(pids []int) float64 {
	var m float64
	for _, p := range pids {
		if v, err := peakRSSMiB(p); err == nil && v > m {
			m = v
		}
	}
	return m
}

// experimentBackends are variants of B3 that change one setting each, run
// interleaved with B3 so that a tuning's gain is measured under the same
// load. A setting that wins becomes the agent's default.
func experimentBackends(bin string) []backend {
	return []backend{
		wgmeshVariant("X1", "B3 with GOMAXPROCS=1", bin, variant{env: []string{"GOMAXPROCS=1"}}),
		wgmeshVariant("X2", "B3 with GOGC=400", bin, variant{env: []string{"GOGC=400"}}),
		wgmeshVariant("X3", "B3 with TUN txqueuelen 2000", bin, variant{after: [][]string{{"ip", "-n", "{ns}", "link", "set", "{if}", "txqueuelen", "2000"}}}),
		wgmeshVariant("X4", "B3 with GOGC=100 (Go default)", bin, variant{env: []string{"GOGC=100"}}),
		// Memory: the Go heap of wireguard-go's 64 KiB packet buffers is
		// at most twice what is in flight with GOGC=100; a memory limit
		// makes the collector run before the heap doubles.
		wgmeshVariant("X6", "B3 with GOMEMLIMIT=96MiB", bin, variant{env: []string{"GOMEMLIMIT=96MiB"}}),
		wgmeshVariant("X7", "B3 with GOGC=50", bin, variant{env: []string{"GOGC=50"}}),
		// Latency: a queue the kernel manages (CoDel) on the TUN device
		// instead of its default FIFO.
		wgmeshVariant("X8", "B3 with fq_codel on the TUN device", bin, variant{after: [][]string{{"ip", "netns", "exec", "{ns}", "tc", "qdisc", "replace", "dev", "{if}", "root", "fq_codel"}}}),
		// Memory: a bound on the packets wireguard-go holds per direction
		// (the agent's default is --inflight-packets=128 with GOGC=50;
		// these keep the Go default GOGC=100 so that each changes one
		// thing against the run that chose the default).
		wgmeshVariant("X9", "B3 with --inflight-packets=256 and GOGC=100", bin, variant{env: []string{"GOGC=100"}}, "--inflight-packets=256"),
		wgmeshVariant("X10", "B3 with --inflight-packets=1024 and GOGC=100", bin, variant{env: []string{"GOGC=100"}}, "--inflight-packets=1024"),
		// Both: the excess the window leaves in the TUN queue is managed by
		// CoDel instead of waiting in a FIFO.
		wgmeshVariant("X11", "B3 with fq_codel on the TUN device", bin,
			variant{after: [][]string{{"ip", "netns", "exec", "{ns}", "tc", "qdisc", "replace", "dev", "{if}", "root", "fq_codel"}}}),
		// Memory: the window with a smaller Go heap headroom; with the
		// window the live heap is bounded, so the collector is not asked
		// to run over an ever larger live set.
		wgmeshVariant("X12", "B3 with --inflight-packets=256", bin, variant{}, "--inflight-packets=256"),
		wgmeshVariant("X13", "B3 with GOGC=100", bin, variant{env: []string{"GOGC=100"}}),
		wgmeshVariant("X15", "B3 with --inflight-packets=256 and GOMEMLIMIT=64MiB", bin, variant{env: []string{"GOMEMLIMIT=64MiB", "GOGC=100"}}, "--inflight-packets=256"),
		// Before: the agent's defaults until the window became one,
		// wireguard-go's own behaviour.
		wgmeshVariant("X16", "B3 with --inflight-packets=0 and GOGC=100 (the defaults before)", bin, variant{env: []string{"GOGC=100"}}, "--inflight-packets=0"),
		// Latency: a shorter TUN queue (the kernel's ring and the pfifo
		// qdisc above it) leaves the excess with TCP, whose small-queue
		// limit and local congestion control keep it short.
		wgmeshVariant("X17", "B3 with TUN txqueuelen 64", bin, variant{after: [][]string{{"ip", "-n", "{ns}", "link", "set", "{if}", "txqueuelen", "64"}}}),
		wgmeshVariant("X18", "B3 with TUN txqueuelen 16", bin, variant{after: [][]string{{"ip", "-n", "{ns}", "link", "set", "{if}", "txqueuelen", "16"}}}),
	}
}

// agentHasFlag reports whether `wgmesh agent` accepts --name (a boolean
// flag), hidden flags included: with --help the agent only prints usage, and
// an unknown flag is an error before that.
func agentHasFlag(bin, name string) bool {
	out, _ := exec.Command(bin, "agent", "--"+name+"=false", "--help").CombinedOutput()
	return !strings.Contains(string(out), "unknown flag")
}

func totalCPU(pids []int) float64 {
	var t float64
	for _, p := range pids {
		s, err := cpuSeconds(p)
		if err == nil {
			t += s
		}
	}
	return t
}

// notSelected starts the skip reason of a competitor --only left out.
const notSelected = "not selected"

// parseStreams reads --streams: a comma-separated list of 1-128.
func parseStreams(v string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 128 {
			return nil, fmt.Errorf("--streams %q: want a comma-separated list of 1-128", v)
		}
		out = append(out, n)
	}
	return out, nil
}

// buildUpstream builds wireguard-go's own main package at the exact version
// our go.mod requires, so B2 and B3 differ only in what wgmesh adds.
func buildUpstream() (string, error) {
	dir, err := os.MkdirTemp("", "wgmesh-upstream-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "wireguard-go")
	if _, err := output(ctxBG(), "go", "build", "-o", bin, "golang.zx2c4.com/wireguard"); err != nil {
		return "", fmt.Errorf("build upstream wireguard-go: %w", err)
	}
	return bin, nil
}

func wireguardVersion() string {
	v, err := output(ctxBG(), "go", "list", "-m", "-f", "{{.Version}}", "golang.zx2c4.com/wireguard")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(v)
}

func stats(xs []float64) (min, med, max float64) {
	if len(xs) == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	med = s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[0], med, s[len(s)-1]
}
