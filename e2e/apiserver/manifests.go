package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

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

// kustomization is the subset of kustomize's Kustomization the wgmesh base
// uses. Unknown fields are an error, so a feature added to the base cannot
// be silently ignored by the tests and the demo.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

// LoadKustomization reads dir/kustomization.yaml from fsys and returns its
// resources' objects in order, with the kustomization's namespace, labels and
// images applied the way `kubectl apply -k` would (kubectl is not available
// on test machines). Only local files are supported as resources. The
// namespace is set on every object; Apply removes it again from
// cluster-scoped kinds, which only the server's REST mapping can tell apart.
func LoadKustomization(fsys fs.FS, dir string) ([]Manifest, error) {
	kpath := path.Join(dir, "kustomization.yaml")
	data, err := fs.ReadFile(fsys, kpath)
	if err != nil {
		return nil, fmt.Errorf("read kustomization: %w", err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		return nil, fmt.Errorf("%s: uses kustomize features the e2e loader does not implement: %w", kpath, err)
	}
	if len(k.Resources) == 0 {
		return nil, fmt.Errorf("%s: no resources", kpath)
	}
	for _, l := range k.Labels {
		if l.IncludeSelectors {
			return nil, fmt.Errorf("%s: labels with includeSelectors are not implemented by the e2e loader", kpath)
		}
	}
	var out []Manifest
	for _, res := range k.Resources {
		if !fs.ValidPath(path.Join(dir, res)) || strings.Contains(res, "://") {
			return nil, fmt.Errorf("%s: resource %q is not a file inside the base (the e2e loader supports only local files)", kpath, res)
		}
		file := path.Join(dir, res)
		raw, err := fs.ReadFile(fsys, file)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %q (the e2e loader supports only local files): %w", kpath, res, err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("decode %s: %w", file, err)
			}
			if len(obj) == 0 {
				continue // empty document between separators
			}
			u := &unstructured.Unstructured{Object: obj}
			if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
				return nil, fmt.Errorf("%s: object without apiVersion, kind or metadata.name", file)
			}
			if err := k.transform(u); err != nil {
				return nil, fmt.Errorf("%s: %s %s: %w", file, u.GetKind(), u.GetName(), err)
			}
			out = append(out, Manifest{File: file, Object: u})
		}
	}
	return out, nil
}

// transform applies the kustomization's namespace, labels and images.
func (k *kustomization) transform(u *unstructured.Unstructured) error {
	if k.Namespace != "" {
		u.SetNamespace(k.Namespace)
	}
	if len(k.Labels) > 0 {
		labels := u.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		for _, l := range k.Labels {
			for key, v := range l.Pairs {
				labels[key] = v
			}
		}
		u.SetLabels(labels)
	}
	for _, img := range k.Images {
		for _, field := range []string{"containers", "initContainers"} {
			cs, found, err := unstructured.NestedSlice(u.Object, "spec", "template", "spec", field)
			if err != nil || !found {
				continue
			}
			for i, c := range cs {
				cm, ok := c.(map[string]any)
				if !ok {
					continue
				}
				image, _ := cm["image"].(string)
				name, tag, _ := strings.Cut(image, ":")
				if name != img.Name {
					continue
				}
				if img.NewName != "" {
					name = img.NewName
				}
				if img.NewTag != "" {
					tag = img.NewTag
				}
				if tag != "" {
					name += ":" + tag
				}
				cm["image"] = name
				cs[i] = cm
			}
			if err := unstructured.SetNestedSlice(u.Object, cs, "spec", "template", "spec", field); err != nil {
				return fmt.Errorf("set images: %w", err)
			}
		}
	}
	return nil
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
		// kustomize namespaces only namespaced kinds.
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
	manifests, err := LoadKustomization(deploy.Kubernetes, "kubernetes")
	if err != nil {
		return fmt.Errorf("load the wgmesh base: %w", err)
	}
	return s.Apply(ctx, manifests, ApplyOptions{})
}
