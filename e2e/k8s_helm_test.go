package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/helmchart"
)

// promOperatorModule holds the Prometheus Operator's CRDs
// (example/prometheus-operator-crd) as the project publishes them; the Go
// module proxy serves the repository's tree, so the lab installs the
// operator's own CRD files rather than a copy kept here.
const (
	promOperatorModule = "github.com/prometheus-operator/prometheus-operator@v0.80.1"
	promOperatorCRDs   = "example/prometheus-operator-crd"
)

// helmPromCRDs fetches the PodMonitor and PrometheusRule CRDs from
// promOperatorModule (`go mod download`, the module cache) and decodes them.
func helmPromCRDs(t *testing.T, ctx context.Context) []apiserver.Manifest {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	out, err := exec.CommandContext(ctx, goTool, "mod", "download", "-json", promOperatorModule).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s %s", err, ee.Stderr, out)
		}
		t.Fatalf("go mod download %s: %v", promOperatorModule, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", promOperatorModule, err, mod.Error)
	}
	var ms []apiserver.Manifest
	for _, f := range []string{"monitoring.coreos.com_podmonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"} {
		p := filepath.Join(mod.Dir, promOperatorCRDs, f)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		ms = append(ms, apiserver.Manifest{File: promOperatorModule + "/" + promOperatorCRDs + "/" + f, Object: u})
	}
	return ms
}

// helmDryRun sends each object as `kubectl apply --server-side
// --dry-run=server --validate=strict` would (a real apply for a Namespace,
// which a dry run would not persist for the objects after it): defaulting,
// schema and CRD validation with unknown fields refused, admission, nothing
// stored. Every failure is reported.
func helmDryRun(t *testing.T, ctx context.Context, s *apiserver.Server, objs []*unstructured.Unstructured) {
	t.Helper()
	rs, err := s.Resources(apiserver.Admin)
	if err != nil {
		t.Fatal(err)
	}
	force := true
	for _, u := range objs {
		ri, namespaced, err := rs.For(u)
		if err != nil {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
			continue
		}
		if !namespaced && u.GetNamespace() != "" {
			t.Errorf("%s %s: cluster-scoped but rendered with namespace %q", u.GetKind(), u.GetName(), u.GetNamespace())
		}
		body, err := json.Marshal(u.Object)
		if err != nil {
			t.Fatal(err)
		}
		opts := metav1.PatchOptions{FieldManager: apiserver.FieldManager, Force: &force, FieldValidation: "Strict"}
		if u.GetKind() != "Namespace" {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts); err != nil {
			t.Errorf("server-side apply (dry run: %v) of %s %s/%s: %v", opts.DryRun != nil, u.GetKind(), u.GetNamespace(), u.GetName(), err)
			continue
		}
		t.Logf("accepted (dry run: %v): %s %s/%s", opts.DryRun != nil, u.GetKind(), u.GetNamespace(), u.GetName())
	}
}

// TestK8sHelmChartDryRun renders the Helm chart with the Helm SDK (as `helm
// template` does) for its default values and for a release that changes
// nearly every value, with the PodMonitor and PrometheusRule on, and has the
// real kube-apiserver check every object: server-side apply, dry run, strict
// field validation. The Prometheus Operator's CRDs, from the operator's own
// module, are installed first so that those two kinds are validated against
// the operator's schema. Nothing but the namespaces and CRDs is persisted.
func TestK8sHelmChartDryRun(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	crds := helmPromCRDs(t, ctx)
	if err := s.Apply(ctx, crds, apiserver.ApplyOptions{}); err != nil {
		t.Fatalf("install the Prometheus Operator's CRDs: %v", err)
	}
	// A CRD is served once established; discovery shows it then.
	probe := &unstructured.Unstructured{}
	for _, gvk := range []string{"PodMonitor", "PrometheusRule"} {
		probe.SetAPIVersion("monitoring.coreos.com/v1")
		probe.SetKind(gvk)
		probe.SetNamespace("default")
		deadline := time.Now().Add(2 * time.Minute)
		for {
			rs, err := s.Resources(apiserver.Admin)
			if err == nil {
				_, _, err = rs.For(probe)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD for %s not served after 2 min: %v", gvk, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	for _, tc := range []struct {
		name   string
		opts   helmchart.Options
		values string
		kinds  int
	}{
		{"defaults", helmchart.Options{}, "image: {repository: registry.example/wgmesh, tag: v0.0.0-e2e}", 7},
		{"non-default", helmchart.Options{Name: "mesh", Namespace: "net-system"}, `
image: {repository: registry.example/wgmesh, tag: v0.0.0-e2e, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
agent: {backend: userspace, listenPort: 40000, mtu: 1380, allowUnencrypted: true, unmanagedNodes: "kubernetes.io/os=windows",
  hostEncryption: true, ipv6: false, clusterCIDRs: [10.244.0.0/16], routeTable: 7000, hostRouteTable: 7001,
  rulePriority: 500, fwmark: "0x40000", keepalive: 25s, logFormat: text, logLevel: debug, extraArgs: ["--offloads=false"]}
metrics: {address: $(HOST_IP), port: 9600, podAnnotations: false,
  podMonitor: {enabled: true, interval: 15s, labels: {release: prom}}, prometheusRule: {enabled: true, labels: {release: prom}}}
admissionPolicy: {enabled: false}
nodeSelector: {wgmesh: "yes"}
tolerations: [{key: dedicated, operator: Equal, value: net, effect: NoSchedule}]
priorityClassName: ""
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 1Gi}}
podAnnotations: {a: b}
podLabels: {team: net}
`, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var vals map[string]any
			if err := yaml.Unmarshal([]byte(tc.values), &vals); err != nil {
				t.Fatal(err)
			}
			tc.opts.Values = vals
			objs, err := helmchart.Objects(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != tc.kinds {
				var ks []string
				for _, u := range objs {
					ks = append(ks, u.GetKind())
				}
				t.Errorf("%d objects %v, want %d", len(objs), ks, tc.kinds)
			}
			helmDryRun(t, ctx, s, objs)
			// A dry run persists nothing.
			admin := k8sClient(t, s, apiserver.Admin)
			ns := tc.opts.Namespace
			if ns == "" {
				ns = "wgmesh"
			}
			l, err := admin.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Items) != 0 {
				t.Errorf("DaemonSets in %s after a dry run: %d", ns, len(l.Items))
			}
		})
	}

	// The check can fail: a field the API does not know is refused.
	objs, err := helmchart.Objects(helmchart.Options{Values: map[string]any{"metrics": map[string]any{"podMonitor": map[string]any{"enabled": true}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		if u.GetKind() != "PodMonitor" {
			continue
		}
		bad := u.DeepCopy()
		if err := unstructured.SetNestedField(bad.Object, "30s", "spec", "scrapeIntervall"); err != nil {
			t.Fatal(err)
		}
		rs, err := s.Resources(apiserver.Admin)
		if err != nil {
			t.Fatal(err)
		}
		ri, _, err := rs.For(bad)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(bad.Object)
		force := true
		_, err = ri.Patch(ctx, bad.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: apiserver.FieldManager,
			Force: &force, FieldValidation: "Strict", DryRun: []string{metav1.DryRunAll}})
		if err == nil || !apierrors.IsBadRequest(err) && !strings.Contains(err.Error(), "scrapeIntervall") {
			t.Errorf("PodMonitor with an unknown field: %v; want it refused, naming the field", err)
		} else {
			t.Logf("refused as it should be: %v", err)
		}
	}
}
