package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
)

// k8sDeployDir is the kustomize base the e2e tests apply, relative to the e2e
// module (the test's working directory).
const k8sDeployDir = "../deploy/kubernetes"

// k8sFieldManager owns every field the e2e tests apply.
const k8sFieldManager = "wgmesh-e2e"

// k8sBuildTimeout bounds the one-time compile of kube-apiserver: minutes on an
// idle 2-core machine, many more when other builds share it.
const k8sBuildTimeout = 30 * time.Minute

// k8sStart builds (once, cached) and starts a private kube-apiserver on
// loopback for one test; it is stopped when the test ends.
func k8sStart(t *testing.T) *apiserver.Server {
	t.Helper()
	bctx, cancel := context.WithTimeout(context.Background(), k8sBuildTimeout)
	defer cancel()
	began := time.Now()
	bin, err := apiserver.Build(bctx)
	if err != nil {
		t.Fatalf("build kube-apiserver: %v", err)
	}
	t.Logf("measured: apiserver.Build returned after %v (%s)", time.Since(began).Round(time.Millisecond), bin)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := apiserver.Start(ctx, apiserver.Options{Dir: t.TempDir(), BinDir: bin})
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	return s
}

// k8sClient returns a typed client for id.
func k8sClient(t *testing.T, s *apiserver.Server, id apiserver.Identity) kubernetes.Interface {
	t.Helper()
	cfg, err := s.RESTConfig(id)
	if err != nil {
		t.Fatalf("client config for %s: %v", id.User, err)
	}
	return k8sClientFor(t, cfg)
}

// k8sAgentClient returns a typed client acting as the wgmesh agent's service
// account on node.
func k8sAgentClient(t *testing.T, s *apiserver.Server, node string) kubernetes.Interface {
	t.Helper()
	cfg, err := s.RESTConfigImpersonating(apiserver.Agent(node))
	if err != nil {
		t.Fatalf("agent client config for node %s: %v", node, err)
	}
	return k8sClientFor(t, cfg)
}

func k8sClientFor(t *testing.T, cfg *rest.Config) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for %s: %v", cfg.Host, err)
	}
	return cs
}

// k8sKustomization is the subset of kustomize's Kustomization the wgmesh
// base uses. Anything else in the file makes k8sLoadManifests fail, so a
// feature added to the base cannot be silently ignored by the tests.
type k8sKustomization struct {
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

// k8sManifest is one object of the base and the file it came from.
type k8sManifest struct {
	File string
	Obj  *unstructured.Unstructured
}

func (m k8sManifest) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", m.Obj.GetKind(), m.Obj.GetNamespace(), m.Obj.GetName(), m.File)
}

// k8sLoadManifests reads the kustomization in dir and returns its resources'
// objects in order, with the kustomization's namespace, labels and image
// transformations applied the way `kubectl apply -k` would (kubectl is not
// available on test machines).
func k8sLoadManifests(t *testing.T, dir string) []k8sManifest {
	t.Helper()
	kpath := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(kpath)
	if err != nil {
		t.Fatalf("read kustomization: %v", err)
	}
	var k k8sKustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s: uses kustomize features the e2e loader does not implement (extend k8sKustomization): %v", kpath, err)
	}
	if len(k.Resources) == 0 {
		t.Fatalf("%s: no resources", kpath)
	}
	var out []k8sManifest
	for _, res := range k.Resources {
		file := filepath.Join(dir, res)
		fi, err := os.Stat(file)
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("%s: resource %q is not a local file (the e2e loader supports only files): %v", kpath, res, err)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("decode %s: %v", file, err)
			}
			if len(obj) == 0 {
				continue // empty document between separators
			}
			u := &unstructured.Unstructured{Object: obj}
			k8sKustomize(t, &k, u)
			out = append(out, k8sManifest{File: file, Obj: u})
		}
	}
	return out
}

// k8sKustomize applies the kustomization's transformations to one object.
// Namespacing is decided later by the server's REST mapping; here every
// object gets the namespace and cluster-scoped ones lose it again in
// k8sApply, as kustomize only namespaces namespaced kinds.
func k8sKustomize(t *testing.T, k *k8sKustomization, u *unstructured.Unstructured) {
	t.Helper()
	if k.Namespace != "" && u.GetNamespace() == "" {
		u.SetNamespace(k.Namespace)
	}
	for _, l := range k.Labels {
		if l.IncludeSelectors {
			t.Fatalf("kustomization labels with includeSelectors are not implemented by the e2e loader")
		}
		labels := u.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		for key, v := range l.Pairs {
			labels[key] = v
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
				t.Fatalf("set images of %s: %v", u.GetName(), err)
			}
		}
	}
}

