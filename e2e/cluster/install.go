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

// Overlay writes README's install overlay for AgentImageName:tag (see
// WriteOverlay) into dir/overlay-<tag> and returns that directory.
func (c *Cluster) Overlay(tag string) (string, error) {
	base, err := DeployDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.dir, "overlay-"+tag)
	return dir, WriteOverlay(dir, base, AgentImageName, tag, "")
}

// WriteOverlay writes dir/kustomization.yaml in the form README's "Install
// on a Kubernetes cluster" and "Uninstall" tell users to write: resource
// the base directory (relative to dir, as kustomize requires), the base's
// placeholder image (deploy.Image) mapped to newName:newTag. extra, YAML
// such as a "patches:" list, is appended as the user's own additions.
func WriteOverlay(dir, base, newName, newTag, extra string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	rel, err := filepath.Rel(dir, base)
	if err != nil {
		return err
	}
	k := fmt.Sprintf("resources: [%s]\nimages: [{name: %s, newName: %s, newTag: %s}]\n", rel, deploy.Image, newName, newTag) + extra
	return os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600)
}

// Install installs (or upgrades) wgmesh with AgentImageName:tag exactly as
// README's "Install on a Kubernetes cluster" says, with the real kubectl:
// the overlay (Overlay), the namespace first, the server-side dry run, then
// `kubectl apply -k`. It returns the overlay directory (what the user keeps
// for the uninstall) and the output of the last apply; the caller waits for
// the rollout.
func (c *Cluster) Install(ctx context.Context, tag string) (overlay, out string, err error) {
	base, err := DeployDir()
	if err != nil {
		return "", "", err
	}
	if overlay, err = c.Overlay(tag); err != nil {
		return "", "", err
	}
	if _, err := c.Kubectl(ctx, "apply", "-f", filepath.Join(base, "namespace.yaml")); err != nil {
		return overlay, "", err
	}
	if _, err := c.Kubectl(ctx, "apply", "-k", overlay, "--dry-run=server"); err != nil {
		return overlay, "", err
	}
	out, err = c.Kubectl(ctx, "apply", "-k", overlay)
	return overlay, out, err
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
