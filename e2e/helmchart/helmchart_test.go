package helmchart

import (
	"bytes"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/deploy/monitoring"
)

// TestBaseIsGenerated is the one-source-of-truth check: every file of the
// committed kustomize base must be what `make manifests` writes now.
func TestBaseIsGenerated(t *testing.T) {
	want, err := Base()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range want {
		got, err := deploy.Kubernetes.ReadFile(deploy.Base + "/" + name)
		if err != nil {
			t.Errorf("deploy/kubernetes/%s: missing (%v): run make manifests", name, err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("deploy/kubernetes/%s differs from the Helm chart rendered with its default values: run make manifests\n(-committed +chart):\n%s",
				name, cmp.Diff(string(got), string(data)))
		}
	}
	committed, err := fs.Glob(deploy.Kubernetes, deploy.Base+"/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range committed {
		if _, ok := want[path.Base(f)]; !ok {
			t.Errorf("deploy/%s is not rendered by the chart: run make manifests (it removes it)", f)
		}
	}
}

// TestChartAlertsAreTheMonitoringRules: the PrometheusRule's source in the
// chart is byte for byte the rule file promtool tests.
func TestChartAlertsAreTheMonitoringRules(t *testing.T) {
	for name, want := range ChartFiles() {
		got, err := deploy.Chart.ReadFile(deploy.ChartDir + "/" + name)
		if err != nil {
			t.Fatalf("deploy/%s/%s: %v: run make manifests", deploy.ChartDir, name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("deploy/%s/%s differs from deploy/monitoring/%s: run make manifests", deploy.ChartDir, name, monitoring.RulesFile)
		}
	}
}

// decoded is one rendered object, decoded strictly into its client-go type.
type decoded struct {
	template string
	obj      runtime.Object
}

// decodeStrict decodes every rendered manifest into client-go's types,
// refusing unknown and duplicate fields; kinds client-go does not know
// (the Prometheus Operator's) come back as unstructured.
func decodeStrict(t *testing.T, out map[string]string) []decoded {
	t.Helper()
	codec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	var res []decoded
	names := make([]string, 0, len(out))
	for n := range out {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		if path.Ext(name) != ".yaml" {
			continue
		}
		for i, doc := range strings.Split(out[name], "\n---\n") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, _, err := codec.Decode([]byte(doc), nil, nil)
			if runtime.IsNotRegisteredError(err) {
				u := &unstructured.Unstructured{}
				j, jerr := yaml.YAMLToJSONStrict([]byte(doc))
				if jerr != nil {
					t.Fatalf("%s: document %d: %v", name, i, jerr)
				}
				if err := u.UnmarshalJSON(j); err != nil {
					t.Fatalf("%s: document %d: %v", name, i, err)
				}
				obj = u
			} else if err != nil {
				t.Fatalf("%s: document %d: strict decode: %v\n%s", name, i, err, doc)
			}
			res = append(res, decoded{name, obj})
		}
	}
	return res
}

func kinds(ds []decoded) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.obj.GetObjectKind().GroupVersionKind().Kind)
	}
	slices.Sort(out)
	return out
}

