package main

import (
	"os"
	"strings"
	"testing"
)

const sampleOut = `goos: linux
BenchmarkDerive/nodes=5000-2   	      73	  19177361 ns/op	 8106104 B/op	     125 allocs/op
BenchmarkDerive/nodes=5000-2   	      70	  17000000 ns/op	 8106104 B/op	     125 allocs/op
BenchmarkDerive/nodes=5000-2   	      75	  21000000 ns/op	 8106104 B/op	     125 allocs/op
BenchmarkDiff/nodes=5000/steady-2         	     102	  10324830 ns/op	 4962848 B/op	     115 allocs/op
BenchmarkRouteDiff/nodes=5000/steady-2    	       9	 234398281 ns/op	35648138 B/op	     466 allocs/op
BenchmarkInformerStore/nodes=5000/transform=false-2   1  1584947459 ns/op  140.6 MiB-retained
BenchmarkInformerStore/nodes=5000/transform=true-2    1  2461885623 ns/op  17.97 MiB-retained
--- BENCH: BenchmarkInMemoryPair/size=1420/batch=1-2
    pair_test.go:312: data path: wgmesh device
ok  	github.com/wgmesh/wgmesh/bench	10.1s
`

func TestParseGoBench(t *testing.T) {
	f := parseGoBench(sampleOut)
	if got, want := len(f.names), 5; got != want {
		t.Fatalf("parsed %d benchmarks (%v), want %d", got, f.names, want)
	}
	if m, ok := f.median("BenchmarkDerive/nodes=5000", "ns/op"); !ok || m != 19177361 {
		t.Errorf("Derive median = %v, %v; want 19177361", m, ok)
	}
	if vs := f.values["BenchmarkDerive/nodes=5000"]["allocs/op"]; len(vs) != 3 {
		t.Errorf("Derive allocs/op values = %v, want three", vs)
	}
	var w strings.Builder
	writeGoBench(&w, f)
	for _, want := range []string{
		"| Derive/nodes=5000 | ns/op | 17000000 | 19177361 | 21000000 |",
		"= **263.9 ms**",
		"140.6 MiB without the transform, 18.0 MiB with kube.Strip (7.8× less)",
	} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, w.String())
		}
	}
}

func FuzzParseGoBench(f *testing.F) {
	f.Add(sampleOut)
	f.Add("BenchmarkX-2 1 NaN ns/op")
	f.Add("BenchmarkX 10 5")
	f.Fuzz(func(t *testing.T, out string) {
		fig := parseGoBench(out)
		for _, name := range fig.names {
			if len(fig.units[name]) != len(fig.values[name]) {
				t.Fatalf("%s: %d units but %d value lists", name, len(fig.units[name]), len(fig.values[name]))
			}
		}
		var w strings.Builder
		writeGoBench(&w, fig)
	})
}

func TestPeakRSS(t *testing.T) {
	m, err := peakRSSMiB(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary holds a few MiB at least and nowhere near a GiB.
	if m < 1 || m > 1024 {
		t.Errorf("peak RSS of the test process = %.1f MiB, want 1-1024", m)
	}
	if _, err := peakRSSMiB(-1); err == nil {
		t.Error("peak RSS of pid -1: no error")
	}
}
