package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// manifest is one decoded document and where it came from.
type manifest struct {
	file string
	obj  runtime.Object
}

// decodeAll decodes every document of every manifest of the base in dir
// strictly: unknown or duplicate fields are errors, so a typo such as
// "tolerration" fails here instead of being silently dropped by the API
// server.
func decodeAll(t *testing.T, dir string) []manifest {
	t.Helper()
	codec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	files, err := fs.Glob(Kubernetes, dir+"/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for _, f := range files {
		if path.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := Kubernetes.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			obj, gvk, err := codec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: document %d: strict decode: %v", f, i, err)
			}
			if gvk.Kind == "" || gvk.Version == "" {
				t.Fatalf("%s: document %d: no apiVersion/kind", f, i)
			}
			out = append(out, manifest{file: f, obj: obj})
		}
	}
	return out
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

func only[T runtime.Object](t *testing.T, ms []manifest) T {
	t.Helper()
	var found []T
	for _, m := range ms {
		if o, ok := m.obj.(T); ok {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T in the manifests, found %d", zero, len(found))
	}
	return found[0]
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	for _, dir := range []string{Base, UninstallBase} {
		data, err := Kubernetes.ReadFile(dir + "/kustomization.yaml")
		if err != nil {
			t.Fatal(err)
		}
		// Only these fields: the e2e loader and README's overlay rely on
		// nothing else, and a top-level namespace would be put on the
		// admission policy (see TestRenderedScopes).
		var k struct {
			APIVersion string   `json:"apiVersion"`
			Kind       string   `json:"kind"`
			Resources  []string `json:"resources"`
			Labels     []struct {
				Pairs            map[string]string `json:"pairs"`
				IncludeSelectors bool              `json:"includeSelectors"`
			} `json:"labels"`
		}
		if err := yaml.UnmarshalStrict(data, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		if k.Kind != "Kustomization" {
			t.Errorf("%s/kustomization.yaml: kind %q", dir, k.Kind)
		}
		files, _ := fs.Glob(Kubernetes, dir+"/*.yaml")
		var want []string
		for _, f := range files {
			if b := path.Base(f); b != "kustomization.yaml" {
				want = append(want, b)
			}
		}
		got := slices.Clone(k.Resources)
		sort.Strings(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: kustomization resources vs files (-files +resources):\n%s", dir, diff)
		}
	}
}

// scopes are the kinds the bases may contain and whether they are
// namespaced, as the API server serves them (kubectl api-resources).
var scopes = map[string]bool{
	"Namespace": false, "ClusterRole": false, "ClusterRoleBinding": false,
	"ValidatingAdmissionPolicy": false, "ValidatingAdmissionPolicyBinding": false,
	"ServiceAccount": true, "DaemonSet": true,
}

// TestRenderedScopes renders both bases the way `kubectl apply -k` does and
// checks that cluster-scoped objects carry no namespace (kustomize's schema
// does not know ValidatingAdmissionPolicy, and a kustomization-wide
// namespace ends up on it) and namespaced ones are in wgmesh's.
func TestRenderedScopes(t *testing.T) {
	for _, dir := range []string{Base, UninstallBase} {
		for _, o := range []Overlay{{}, {NewName: "registry.example/wgmesh", NewTag: "v9"}} {
			objs, err := Render(dir, o)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatalf("%s: rendered nothing", dir)
			}
			for _, u := range objs {
				namespaced, known := scopes[u.GetKind()]
				switch {
				case !known:
					t.Errorf("%s: %s %s: kind not in this test's scope table; add it", dir, u.GetKind(), u.GetName())
				case namespaced && u.GetNamespace() != Namespace:
					t.Errorf("%s: %s %s in namespace %q, want %q", dir, u.GetKind(), u.GetName(), u.GetNamespace(), Namespace)
				case !namespaced && u.GetNamespace() != "":
					t.Errorf("%s: cluster-scoped %s %s has namespace %q after kustomize", dir, u.GetKind(), u.GetName(), u.GetNamespace())
				}
			}
		}
	}
}

// TestRenderedImages: without an overlay every container runs the
// placeholder (which cannot be pulled); README's overlay replaces it in
// every container, init containers included.
func TestRenderedImages(t *testing.T) {
	for _, dir := range []string{Base, UninstallBase} {
		for _, c := range []struct {
			o    Overlay
			want string
		}{
			{Overlay{}, Image},
			{Overlay{NewName: "registry.example/team/wgmesh", NewTag: "v1.2.3"}, "registry.example/team/wgmesh:v1.2.3"},
			{Overlay{NewTag: "v2"}, Image + ":v2"},
		} {
			objs, err := Render(dir, c.o)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, u := range objs {
				for _, field := range []string{"containers", "initContainers"} {
					cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", field)
					for _, ci := range cs {
						img, _ := ci.(map[string]any)["image"].(string)
						n++
						if img != c.want {
							t.Errorf("%s with overlay %+v: %s %s: image %q, want %q", dir, c.o, u.GetKind(), u.GetName(), img, c.want)
						}
					}
				}
			}
			if n == 0 {
				t.Errorf("%s: no containers rendered", dir)
			}
		}
	}
}

func TestRBACIsMinimal(t *testing.T) {
	ms := decodeAll(t, Base)
	role := only[*rbacv1.ClusterRole](t, ms)
	// Exactly what DESIGN.md grants: nodes get/list/watch/patch, events
	// create/patch (core/v1 Events, which client-go's record package writes),
	// and get on the one ConfigMap kubeadm keeps the pod range in. A Role in
	// kube-system would be narrower, but the kustomization's namespace
	// would move it into wgmesh's.
	want := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"kubeadm-config"}, Verbs: []string{"get"}},
	}
	if diff := cmp.Diff(want, role.Rules); diff != "" {
		t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
	}
	for _, m := range ms {
		switch m.obj.(type) {
		case *rbacv1.Role, *rbacv1.RoleBinding:
			t.Errorf("%s: unexpected namespaced RBAC object %T", m.file, m.obj)
		}
	}
	bind := only[*rbacv1.ClusterRoleBinding](t, ms)
	if bind.RoleRef.Name != role.Name || bind.RoleRef.Kind != "ClusterRole" {
		t.Errorf("ClusterRoleBinding refers to %+v, want ClusterRole %s", bind.RoleRef, role.Name)
	}
	wantSubj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: ServiceAccount, Namespace: Namespace}}
	if diff := cmp.Diff(wantSubj, bind.Subjects); diff != "" {
		t.Errorf("ClusterRoleBinding subjects (-want +got):\n%s", diff)
	}
	sa := only[*corev1.ServiceAccount](t, ms)
	if sa.Name != ServiceAccount || sa.Namespace != Namespace {
		t.Errorf("ServiceAccount %s/%s, want %s/%s", sa.Namespace, sa.Name, Namespace, ServiceAccount)
	}
	ns := only[*corev1.Namespace](t, ms)
	if ns.Name != Namespace {
		t.Errorf("Namespace %s, want %s", ns.Name, Namespace)
	}
}

