package apiserver

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/wgmesh/wgmesh/deploy"
)

// FieldManager owns the fields Apply writes.
const FieldManager = "wgmesh-e2e"

// Manifest is one object of a kustomize base and the file it came from.
type Manifest struct {
	File   string
	Object *unstructured.Unstructured
}

func (m Manifest) String() string {
	ns := m.Object.GetNamespace()
	if ns != "" {
		ns += "/"
	}
	return fmt.Sprintf("%s %s%s (%s)", m.Object.GetKind(), ns, m.Object.GetName(), m.File)
}

// RenderDeploy renders one of wgmesh's own kustomize bases (deploy.Base or
// deploy.UninstallBase, as compiled into the deploy package) with
// deploy.Render, the engine `kubectl apply -k` embeds, through an overlay
// setting o's image unless o is zero. The objects come in kubectl's order;
// each Manifest's File names the base, as kustomize does not keep the file.
func RenderDeploy(dir string, o deploy.Overlay) ([]Manifest, error) {
	objs, err := deploy.Render(dir, o)
	if err != nil {
		return nil, err
	}
	ms := make([]Manifest, 0, len(objs))
	for _, u := range objs {
		ms = append(ms, Manifest{File: dir + " (kustomize)", Object: u})
	}
	return ms, nil
}

// ApplyOptions steer Apply.
type ApplyOptions struct {
	// DryRun has the server run every stage (defaulting, validation,
	// admission) without persisting anything.
	DryRun bool
	// Identity applies as this user; zero: Admin.
	Identity Identity
}

// Apply server-side-applies the manifests in order, as `kubectl apply
// --server-side --force-conflicts` would, and stops at the first failure.
func (s *Server) Apply(ctx context.Context, manifests []Manifest, o ApplyOptions) error {
	id := o.Identity
	if id.User == "" {
		id = Admin
	}
	cfg, err := s.RESTConfig(id)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client for %s: %w", s.url, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("discovery client for %s: %w", s.url, err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	for _, m := range manifests {
		if err := apply(ctx, dyn, mapper, m, o.DryRun); err != nil {
			return err
		}
	}
	return nil
}

func apply(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, m Manifest, dryRun bool) error {
	u := m.Object.DeepCopy()
	m = Manifest{File: m.File, Object: u} // error messages show what was sent
	gvk := u.GroupVersionKind()
	mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: the server does not serve this kind: %w", m, err)
	}
	var ri dynamic.ResourceInterface
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = dyn.Resource(mapping.Resource).Namespace(u.GetNamespace())
	} else {
		// A cluster-scoped kind has no namespace.
		u.SetNamespace("")
		ri = dyn.Resource(mapping.Resource)
	}
	body, err := json.Marshal(u.Object)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", m, err)
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts); err != nil {
		return fmt.Errorf("server-side apply (dry run: %v) of %s: %w", dryRun, m, err)
	}
	return nil
}

// ApplyDeploy applies wgmesh's own kustomize base (deploy/kubernetes, as
// compiled into the deploy package): namespace, service account, RBAC,
// DaemonSet (inert without a controller manager) and the admission policy
// that confines each agent to its own Node. Policies take effect
// asynchronously; callers that depend on one must wait for it.
func (s *Server) ApplyDeploy(ctx context.Context) error {
	manifests, err := RenderDeploy(deploy.Base, deploy.Overlay{})
	if err != nil {
		return fmt.Errorf("render the wgmesh base: %w", err)
	}
	return s.Apply(ctx, manifests, ApplyOptions{})
}
