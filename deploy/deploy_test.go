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

// decodeAll decodes every document of every manifest strictly: unknown or
// duplicate fields are errors, so a typo such as "tolerration" fails here
// instead of being silently dropped by the API server.
func decodeAll(t *testing.T) []manifest {
	t.Helper()
	codec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	files, err := fs.Glob(Kubernetes, "kubernetes/*.yaml")
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
	data, err := Kubernetes.ReadFile("kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
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
			NewName string `json:"newName,omitempty"`
			NewTag  string `json:"newTag,omitempty"`
		} `json:"images"`
	}
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if k.Kind != "Kustomization" || k.Namespace != Namespace {
		t.Errorf("kustomization.yaml: kind %q namespace %q", k.Kind, k.Namespace)
	}
	files, _ := fs.Glob(Kubernetes, "kubernetes/*.yaml")
	var want []string
	for _, f := range files {
		if b := path.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kustomization resources vs files in kubernetes/ (-files +resources):\n%s", diff)
	}
	if len(k.Images) != 1 || k.Images[0].Name != Image {
		t.Errorf("kustomization images = %+v, want one entry for %s", k.Images, Image)
	}
}

func TestRBACIsMinimal(t *testing.T) {
	ms := decodeAll(t)
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
	ms := decodeAll(t)
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
	if !strings.HasPrefix(c.Image, Image) {
		t.Errorf("image %q, want %s (kustomization sets the tag)", c.Image, Image)
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

	// The probes must hit the paths and port the metrics server serves.
	metricsPort := metricsAddrPort(t, c.Args)
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
		"/lib/modules":       {"/lib/modules", corev1.HostPathDirectory, true},
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
	ms := decodeAll(t)
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