func find[T runtime.Object](t *testing.T, ds []decoded) T {
	t.Helper()
	var found []T
	for _, d := range ds {
		if o, ok := d.obj.(T); ok {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want one %T, found %d", zero, len(found))
	}
	return found[0]
}

func findKind(ds []decoded, kind string) *unstructured.Unstructured {
	for _, d := range ds {
		if u, ok := d.obj.(*unstructured.Unstructured); ok && u.GetKind() == kind {
			return u
		}
	}
	return nil
}

func renderT(t *testing.T, o Options) []decoded {
	t.Helper()
	out, err := Render(o)
	if err != nil {
		t.Fatalf("render with %v: %v", o.Values, err)
	}
	return decodeStrict(t, out)
}

// values parses a values file as `helm --values` does.
func values(t *testing.T, s string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValues([]byte(s))
	if err != nil {
		t.Fatalf("values %q: %v", s, err)
	}
	return v
}

func TestRenderDefaults(t *testing.T) {
	ds := renderT(t, Options{})
	wantKinds := []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "ServiceAccount",
		"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
	if diff := cmp.Diff(wantKinds, kinds(ds)); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}
	ds0 := find[*appsv1.DaemonSet](t, ds)
	if ds0.Name != "wgmesh" || ds0.Namespace != deploy.Namespace {
		t.Errorf("DaemonSet %s/%s, want wgmesh/wgmesh", ds0.Namespace, ds0.Name)
	}
	// A real release carries Helm's labels; the pod selector only the name.
	wantLabels := map[string]string{
		"app.kubernetes.io/name": "wgmesh", "app.kubernetes.io/part-of": "wgmesh",
		"app.kubernetes.io/instance": "wgmesh", "app.kubernetes.io/managed-by": "Helm",
		"app.kubernetes.io/version": "dev", "helm.sh/chart": "wgmesh-0.1.0",
	}
	for _, d := range ds {
		m := d.obj.(interface{ GetLabels() map[string]string })
		if diff := cmp.Diff(wantLabels, m.GetLabels(), cmpIgnoreKey("pod-security.kubernetes.io/enforce")); diff != "" {
			t.Errorf("%s: labels (-want +got):\n%s", d.template, diff)
		}
	}
	if diff := cmp.Diff(map[string]string{"app.kubernetes.io/name": "wgmesh"}, ds0.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	c := ds0.Spec.Template.Spec.Containers[0]
	if c.Image != deploy.Image {
		t.Errorf("image %q, want the placeholder %s", c.Image, deploy.Image)
	}
	for _, a := range []string{"--listen-port=51822", "--backend=auto", "--metrics-addr=:9587", "--log-format=json"} {
		if !slices.Contains(c.Args, a) {
			t.Errorf("args %q lack %s", c.Args, a)
		}
	}
	vap := find[*admissionv1.ValidatingAdmissionPolicy](t, ds)
	if got := vap.Spec.MatchConditions[0].Expression; got != "request.userInfo.username == 'system:serviceaccount:wgmesh:wgmesh'" {
		t.Errorf("admission policy matches %s, want the wgmesh/wgmesh service account", got)
	}
}

// cmpIgnoreKey drops one map key from a label comparison.
func cmpIgnoreKey(k string) cmp.Option {
	return cmp.FilterPath(func(p cmp.Path) bool {
		mi, ok := p.Last().(cmp.MapIndex)
		return ok && mi.Key().String() == k
	}, cmp.Ignore())
}

func TestBaseHasNoHelmLabels(t *testing.T) {
	base, err := Base()
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range base {
		for _, l := range []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"} {
			if bytes.Contains(data, []byte(l)) {
				t.Errorf("base %s carries %s: kubectl apply -k leaves no Helm release", name, l)
			}
		}
	}
}