func TestDaemonSet(t *testing.T) {
	ms := decodeAll(t, Base)
	ds := only[*appsv1.DaemonSet](t, ms)
	spec := ds.Spec.Template.Spec
	if ds.Namespace != Namespace || spec.ServiceAccountName != ServiceAccount {
		t.Errorf("DaemonSet in %q with service account %q", ds.Namespace, spec.ServiceAccountName)
	}
	if !spec.HostNetwork {
		t.Error("DaemonSet: hostNetwork must be true (the agent programs the node's network namespace)")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy = %q", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q", spec.PriorityClassName)
	}
	if diff := cmp.Diff([]corev1.Toleration{{Operator: corev1.TolerationOpExists}}, spec.Tolerations); diff != "" {
		t.Errorf("tolerations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"kubernetes.io/os": "linux"}, spec.NodeSelector); diff != "" {
		t.Errorf("nodeSelector (-want +got):\n%s", diff)
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= 0 {
		t.Error("terminationGracePeriodSeconds unset")
	}
	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || us.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("updateStrategy = %+v, want RollingUpdate maxUnavailable 1", us)
	}
	sel := ds.Spec.Selector.MatchLabels
	for k, v := range sel {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template labels %v", k, v, ds.Spec.Template.Labels)
		}
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != Image {
		t.Errorf("image %q, want the placeholder %s (an overlay sets the real one)", c.Image, Image)
	}
	if len(c.Args) == 0 || c.Args[0] != "agent" {
		t.Errorf("args %v, want the agent command", c.Args)
	}

	// NODE_NAME is --node-name's default and must come from the scheduler.
	var nodeEnv *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeEnv = &c.Env[i]
		}
	}
	if nodeEnv == nil || nodeEnv.ValueFrom == nil || nodeEnv.ValueFrom.FieldRef == nil ||
		nodeEnv.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME env = %+v, want fieldRef spec.nodeName", nodeEnv)
	}
	// HOST_IP, for README's --metrics-addr=$(HOST_IP):9587.
	if i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "HOST_IP" }); i < 0 ||
		c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.FieldRef == nil || c.Env[i].ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("HOST_IP env missing or not fieldRef status.hostIP: %+v", c.Env)
	}

	// The probes must hit the paths and port the metrics server serves.
	metricsPort := metricsAddrPort(t, c.Args)
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(metricsPort) || ann["prometheus.io/path"] != metrics.PathMetrics {
		t.Errorf("pod annotations %v, want prometheus.io/ scrape, port %d and path %s", ann, metricsPort, metrics.PathMetrics)
	}
	if len(c.Ports) != 1 || int(c.Ports[0].ContainerPort) != metricsPort || c.Ports[0].Name != "metrics" {
		t.Errorf("ports %+v, want one named metrics on %d (from --metrics-addr)", c.Ports, metricsPort)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, metrics.PathHealthz}, {"readiness", c.ReadinessProbe, metrics.PathReadyz}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe missing or not httpGet", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe = %s on %s, want %s on metrics", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("resource requests %v, want cpu and memory", c.Resources.Requests)
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container is privileged; NET_ADMIN is all it needs")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0 (netlink and /dev/net/tun)")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("capabilities %+v, want drop ALL add NET_ADMIN", sc.Capabilities)
	}

	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	type hp struct {
		path     string
		typ      corev1.HostPathType
		readOnly bool
	}
	want := map[string]hp{
		"/var/lib/wgmesh":    {"/var/lib/wgmesh", corev1.HostPathDirectoryOrCreate, false},
		"/var/run/wireguard": {"/var/run/wireguard", corev1.HostPathDirectoryOrCreate, false},
		"/dev/net/tun":       {"/dev/net/tun", corev1.HostPathCharDev, false},
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for mountPath, w := range want {
		m, ok := mounts[mountPath]
		if !ok {
			t.Errorf("no volume mounted at %s", mountPath)
			continue
		}
		v := vols[m.Name]
		if v.HostPath == nil || v.HostPath.Path != w.path || v.HostPath.Type == nil || *v.HostPath.Type != w.typ {
			t.Errorf("volume %s at %s = %+v, want hostPath %s type %s", m.Name, mountPath, v.HostPath, w.path, w.typ)
		}
		if m.ReadOnly != w.readOnly {
			t.Errorf("mount %s readOnly = %v, want %v", mountPath, m.ReadOnly, w.readOnly)
		}
	}
	// A hostPath of type Directory or File makes the pod fail to start on
	// a host without that path (/lib/modules on minimal images, once).
	for _, v := range spec.Volumes {
		if v.HostPath != nil && v.HostPath.Type != nil &&
			(*v.HostPath.Type == corev1.HostPathDirectory || *v.HostPath.Type == corev1.HostPathFile) {
			t.Errorf("volume %s: hostPath %s of type %s fails on hosts without it", v.Name, v.HostPath.Path, *v.HostPath.Type)
		}
	}
	if len(spec.Volumes) != len(want) {
		t.Errorf("%d volumes, want %d: %+v", len(spec.Volumes), len(want), spec.Volumes)
	}
}

