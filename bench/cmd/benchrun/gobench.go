package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// goBenchCount is how often each Go benchmark runs (-count), for
// min / median / max.
const goBenchCount = 3

// benchFigures are the figures of Go benchmark output: for each benchmark
// (GOMAXPROCS suffix removed) and unit, every value seen, in order of first
// appearance.
type benchFigures struct {
	names  []string
	units  map[string][]string
	values map[string]map[string][]float64
}

var gomaxprocsSuffix = regexp.MustCompile(`-\d+$`)

// parseGoBench reads `go test -bench` output: lines of a name, an iteration
// count and value/unit pairs.
func parseGoBench(out string) *benchFigures {
	f := &benchFigures{units: map[string][]string{}, values: map[string]map[string][]float64{}}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(fields[1]); err != nil {
			continue
		}
		name := gomaxprocsSuffix.ReplaceAllString(fields[0], "")
		if f.values[name] == nil {
			f.values[name] = map[string][]float64{}
			f.names = append(f.names, name)
		}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				break
			}
			unit := fields[i+1]
			if f.values[name][unit] == nil {
				f.units[name] = append(f.units[name], unit)
			}
			f.values[name][unit] = append(f.values[name][unit], v)
		}
	}
	return f
}

// median returns the median of a benchmark's unit, ok false if absent.
func (f *benchFigures) median(name, unit string) (float64, bool) {
	vs := f.values[name][unit]
	if len(vs) == 0 {
		return 0, false
	}
	_, m, _ := stats(vs)
	return m, true
}

// shown are the units worth a column; MB/s duplicates Gbit/s.
var shown = map[string]bool{"ns/op": true, "B/op": true, "allocs/op": true, "Gbit/s": true, "ns/packet": true,
	"MiB-retained": true, "B-retained/node": true, "JSON-B/node": true, "lost/op": true}

func writeGoBench(w *strings.Builder, f *benchFigures) {
	fmt.Fprintf(w, "| benchmark | unit | min | median | max |\n|---|---|---|---|---|\n")
	for _, name := range f.names {
		for _, unit := range f.units[name] {
			if !shown[unit] {
				continue
			}
			lo, med, hi := stats(f.values[name][unit])
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", strings.TrimPrefix(name, "Benchmark"), unit, num(lo), num(med), num(hi))
		}
	}
	fmt.Fprintln(w)
	// The control-plane budget: one reconcile at 5,000 nodes is a Derive,
	// a device diff and a route diff.
	d, ok1 := f.median("BenchmarkDerive/nodes=5000", "ns/op")
	dv, ok2 := f.median("BenchmarkDiff/nodes=5000/steady", "ns/op")
	rt, ok3 := f.median("BenchmarkRouteDiff/nodes=5000/steady", "ns/op")
	if ok1 && ok2 && ok3 {
		fmt.Fprintf(w, "Control plane at 5,000 nodes (medians, steady resync): Derive %.1f ms + device diff %.1f ms + route diff %.1f ms = **%.1f ms** (target < 20 ms; wall time on this machine under its load).\n\n",
			d/1e6, dv/1e6, rt/1e6, (d+dv+rt)/1e6)
	}
	if a, ok := f.median("BenchmarkInformerStore/nodes=5000/transform=false", "MiB-retained"); ok {
		if b, ok := f.median("BenchmarkInformerStore/nodes=5000/transform=true", "MiB-retained"); ok && b > 0 {
			fmt.Fprintf(w, "Informer store, 5,000 realistic Nodes: %.1f MiB without the transform, %.1f MiB with kube.Strip (%.1f× less).\n\n", a, b, a/b)
		}
	}
	if h, ok := f.median("BenchmarkKubeSourceHeap", "MiB-retained"); ok {
		fmt.Fprintf(w, "Kube source + Nodes + Derive at 5,000 Nodes: %.1f MiB of heap retained (target: agent heap < 100 MiB).\n\n", h)
	}
}

// num prints a figure compactly: integers without decimals, small values
// with three significant digits.
func num(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}