// k8sApplier applies manifests with server-side apply through the dynamic
// client, the way `kubectl apply --server-side` does.
type k8sApplier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func k8sNewApplier(t *testing.T, s *apiserver.Server) *k8sApplier {
	t.Helper()
	cfg, err := s.RESTConfig(apiserver.Admin)
	if err != nil {
		t.Fatalf("admin client config: %v", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("dynamic client: %v", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatalf("discovery client: %v", err)
	}
	return &k8sApplier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// apply server-side-applies m; dryRun asks the server to run every stage
// (defaulting, validation, admission) without persisting.
func (a *k8sApplier) apply(ctx context.Context, m k8sManifest, dryRun bool) error {
	u := m.Obj.DeepCopy()
	gvk := u.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: the server does not serve this kind: %w", m, err)
	}
	var ri dynamic.ResourceInterface
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(mapping.Resource).Namespace(u.GetNamespace())
	} else {
		// kustomize namespaces only namespaced kinds.
		m.Obj.SetNamespace("")
		u.SetNamespace("")
		ri = a.dyn.Resource(mapping.Resource)
	}
	body, err := json.Marshal(u.Object)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", m, err)
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: k8sFieldManager, Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts); err != nil {
		return fmt.Errorf("server-side apply (dry run %v) of %s: %w", dryRun, m, err)
	}
	return nil
}

// k8sApplyDeploy applies the whole wgmesh base for real: namespace, service
// account, RBAC, DaemonSet (inert: no controller manager runs) and the
// admission policy.
func k8sApplyDeploy(t *testing.T, ctx context.Context, s *apiserver.Server) {
	t.Helper()
	a := k8sNewApplier(t, s)
	for _, m := range k8sLoadManifests(t, k8sDeployDir) {
		if err := a.apply(ctx, m, false); err != nil {
			t.Fatal(err)
		}
	}
}

// k8sNode describes a Node the tests create as the admin.
type k8sNode struct {
	Name        string
	PodCIDRs    []string
	InternalIP  string
	Annotations map[string]string
}

func k8sCreateNode(t *testing.T, ctx context.Context, cs kubernetes.Interface, n k8sNode) *corev1.Node {
	t.Helper()
	obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Annotations: n.Annotations}}
	if len(n.PodCIDRs) > 0 {
		obj.Spec.PodCIDR = n.PodCIDRs[0]
		obj.Spec.PodCIDRs = n.PodCIDRs
	}
	created, err := cs.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", n.Name, err)
	}
	if n.InternalIP != "" {
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.InternalIP}}
		if created, err = cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set InternalIP %s of node %s: %v", n.InternalIP, n.Name, err)
		}
	}
	return created
}

// k8sMergePatch builds a JSON merge patch body.
func k8sMergePatch(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode patch: %v", err)
	}
	return b
}

// k8sAnnotationPatch is a merge patch setting one annotation.
func k8sAnnotationPatch(t *testing.T, key, value string) []byte {
	return k8sMergePatch(t, map[string]any{"metadata": map[string]any{"annotations": map[string]string{key: value}}})
}

// k8sDeniedByPolicy reports whether err is the admission policy's denial (and
// not, say, RBAC's or a validation error).
func k8sDeniedByPolicy(err error) bool {
	return (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) &&
		strings.Contains(err.Error(), "ValidatingAdmissionPolicy")
}

// k8sWaitPolicyActive waits until the admission policy denies the agent on
// node `as` a (dry-run) change of another node's key: policies take effect
// asynchronously, after the admission plugin's informer has seen them.
func k8sWaitPolicyActive(t *testing.T, ctx context.Context, agent kubernetes.Interface, otherNode string) {
	t.Helper()
	patch := k8sAnnotationPatch(t, "wgmesh.io/public-key", "policy-probe")
	var last error
	err := k8sPoll(ctx, 90*time.Second, func() bool {
		_, last = agent.CoreV1().Nodes().Patch(ctx, otherNode, types.MergePatchType, patch,
			metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return k8sDeniedByPolicy(last)
	})
	if err != nil {
		t.Fatalf("admission policy never denied the agent changing node %s's key (last answer: %v): %v", otherNode, last, err)
	}
}

// k8sPoll calls cond every 100 ms until it returns true, ctx ends or
// timeout passes.
func k8sPoll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("condition not met within %v: %w", timeout, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
