package uml

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
)

// BuildXfer compiles the xfer helper (see xfer/main.go) into dir and returns
// its path; host pods and guest pods run the same binary.
func BuildXfer(ctx context.Context, dir string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("uml: locate xfer source: no caller information")
	}
	out := filepath.Join(dir, "xfer")
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./xfer")
	cmd.Dir = filepath.Dir(file)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("uml: build xfer: %w\n%s", err, b)
	}
	return out, nil
}
