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

// Resources finds the dynamic client's resource for an object, as
// kubectl's REST mapping does, for one identity. Discovery is cached for
// the Resources' life.
type Resources struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

// Resources returns a mapper acting as id (zero: Admin).
func (s *Server) Resources(id Identity) (*Resources, error) {
	if id.User == "" {
		id = Admin
	}
	cfg, err := s.RESTConfig(id)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client for %s: %w", s.url, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client for %s: %w", s.url, err)
	}
	return &Resources{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// For returns the resource interface for u and whether its kind is
// namespaced: by u's namespace for a namespaced kind, cluster-wide
// otherwise. The error says when the server does not serve the kind.
func (r *Resources) For(u *unstructured.Unstructured) (ri dynamic.ResourceInterface, namespaced bool, err error) {
	gvk := u.GroupVersionKind()
	mapping, err := r.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, false, fmt.Errorf("the server does not serve this kind: %w", err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return r.dyn.Resource(mapping.Resource).Namespace(u.GetNamespace()), true, nil
	}
	return r.dyn.Resource(mapping.Resource), false, nil
}

// Apply server-side-applies the manifests in order, as `kubectl apply
// --server-side --force-conflicts` would, and stops at the first failure.
func (s *Server) Apply(ctx context.Context, manifests []Manifest, o ApplyOptions) error {
	rs, err := s.Resources(o.Identity)
	if err != nil {
		return err
	}
	for _, m := range manifests {
		if err := apply(ctx, rs, m, o.DryRun); err != nil {
			return err
		}
	}
	return nil
}

func apply(ctx context.Context, rs *Resources, m Manifest, dryRun bool) error {
	u := m.Object.DeepCopy()
	m = Manifest{File: m.File, Object: u} // error messages show what was sent
	ri, namespaced, err := rs.For(u)
	if err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	if !namespaced {
		// A cluster-scoped kind has no namespace.
		u.SetNamespace("")
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
