package apiserver

import (
	"strings"
	"testing"
	"testing/fstest"

	"github.com/wgmesh/wgmesh/deploy"
)

func TestLoadKustomizationTransforms(t *testing.T) {
	fsys := fstest.MapFS{
		"base/kustomization.yaml": {Data: []byte(`
namespace: wgmesh
resources: [a.yaml]
labels:
  - pairs: {app: wgmesh}
images:
  - name: wgmesh/wgmesh
    newTag: v1
`)},
		"base/a.yaml": {Data: []byte(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: other, labels: {keep: "yes"}}
---
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  template:
    spec:
      containers:
        - {name: agent, image: "wgmesh/wgmesh:latest"}
        - {name: other, image: "busybox"}
`)},
	}
	ms, err := LoadKustomization(fsys, "base")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 {
		t.Fatalf("got %d objects, want 2 (empty documents skipped)", len(ms))
	}
	sa, ds := ms[0].Object, ms[1].Object
	if sa.GetNamespace() != "wgmesh" || ds.GetNamespace() != "wgmesh" {
		t.Errorf("namespaces %q %q, want wgmesh (kustomize overrides)", sa.GetNamespace(), ds.GetNamespace())
	}
	if l := sa.GetLabels(); l["app"] != "wgmesh" || l["keep"] != "yes" {
		t.Errorf("labels %v, want app=wgmesh added to keep=yes", l)
	}
	cs := ds.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
	if got := cs[0].(map[string]any)["image"]; got != "wgmesh/wgmesh:v1" {
		t.Errorf("agent image %v, want wgmesh/wgmesh:v1", got)
	}
	if got := cs[1].(map[string]any)["image"]; got != "busybox" {
		t.Errorf("other image %v, want busybox unchanged", got)
	}
	if ms[0].File != "base/a.yaml" {
		t.Errorf("file %q, want base/a.yaml", ms[0].File)
	}
}

func TestLoadKustomizationRejects(t *testing.T) {
	for name, k := range map[string]string{
		"unknown field":     "resources: [a.yaml]\npatches: []\n",
		"no resources":      "namespace: x\n",
		"remote resource":   "resources: [https://example.invalid/x.yaml]\n",
		"escaping resource": "resources: [../a.yaml]\n",
		"missing file":      "resources: [missing.yaml]\n",
		"select labels":     "resources: [a.yaml]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n",
	} {
		t.Run(name, func(t *testing.T) {
			fsys := fstest.MapFS{
				"b/kustomization.yaml": {Data: []byte(k)},
				"b/a.yaml":             {Data: []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")},
			}
			if _, err := LoadKustomization(fsys, "b"); err == nil {
				t.Errorf("no error for %q", k)
			} else if !strings.Contains(err.Error(), "b/") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// The compiled-in base must load: ApplyDeploy depends on it.
func TestLoadKustomizationDeployBase(t *testing.T) {
	ms, err := LoadKustomization(deploy.Kubernetes, "kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, m := range ms {
		kinds[m.Object.GetKind()] = true
	}
	for _, want := range []string{"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if !kinds[want] {
			t.Errorf("deploy base has no %s", want)
		}
	}
}

func FuzzLoadKustomization(f *testing.F) {
	f.Add([]byte("namespace: n\nresources: [a.yaml]\n"), []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"))
	f.Add([]byte("resources: [a.yaml]\nimages: [{name: x, newTag: y}]\n"), []byte("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec: {template: {spec: {containers: [{image: x}]}}}\n"))
	f.Add([]byte("resources: [a.yaml]\nlabels: [{pairs: {a: b}}]\n"), []byte("{\"apiVersion\":\"v1\",\"kind\":\"X\",\"metadata\":{\"name\":\"a\",\"labels\":7}}"))
	f.Add([]byte("resources: [a.yaml]\n"), []byte("kind: [\n"))
	f.Fuzz(func(t *testing.T, k, a []byte) {
		fsys := fstest.MapFS{"b/kustomization.yaml": {Data: k}, "b/a.yaml": {Data: a}}
		ms, err := LoadKustomization(fsys, "b")
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.Object.GetKind() == "" || m.Object.GetName() == "" {
				t.Errorf("accepted an object without kind or name: %v", m.Object.Object)
			}
		}
	})
}
