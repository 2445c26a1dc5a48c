package e2e_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/e2e/uml"
)

// TestMain starts the UML kernel builds in the background when the whole
// package runs as root (no -run, no -list): on a cold cache they then overlap the
// scenarios before the kernel ones, which mostly wait on agents and
// kubelets, instead of running after them (≈ 25 min of a 2-core machine for
// the three kernels). The kernel tests call uml.Build themselves and wait
// on its file lock, so this only moves work earlier; a failed build is
// theirs to report.
func TestMain(m *testing.M) {
	flag.Parse()
	ctx, cancel := context.WithCancel(context.Background())
	done := prebuildKernels(ctx)
	code := m.Run()
	cancel() // only a build no test waited for is still running
	<-done
	os.Exit(code)
}

func prebuildKernels(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if os.Geteuid() != 0 || testing.Short() || flag.Lookup("test.run").Value.String() != "" || flag.Lookup("test.list").Value.String() != "" {
		close(done)
		return done
	}
	if _, err := exec.LookPath("make"); err != nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		for _, v := range []uml.Variant{uml.Full, uml.NoXfrmNoObjref, uml.NoNftables} {
			k, err := uml.Build(ctx, v, func(string, ...any) {})
			if err != nil {
				return
			}
			if k.BuildTime > 0 {
				fmt.Printf("measured: UML kernel %s built in the background in %s\n", v.Name, k.BuildTime.Round(time.Second))
			}
		}
	}()
	return done
}
