// Command demo shows wgmesh at work in under half a minute: it builds a
// three-node cluster out of network namespaces, starts one agent per node
// from a peers file, sends pod-to-pod traffic over IPv4 and IPv6, and proves
// from a packet capture of the shared wire that all of it was encrypted.
// It removes everything it created when it ends, also on Ctrl-C, and exits
// non-zero when any check fails.
//
//	make demo      (runs: cd e2e && go run ./cmd/demo --wgmesh ../bin/wgmesh)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.Wgmesh, "wgmesh", "", "path of the wgmesh binary (make build)")
	flag.IntVar(&o.Nodes, "nodes", 3, "number of nodes")
	flag.BoolVar(&o.K8s, "k8s", false, "run a real Kubernetes cluster in the lab (kubelet, containerd, CNI, kube-proxy) and install wgmesh with kubectl apply -k")
	flag.StringVar(&o.Prefix, "prefix", "wgmdemo", "start of every namespace name; leftovers of crashed runs with it are removed")
	flag.Int64Var(&o.TransferBytes, "transfer", 8<<20, "bytes of the TCP transfer")
	agentArgs := flag.String("agent-args", "", "extra flags for every agent, space-separated (e.g. \"--backend userspace --mtu 1400\")")
	flag.Parse()
	if o.Wgmesh == "" {
		fmt.Fprintln(os.Stderr, "demo: --wgmesh PATH is required (run `make demo`)")
		os.Exit(2)
	}
	abs, err := filepath.Abs(o.Wgmesh)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(2)
	}
	o.Wgmesh = abs
	o.AgentArgs = strings.Fields(*agentArgs)
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces (sudo make demo)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, os.Stdout, o)
	interrupted := ctx.Err() != nil
	stop()
	if err != nil {
		if interrupted || errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "demo: interrupted; everything it created has been removed")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "demo: FAILED: %v\n", err)
		os.Exit(1)
	}
}

// options of one demo run.
type options struct {
	Wgmesh        string
	Nodes         int
	K8s           bool
	Prefix        string
	TransferBytes int64
	AgentArgs     []string
}

// run is the whole demo; the deferred lab.Close inside runs on every path.
func run(ctx context.Context, out io.Writer, o options) error {
	d := &demo{out: out, o: o, start: time.Now()}
	return d.run(ctx)
}
