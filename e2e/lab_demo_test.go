package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// demoPrefix keeps the test's demo runs apart from a `make demo` running at
// the same time.
const demoPrefix = "wgmdemotest"

// buildDemo compiles cmd/demo once per test.
func buildDemo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/demo").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/demo: %v\n%s", err, out)
	}
	return bin
}

// demoNamespaces lists the namespaces a demo process with that pid left.
func demoNamespaces(t *testing.T, pid int) []string {
	t.Helper()
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), demoPrefix+"-"+strconv.Itoa(pid)+"-") {
			left = append(left, e.Name())
		}
	}
	return left
}

// TestPrivilegedLabDemo builds the demo program once and runs it twice: to
// the end, and stopped with SIGTERM while its agents run.
func TestPrivilegedLabDemo(t *testing.T) {
	labRequireRoot(t)
	wgmesh := labWgmeshBinary(t)
	bin := buildDemo(t)
	t.Run("complete", func(t *testing.T) { testDemoComplete(t, bin, wgmesh) })
	t.Run("k8s", func(t *testing.T) { testDemoComplete(t, bin, wgmesh, "--k8s") })
	t.Run("interrupted", func(t *testing.T) { testDemoInterrupted(t, bin, wgmesh) })
}

// testDemoComplete runs the demo program end to end (with extra flags): it
// must pass all its checks, exit 0 and leave no namespace behind.
func testDemoComplete(t *testing.T, bin, wgmesh string, extra ...string) {
	// The --k8s run may have to compile kube-apiserver first.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--wgmesh", wgmesh, "--prefix", demoPrefix}, extra...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Errorf("demo failed: %v", err)
	}
	t.Logf("measured: demo ran %s", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(out.String(), "Result: PASS") {
		t.Errorf("demo output has no PASS line")
	}
	if left := demoNamespaces(t, cmd.Process.Pid); len(left) > 0 {
		t.Errorf("demo left namespaces behind: %v", left)
		for _, ns := range left {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
}

// testDemoInterrupted stops the demo with SIGTERM while its agents run: it
// must exit non-zero and still remove everything.
func testDemoInterrupted(t *testing.T, bin, wgmesh string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--wgmesh", wgmesh, "--prefix", demoPrefix)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out strings.Builder
	agentsUp := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "Waiting for every agent") {
				once.Do(func() { close(agentsUp) })
			}
		}
	}()
	select {
	case <-agentsUp:
	case <-time.After(2 * time.Minute):
		t.Fatal("demo never reached the agent step")
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	pw.Close()
	mu.Lock()
	t.Logf("demo output:\n%s", out.String())
	mu.Unlock()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("interrupted demo: exit %v, want non-zero", err)
	}
	if left := demoNamespaces(t, cmd.Process.Pid); len(left) > 0 {
		t.Errorf("interrupted demo left namespaces behind: %v", left)
		for _, ns := range left {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
}
