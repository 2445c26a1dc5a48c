// Command wgmesh is the WireGuard mesh agent and its operator tools: the
// agent (one per node), key management, status, cluster verification and
// cleanup. This package only parses flags and plugs the packages together;
// the logic lives in mesh, mesh/kube, mesh/file, mesh/metrics, device and
// routing.
package main

import (
	"context"
	"os"
)

// version and commit are set by the linker (see Makefile:
// -X main.version=... -X main.commit=...); when they are not, the version
// command falls back to the module build information.
var (
	version string
	commit  string
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
