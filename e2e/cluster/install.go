package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/e2e/images"
)

// AgentImageName is the image name the lab's "user" pushes the agent as;
// Install's overlay maps the base's placeholder (deploy.Image) to it.
const AgentImageName = "lab.invalid/wgmesh"

// BuildAgentImage builds the agent image AgentImageName:tag from the
// cluster's wgmesh binary and loads it on every node.
func (c *Cluster) BuildAgentImage(ctx context.Context, tag string) (*images.Image, error) {
	dir := filepath.Join(c.dir, "images")
	img, err := images.Wgmesh(dir, AgentImageName+":"+tag, c.opts.Wgmesh)
	if err != nil {
		return nil, err
	}
	return img, c.LoadImage(ctx, img.Tarball)
}

// Overlay writes the kustomize overlay README tells users to make — the
// repository's deploy/kubernetes as the only resource, the base's
// placeholder image mapped to newName:newTag — into dir/overlay-<tag> and
// returns that directory.
func (c *Cluster) Overlay(newName, newTag string) (string, error) {
	base, err := DeployDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.dir, "overlay-"+newTag)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		return "", err
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: %s
    newName: %s
    newTag: %q
`, rel, deploy.Image, newName, newTag)
	return dir, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600)
}

// Install applies the overlay for AgentImageName:tag with the real
// `kubectl apply -k`, exactly as a user installs (or upgrades) wgmesh.
func (c *Cluster) Install(ctx context.Context, tag string) (string, error) {
	dir, err := c.Overlay(AgentImageName, tag)
	if err != nil {
		return "", err
	}
	return c.Kubectl(ctx, "apply", "-k", dir)
}

// DeployDir is the repository's deploy/kubernetes directory.
func DeployDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cluster: locate deploy/kubernetes: no caller information")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "kubernetes")
	if _, err := os.Stat(filepath.Join(dir, "kustomization.yaml")); err != nil {
		return "", fmt.Errorf("cluster: %s: %w", dir, err)
	}
	return filepath.Clean(dir), nil
}