func TestRenderNonDefaultValues(t *testing.T) {
	ds := renderT(t, Options{Name: "mesh", Namespace: "net-system", Values: values(t, `
image: {repository: registry.example/wgmesh, tag: v1.2.3, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
namespace: {create: false}
agent:
  backend: userspace
  listenPort: 40000
  mtu: 1380
  allowUnencrypted: true
  unmanagedNodes: kubernetes.io/os=windows
  hostEncryption: true
  ipv4: true
  ipv6: false
  clusterCIDRs: [10.244.0.0/16]
  routeTable: 4294967295
  hostRouteTable: 7000
  rulePriority: 500
  fwmark: "0x40000"
  keepalive: 25s
  logFormat: text
  logLevel: debug
  extraArgs: ["--offloads=false"]
metrics:
  address: $(HOST_IP)
  port: 9600
  podAnnotations: false
  podMonitor: {enabled: true, interval: 15s, labels: {release: prom}}
  prometheusRule: {enabled: true, labels: {release: prom}}
admissionPolicy: {enabled: false}
nodeSelector: {wgmesh: "yes"}
tolerations: [{key: dedicated, operator: Equal, value: net, effect: NoSchedule}]
priorityClassName: ""
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 1Gi}}
podAnnotations: {a: b}
podLabels: {team: net}
`)})
	wantKinds := []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "PodMonitor", "PrometheusRule", "ServiceAccount"}
	if diff := cmp.Diff(wantKinds, kinds(ds)); diff != "" {
		t.Errorf("kinds (-want +got): no Namespace, no admission policy, a PodMonitor and a PrometheusRule\n%s", diff)
	}
	d := find[*appsv1.DaemonSet](t, ds)
	if d.Name != "mesh-wgmesh" || d.Namespace != "net-system" {
		t.Errorf("DaemonSet %s/%s, want net-system/mesh-wgmesh", d.Namespace, d.Name)
	}
	spec := d.Spec.Template.Spec
	c := spec.Containers[0]
	wantArgs := []string{"agent", "--backend=userspace", "--listen-port=40000", "--mtu=1380", "--allow-unencrypted=true",
		"--unmanaged-nodes=kubernetes.io/os=windows", "--host-encryption=true", "--ipv4=true", "--ipv6=false",
		"--cluster-cidrs=10.244.0.0/16", "--route-table=4294967295", "--host-route-table=7000", "--rule-priority=500",
		"--fwmark=0x40000", "--keepalive=25s", "--metrics-addr=$(HOST_IP):9600", "--log-format=text", "--log-level=debug",
		"--offloads=false"}
	if diff := cmp.Diff(wantArgs, c.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	if c.Image != "registry.example/wgmesh:v1.2.3" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %s %s", c.Image, c.ImagePullPolicy)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 9600 {
		t.Errorf("ports %+v, want metrics on 9600", c.Ports)
	}
	if c.Resources.Limits.Memory().String() != "1Gi" || c.Resources.Requests.Cpu().String() != "100m" {
		t.Errorf("resources %+v", c.Resources)
	}
	if diff := cmp.Diff([]corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "net", Effect: corev1.TaintEffectNoSchedule}}, spec.Tolerations); diff != "" {
		t.Errorf("tolerations (-want +got):\n%s", diff)
	}
	// Helm merges maps with the defaults: kubernetes.io/os stays.
	if diff := cmp.Diff(map[string]string{"kubernetes.io/os": "linux", "wgmesh": "yes"}, spec.NodeSelector); diff != "" {
		t.Errorf("nodeSelector (-want +got):\n%s", diff)
	}
	if spec.PriorityClassName != "" || spec.ServiceAccountName != "mesh-wgmesh" ||
		len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("priorityClassName %q, serviceAccountName %q, imagePullSecrets %v", spec.PriorityClassName, spec.ServiceAccountName, spec.ImagePullSecrets)
	}
	if diff := cmp.Diff(map[string]string{"a": "b"}, d.Spec.Template.Annotations); diff != "" {
		t.Errorf("pod annotations (-want +got): no prometheus.io/ with metrics.podAnnotations false\n%s", diff)
	}
	if d.Spec.Template.Labels["team"] != "net" || d.Spec.Template.Labels["app.kubernetes.io/name"] != "wgmesh" {
		t.Errorf("pod labels %v", d.Spec.Template.Labels)
	}

	pm := findKind(ds, "PodMonitor")
	if pm.GetNamespace() != "net-system" || pm.GetLabels()["release"] != "prom" {
		t.Errorf("PodMonitor %s/%s labels %v", pm.GetNamespace(), pm.GetName(), pm.GetLabels())
	}
	eps, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	sel, _, _ := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	if diff := cmp.Diff([]any{map[string]any{"port": "metrics", "path": "/metrics", "interval": "15s"}}, eps); diff != "" {
		t.Errorf("PodMonitor endpoints (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(d.Spec.Selector.MatchLabels, sel); diff != "" {
		t.Errorf("PodMonitor selector vs DaemonSet selector (-ds +pm):\n%s", diff)
	}
	pr := findKind(ds, "PrometheusRule")
	if pr.GetLabels()["release"] != "prom" {
		t.Errorf("PrometheusRule labels %v", pr.GetLabels())
	}
}