// metricsAddrPort returns the port of the --metrics-addr argument, or the
// agent's default when the argument is absent.
func metricsAddrPort(t *testing.T, args []string) int {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--metrics-addr="); ok {
			i := strings.LastIndex(v, ":")
			p, err := strconv.Atoi(v[i+1:])
			if err != nil {
				t.Fatalf("--metrics-addr=%s: %v", v, err)
			}
			return p
		}
	}
	return metrics.DefaultPort
}

func TestAdmissionPolicy(t *testing.T) {
	ms := decodeAll(t, Base)
	pol := only[*admissionv1.ValidatingAdmissionPolicy](t, ms)
	bind := only[*admissionv1.ValidatingAdmissionPolicyBinding](t, ms)
	if bind.Spec.PolicyName != pol.Name {
		t.Errorf("binding refers to policy %q, want %q", bind.Spec.PolicyName, pol.Name)
	}
	if !slices.Equal(bind.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("binding validationActions %v, want [Deny]", bind.Spec.ValidationActions)
	}
	if pol.Spec.FailurePolicy == nil || *pol.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("failurePolicy must be Fail: an unevaluable policy must not let the agent through")
	}
	rules := pol.Spec.MatchConstraints.ResourceRules
	if len(rules) != 1 || !slices.Equal(rules[0].Resources, []string{"nodes"}) ||
		!slices.Equal(rules[0].Operations, []admissionv1.OperationType{admissionv1.Update}) {
		t.Errorf("matchConstraints %+v, want UPDATE of nodes", rules)
	}
	// The policy must be scoped to the agent's service account and nobody
	// else: a typo in the username would silently disable it.
	username := fmt.Sprintf("system:serviceaccount:%s:%s", Namespace, ServiceAccount)
	if len(pol.Spec.MatchConditions) != 1 || !strings.Contains(pol.Spec.MatchConditions[0].Expression, "'"+username+"'") {
		t.Errorf("matchConditions %+v, want one on username %s", pol.Spec.MatchConditions, username)
	}
	var exprs []string
	for _, v := range pol.Spec.Variables {
		exprs = append(exprs, v.Expression)
	}
	for _, v := range pol.Spec.Validations {
		exprs = append(exprs, v.Expression, v.MessageExpression)
		if v.Reason == nil || *v.Reason != "Forbidden" {
			t.Errorf("validation %q: reason %v, want Forbidden", v.Expression, v.Reason)
		}
		if v.Message == "" && v.MessageExpression == "" {
			t.Errorf("validation %q has no message", v.Expression)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, s := range []string{
		"authentication.kubernetes.io/node-name", "object.metadata.name", "'wgmesh.io/'",
		"oldObject.metadata.?annotations.orValue({})", "object.metadata.?labels", "object.?spec",
	} {
		if !strings.Contains(all, s) {
			t.Errorf("policy expressions do not mention %s", s)
		}
	}
	// Balanced parentheses and quotes in every expression: the cheapest CEL
	// syntax check without an evaluator in the main module.
	for _, e := range exprs {
		if strings.Count(e, "(") != strings.Count(e, ")") || strings.Count(e, "'")%2 != 0 {
			t.Errorf("unbalanced expression: %s", e)
		}
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := string(data)
	for _, s := range []string{
		"CGO_ENABLED=0", "./cmd/wgmesh", "FROM scratch", "-X main.version=", "-X main.commit=",
		`ENTRYPOINT ["/usr/local/bin/wgmesh"]`,
	} {
		if !strings.Contains(d, s) {
			t.Errorf("Dockerfile lacks %q", s)
		}
	}
	froms := 0
	for _, l := range strings.Split(d, "\n") {
		if strings.HasPrefix(l, "FROM ") {
			froms++
		}
	}
	if froms != 2 {
		t.Errorf("Dockerfile has %d stages, want a build and a final stage", froms)
	}
}

// hostPaths maps a pod's mount paths to their hostPath volumes.
func hostPaths(t *testing.T, spec corev1.PodSpec, c corev1.Container) map[string]string {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	out := map[string]string{}
	for _, m := range c.VolumeMounts {
		v := vols[m.Name]
		if v.HostPath == nil {
			t.Errorf("mount %s of %s is not a hostPath volume", m.MountPath, c.Name)
			continue
		}
		out[m.MountPath] = v.HostPath.Path
	}
	return out
}

// TestUninstall checks the cleanup DaemonSet against the agent's: the same
// nodes, network namespace and host directories, the node name from the
// scheduler, and a service account that may do nothing but remove its own
// Node's annotations.
func TestUninstall(t *testing.T) {
	agent := only[*appsv1.DaemonSet](t, decodeAll(t, Base))
	ms := decodeAll(t, UninstallBase)
	ds := only[*appsv1.DaemonSet](t, ms)
	spec := ds.Spec.Template.Spec
	as := agent.Spec.Template.Spec
	if ds.Namespace != Namespace || spec.ServiceAccountName != CleanupServiceAccount {
		t.Errorf("cleanup DaemonSet in %q with service account %q", ds.Namespace, spec.ServiceAccountName)
	}
	if !spec.HostNetwork {
		t.Error("cleanup DaemonSet: hostNetwork must be true (it cleans the node's network namespace)")
	}
	if diff := cmp.Diff(as.Tolerations, spec.Tolerations); diff != "" {
		t.Errorf("tolerations differ from the agent's (-agent +cleanup):\n%s", diff)
	}
	if diff := cmp.Diff(as.NodeSelector, spec.NodeSelector); diff != "" {
		t.Errorf("nodeSelector differs from the agent's (-agent +cleanup):\n%s", diff)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template labels", k, v)
		}
		if agent.Spec.Selector.MatchLabels[k] == v {
			t.Errorf("selector %s=%s also selects the agent's pods", k, v)
		}
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container (cleanup) and one container (wait), got %d and %d", len(spec.InitContainers), len(spec.Containers))
	}
	ic, mc := spec.InitContainers[0], spec.Containers[0]
	for _, c := range []corev1.Container{ic, mc} {
		if c.Image != Image {
			t.Errorf("%s: image %q, want the placeholder %s", c.Name, c.Image, Image)
		}
	}
	if len(ic.Args) == 0 || ic.Args[0] != "cleanup" {
		t.Fatalf("init container args %v, want the cleanup command", ic.Args)
	}
	for _, a := range []string{"--remove-annotations", "--remove-key"} {
		if !slices.Contains(ic.Args, a) {
			t.Errorf("init container args %v lack %s", ic.Args, a)
		}
	}
	for _, a := range ic.Args {
		if strings.HasPrefix(a, "--kubeconfig") || strings.HasPrefix(a, "--node-name") {
			t.Errorf("init container arg %s: the in-cluster configuration and NODE_NAME must be used", a)
		}
	}
	var nodeEnv *corev1.EnvVar
	for i := range ic.Env {
		if ic.Env[i].Name == "NODE_NAME" {
			nodeEnv = &ic.Env[i]
		}
	}
	if nodeEnv == nil || nodeEnv.ValueFrom == nil || nodeEnv.ValueFrom.FieldRef == nil ||
		nodeEnv.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("cleanup NODE_NAME env = %+v, want fieldRef spec.nodeName", nodeEnv)
	}
	if !slices.Equal(mc.Args, []string{"wait"}) {
		t.Errorf("main container args %v, want [wait]", mc.Args)
	}
	if sc := mc.SecurityContext; sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("main container securityContext %+v, want non-root without capabilities", mc.SecurityContext)
	}
	if sc := ic.SecurityContext; sc == nil || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("cleanup securityContext %+v, want NET_ADMIN only, not privileged", ic.SecurityContext)
	}
	// The same host directories as the agent: the key directory (the
	// default --key-file lies in it) and the UAPI sockets.
	agentPaths := hostPaths(t, as, as.Containers[0])
	got := hostPaths(t, spec, ic)
	for _, p := range []string{"/var/lib/wgmesh", "/var/run/wireguard"} {
		if got[p] == "" || got[p] != agentPaths[p] {
			t.Errorf("cleanup mounts %q at %s, the agent %q", got[p], p, agentPaths[p])
		}
	}
	if len(mc.VolumeMounts) != 0 {
		t.Errorf("main container mounts %v, want none", mc.VolumeMounts)
	}

	role := only[*rbacv1.ClusterRole](t, ms)
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}}}
	if diff := cmp.Diff(want, role.Rules); diff != "" {
		t.Errorf("cleanup ClusterRole rules (-want +got):\n%s", diff)
	}
	bind := only[*rbacv1.ClusterRoleBinding](t, ms)
	wantSubj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: CleanupServiceAccount, Namespace: Namespace}}
	if diff := cmp.Diff(wantSubj, bind.Subjects); diff != "" || bind.RoleRef.Name != role.Name {
		t.Errorf("cleanup ClusterRoleBinding %+v -> %s (-want +got subjects):\n%s", bind.RoleRef, role.Name, diff)
	}
	pol := only[*admissionv1.ValidatingAdmissionPolicy](t, ms)
	pbind := only[*admissionv1.ValidatingAdmissionPolicyBinding](t, ms)
	if pbind.Spec.PolicyName != pol.Name || !slices.Equal(pbind.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("cleanup policy binding %+v for policy %s", pbind.Spec, pol.Name)
	}
	if pol.Spec.FailurePolicy == nil || *pol.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("cleanup policy: failurePolicy must be Fail")
	}
	username := fmt.Sprintf("'system:serviceaccount:%s:%s'", Namespace, CleanupServiceAccount)
	if len(pol.Spec.MatchConditions) != 1 || !strings.Contains(pol.Spec.MatchConditions[0].Expression, username) {
		t.Errorf("cleanup policy matchConditions %+v, want one on %s", pol.Spec.MatchConditions, username)
	}
	// The policy must not be the agent's: the agent may write annotations,
	// the cleanup only remove them.
	if agentPol := only[*admissionv1.ValidatingAdmissionPolicy](t, decodeAll(t, Base)); agentPol.Name == pol.Name {
		t.Errorf("cleanup policy has the agent policy's name %s", pol.Name)
	}
}
