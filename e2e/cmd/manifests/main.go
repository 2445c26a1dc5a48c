// Command manifests regenerates what is derived from the Helm chart and the
// monitoring rules (`make manifests` runs it from the e2e directory):
//
//   - deploy/kubernetes/*.yaml, the kustomize base: the chart rendered with
//     its default values (helmchart.Base);
//   - deploy/helm/wgmesh/files/alerts.yaml, the PrometheusRule's source: a
//     copy of deploy/monitoring/alerts.yaml (helmchart.ChartFiles).
//
// It rewrites a file only when its content changes and removes base files
// the chart no longer renders (uninstall/ is not generated and stays). The
// tests in e2e/helmchart fail, naming the file, when a committed file differs
// from what this command would write.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/e2e/helmchart"
)

func main() {
	root := flag.String("root", "..", "the wgmesh checkout (the directory holding deploy/)")
	flag.Parse()
	if err := run(*root); err != nil {
		fmt.Fprintln(os.Stderr, "manifests:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	deployDir := filepath.Join(root, "deploy")
	if _, err := os.Stat(filepath.Join(deployDir, "deploy.go")); err != nil {
		return fmt.Errorf("--root %s is not a wgmesh checkout: %w", root, err)
	}
	base, err := helmchart.Base()
	if err != nil {
		return err
	}
	baseDir := filepath.Join(deployDir, filepath.FromSlash(deploy.Base))
	for name, data := range base {
		if err := write(filepath.Join(baseDir, name), data); err != nil {
			return err
		}
	}
	old, err := filepath.Glob(filepath.Join(baseDir, "*.yaml"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if _, ok := base[filepath.Base(f)]; !ok {
			fmt.Println("remove", f)
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	for name, data := range helmchart.ChartFiles() {
		if err := write(filepath.Join(deployDir, filepath.FromSlash(deploy.ChartDir), filepath.FromSlash(name)), data); err != nil {
			return err
		}
	}
	return nil
}

func write(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	fmt.Println("write", strings.TrimPrefix(path, "./"))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