// TestPrometheusRuleIsTheAlerts: the PrometheusRule carries exactly the
// groups of deploy/monitoring/alerts.yaml, annotations with their
// Prometheus templates ({{ $value }}) untouched by Helm's engine.
func TestPrometheusRuleIsTheAlerts(t *testing.T) {
	ds := renderT(t, Options{Values: values(t, "metrics: {prometheusRule: {enabled: true}}")})
	pr := findKind(ds, "PrometheusRule")
	if pr == nil {
		t.Fatal("no PrometheusRule with metrics.prometheusRule.enabled")
	}
	var file map[string]any
	if err := yaml.Unmarshal(monitoring.Rules(), &file); err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedMap(pr.Object, "spec")
	if diff := cmp.Diff(file, spec); diff != "" {
		t.Errorf("PrometheusRule spec vs %s (-file +rule):\n%s", monitoring.RulesFile, diff)
	}
	alerts, err := monitoring.Alerts()
	if err != nil || len(alerts) == 0 {
		t.Fatalf("alerts: %v, %d", err, len(alerts))
	}
	if !strings.Contains(string(mustJSON(t, spec)), "{{ $value }}") {
		t.Error("the rules lost their Prometheus templates")
	}
	// Off by default, with the PodMonitor.
	if k := kinds(renderT(t, Options{})); slices.Contains(k, "PrometheusRule") || slices.Contains(k, "PodMonitor") {
		t.Errorf("default kinds %v: PodMonitor and PrometheusRule need the operator's CRDs and are off by default", k)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSchemaRejectsBadValues: values.schema.json refuses what the agent
// would refuse at start (or what is not a value of the chart at all), with a
// message naming the value and the reason.
func TestSchemaRejectsBadValues(t *testing.T) {
	for _, tt := range []struct {
		name, values string
		want         []string
	}{
		{"port too large", "agent: {listenPort: 70000}", []string{"/agent/listenPort", "maximum", "65,535"}},
		{"port zero", "agent: {listenPort: 0}", []string{"/agent/listenPort", "minimum"}},
		{"metrics port", "metrics: {port: -1}", []string{"/metrics/port", "minimum"}},
		{"MTU too small", "agent: {mtu: 100}", []string{"/agent/mtu", "want 576"}},
		{"MTU below IPv6's minimum", "agent: {mtu: 1000}", []string{"/agent/mtu", "1,280"}},
		{"unknown backend", "agent: {backend: wireguard}", []string{"/agent/backend", "auto", "userspace", "kernel"}},
		{"wrong type", `agent: {listenPort: "51822"}`, []string{"/agent/listenPort", "got string, want integer"}},
		{"wrong type bool", `agent: {allowUnencrypted: "yes"}`, []string{"/agent/allowUnencrypted", "want boolean"}},
		{"misspelt key", "agent: {listenport: 1}", []string{"/agent", "listenport", "additional properties"}},
		{"no family", "agent: {ipv4: false, ipv6: false}", []string{"/agent/ipv6", "value must be true"}},
		{"kernel table", "agent: {routeTable: 254}", []string{"/agent/routeTable", "want 252", "want 256"}},
		{"rule priority", "agent: {rulePriority: 1}", []string{"/agent/rulePriority", "minimum"}},
		{"fwmark not a number", "agent: {fwmark: mark}", []string{"/agent/fwmark"}},
		{"keepalive", "agent: {keepalive: soon}", []string{"/agent/keepalive"}},
		{"log level", "agent: {logLevel: trace}", []string{"/agent/logLevel"}},
		{"pull policy", "image: {pullPolicy: Sometimes}", []string{"/image/pullPolicy"}},
		{"empty image", `image: {repository: ""}`, []string{"/image/repository"}},
		{"extra arg not a flag", "agent: {extraArgs: [offloads]}", []string{"/agent/extraArgs/0"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(Options{Values: values(t, tt.values)})
			if err == nil {
				t.Fatalf("values %s rendered; want a schema error", tt.values)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("values %s: error %q lacks %q", tt.values, err, w)
				}
			}
			t.Logf("%s: %v", tt.values, err)
		})
	}
	// The boundaries themselves are accepted.
	for _, ok := range []string{"agent: {listenPort: 1}", "agent: {listenPort: 65535, mtu: 1280}", "agent: {ipv6: false, mtu: 576}",
		"agent: {keepalive: 25}", "agent: {routeTable: 1, hostRouteTable: 4294967295}", "agent: {fwmark: 0x2000}"} {
		if _, err := Render(Options{Values: values(t, ok)}); err != nil {
			t.Errorf("values %s: %v", ok, err)
		}
	}
}

// TestLint runs Helm's own linter (what `helm lint` runs: Chart.yaml,
// values against the schema, every template rendered and parsed as YAML,
// dependencies) on the chart as shipped, with default and non-default
// values; anything above INFO fails.
func TestLint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wgmesh")
	if err := os.CopyFS(dir, mustSub(t)); err != nil {
		t.Fatal(err)
	}
	for _, vals := range []string{"", "metrics: {podMonitor: {enabled: true}, prometheusRule: {enabled: true}}\nadmissionPolicy: {enabled: false}\nnamespace: {create: false}"} {
		l := lint.All(dir, values(t, vals), deploy.Namespace, false)
		for _, m := range l.Messages {
			t.Logf("lint (values %q): %s", vals, m)
			if m.Severity > support.InfoSev {
				t.Errorf("lint (values %q): %s", vals, m)
			}
		}
	}
	// The linter does fail a broken chart (so the loop above can fail).
	if err := os.WriteFile(filepath.Join(dir, "templates", "broken.yaml"), []byte("{{ .Values.nope.deeper }}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l := lint.All(dir, nil, deploy.Namespace, false); l.HighestSeverity < support.ErrorSev {
		t.Errorf("lint of a broken template: highest severity %d, want an error: %v", l.HighestSeverity, l.Messages)
	}
}

func mustSub(t *testing.T) fs.FS {
	t.Helper()
	sub, err := fs.Sub(deploy.Chart, deploy.ChartDir)
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// TestNotes: NOTES.txt warns about the placeholder image until one is set,
// and names the port to open.
func TestNotes(t *testing.T) {
	for _, tt := range []struct {
		values      string
		warn        bool
		port, rollo string
	}{
		{"", true, "UDP 51822", "daemonset/wgmesh"},
		{"image: {repository: registry.example/wgmesh}\nagent: {listenPort: 40000}", false, "UDP 40000", "daemonset/wgmesh"},
	} {
		out, err := Render(Options{Values: values(t, tt.values)})
		if err != nil {
			t.Fatal(err)
		}
		notes := out["templates/NOTES.txt"]
		if strings.Contains(notes, "WARNING: image.repository is the placeholder") != tt.warn ||
			!strings.Contains(notes, tt.port) || !strings.Contains(notes, tt.rollo) {
			t.Errorf("values %q: NOTES.txt:\n%s", tt.values, notes)
		}
	}
}

// TestOtherReleaseKeepsThePolicyOnItsAgent: under another release name and
// namespace the objects are renamed together, and the admission policy
// still matches the agent's service account (and only it).
func TestOtherReleaseKeepsThePolicyOnItsAgent(t *testing.T) {
	ds := renderT(t, Options{Name: "mesh", Namespace: "net-system"})
	sa := find[*corev1.ServiceAccount](t, ds)
	d := find[*appsv1.DaemonSet](t, ds)
	vap := find[*admissionv1.ValidatingAdmissionPolicy](t, ds)
	bind := find[*admissionv1.ValidatingAdmissionPolicyBinding](t, ds)
	ns := find[*corev1.Namespace](t, ds)
	if sa.Name != "mesh-wgmesh" || sa.Namespace != "net-system" || d.Spec.Template.Spec.ServiceAccountName != sa.Name || ns.Name != "net-system" {
		t.Errorf("service account %s/%s, DaemonSet uses %q, namespace %s", sa.Namespace, sa.Name, d.Spec.Template.Spec.ServiceAccountName, ns.Name)
	}
	if want := "request.userInfo.username == 'system:serviceaccount:net-system:mesh-wgmesh'"; vap.Spec.MatchConditions[0].Expression != want {
		t.Errorf("policy matches %s, want %s", vap.Spec.MatchConditions[0].Expression, want)
	}
	if bind.Spec.PolicyName != vap.Name || vap.Name != "mesh-wgmesh-own-node-annotations" {
		t.Errorf("binding %s names policy %s", bind.Name, bind.Spec.PolicyName)
	}
	// fullnameOverride wins.
	d = find[*appsv1.DaemonSet](t, renderT(t, Options{Name: "mesh", Values: values(t, "fullnameOverride: wgmesh")}))
	if d.Name != "wgmesh" {
		t.Errorf("fullnameOverride: DaemonSet %s", d.Name)
	}
}
