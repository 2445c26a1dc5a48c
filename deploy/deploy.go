// Package deploy holds wgmesh's deployment artefacts: the Helm chart in
// helm/wgmesh, the kustomize base in kubernetes/ (namespace, RBAC, DaemonSet,
// admission policy; generated from the chart's defaults by `make
// manifests`, e2e/cmd/manifests), the uninstall
// base in kubernetes/uninstall/ (a DaemonSet that runs `wgmesh cleanup` on
// every node) and the Dockerfile. The Go package exists so that tests can
// render the bases with the kustomize engine kubectl embeds, decode every
// object strictly into client-go types and check it against the binary's
// flags and HTTP paths, and so that tools (e2e) can apply the very same
// objects.
package deploy

import (
	"embed"
	"fmt"
	"io/fs"
	"path"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Kubernetes holds the kustomize bases, rooted at "kubernetes/" (install)
// and "kubernetes/uninstall/" (cleanup).
//
//go:embed kubernetes
var Kubernetes embed.FS

// Chart holds the Helm chart, rooted at ChartDir. The "all:" prefix keeps
// templates/_helpers.tpl and .helmignore, which embed skips otherwise. The
// Helm SDK that renders it lives in the e2e module (its dependencies would
// nearly double this module's graph): e2e/helmchart.
//
//go:embed all:helm/wgmesh
var Chart embed.FS

// ChartDir is the chart's directory inside Chart and inside deploy/.
const ChartDir = "helm/wgmesh"

// Names the manifests use.
const (
	Namespace      = "wgmesh"
	ServiceAccount = "wgmesh"
	// Image is the placeholder image of both bases. The .invalid top-level
	// domain never resolves (RFC 2606), so a base applied without an
	// overlay that sets the image fails at the image pull, naming it,
	// instead of pulling whatever someone publishes under a guessed name.
	Image = "wgmesh.invalid/wgmesh"
	// Base and UninstallBase are the bases' directories inside Kubernetes.
	Base          = "kubernetes"
	UninstallBase = "kubernetes/uninstall"
	// CleanupServiceAccount runs the uninstall DaemonSet's cleanup.
	CleanupServiceAccount = "wgmesh-cleanup"
)

// Overlay is what a user's overlay directory sets on a base: the image to
// run instead of Image. The zero value renders the base as it is.
type Overlay struct {
	// NewName replaces Image's name, e.g. "registry.example/wgmesh".
	NewName string
	// NewTag sets the tag, e.g. "v1.2.3".
	NewTag string
}

// OverlayKustomization returns the kustomization.yaml of an overlay
// directory that uses base (a path relative to the overlay directory) with
// o's image: the file README's install steps tell users to write.
func OverlayKustomization(base string, o Overlay) ([]byte, error) {
	img := map[string]string{"name": Image}
	if o.NewName != "" {
		img["newName"] = o.NewName
	}
	if o.NewTag != "" {
		img["newTag"] = o.NewTag
	}
	return yaml.Marshal(map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  []string{base},
		"images":     []map[string]string{img},
	})
}

// Render builds the base in dir (Base or UninstallBase) with kustomize's
// krusty, the engine and options `kubectl apply -k` uses (kubectl 1.33
// embeds sigs.k8s.io/kustomize/api v0.19.0 with the legacy resource order:
// Namespace first, admission objects last), through an overlay that sets
// o's image unless o is zero. The objects come back in the order kubectl
// would send them. Errors name the kustomization that failed.
func Render(dir string, o Overlay) ([]*unstructured.Unstructured, error) {
	fsys := filesys.MakeFsInMemory()
	// The embedded tree is copied under /src so that the overlay can sit
	// next to it, as a user's overlay sits next to a checkout.
	err := fs.WalkDir(Kubernetes, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := Kubernetes.ReadFile(p)
		if err != nil {
			return err
		}
		return fsys.WriteFile(path.Join("/src", p), data)
	})
	if err != nil {
		return nil, fmt.Errorf("copy the embedded manifests: %w", err)
	}
	target := path.Join("/src", dir)
	if o != (Overlay{}) {
		k, err := OverlayKustomization(path.Join("../src", dir), o)
		if err != nil {
			return nil, err
		}
		if err := fsys.WriteFile("/overlay/kustomization.yaml", k); err != nil {
			return nil, err
		}
		target = "/overlay"
	}
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionLegacy
	rm, err := krusty.MakeKustomizer(opts).Run(fsys, target)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		// Through JSON: kyaml's maps hold int where unstructured
		// (and its DeepCopy) wants int64.
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", dir, r.CurId(), err)
		}
		out = append(out, u)
	}
	return out, nil
}
