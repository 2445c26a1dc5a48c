package e2e_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/internal/netnslab"
	"github.com/wgmesh/wgmesh/mesh"
	meshagent "github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// TestK8sAPIServerStarts proves the control plane the other Kubernetes tests
// rely on: a v1.33 kube-apiserver that authenticates client certificates,
// authorizes with RBAC and serves the admission policy API.
func TestK8sAPIServerStarts(t *testing.T) {
	s := k8sStart(t)
	st, err := s.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	t.Logf("measured: ready after %v; RSS kube-apiserver %d MiB, etcd %d MiB",
		st.ReadyAfter.Round(time.Millisecond), st.APIServerRSS>>20, st.EtcdRSS>>20)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := k8sClient(t, s, apiserver.Admin)
	v, err := admin.Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version: %v", err)
	}
	if v.GitVersion != apiserver.KubernetesVersion {
		t.Errorf("server reports version %q, want %q (ldflags of Build)", v.GitVersion, apiserver.KubernetesVersion)
	}
	if _, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("admin lists nodes: %v", err)
	}
	res, err := admin.Discovery().ServerResourcesForGroupVersion("admissionregistration.k8s.io/v1")
	if err != nil {
		t.Fatalf("discover admissionregistration.k8s.io/v1: %v", err)
	}
	if !slices.ContainsFunc(res.APIResources, func(r metav1.APIResource) bool { return r.Name == "validatingadmissionpolicies" }) {
		t.Errorf("admissionregistration.k8s.io/v1 does not serve validatingadmissionpolicies")
	}

	// RBAC is on: an authenticated user without bindings is refused.
	nobody := k8sClient(t, s, apiserver.Identity{User: "nobody"})
	if _, err := nobody.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("unbound user listing nodes: got %v, want Forbidden", err)
	}

	// A kubeconfig file works for a client that is not this test's code.
	path, err := s.Kubeconfig(apiserver.Admin)
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig %s: mode %v, err %v; want 0600 (it holds a private key)", path, fi.Mode().Perm(), err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", path, err)
	}
	if _, err := k8sClientFor(t, cfg).CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
		t.Errorf("client from kubeconfig %s: %v", path, err)
	}
}

// TestK8sDeployManifestsDryRun is scenario 10: every object of the kustomize
// base is accepted by a real API server (schema, defaulting, validation,
// admission) in a server-side-apply dry run.
func TestK8sDeployManifestsDryRun(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	manifests := k8sRender(t, deploy.Base, deploy.Overlay{})
	// A dry run persists nothing, so the namespaced objects' namespace must
	// exist for real; the Namespace object itself is dry-run again below.
	for _, m := range manifests {
		if m.Object.GetKind() == "Namespace" {
			if err := s.Apply(ctx, []apiserver.Manifest{m}, apiserver.ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	kinds := map[string]bool{}
	for _, m := range manifests {
		if err := s.Apply(ctx, []apiserver.Manifest{m}, apiserver.ApplyOptions{DryRun: true}); err != nil {
			t.Error(err)
			continue
		}
		kinds[m.Object.GetKind()] = true
		t.Logf("dry-run applied %s", m)
	}
	// The base must contain what DESIGN.md promises; a loader that silently
	// read nothing would pass the loop above.
	for _, want := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
		"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if !kinds[want] {
			t.Errorf("no %s was applied from %s", want, deploy.Base)
		}
	}
	// Nothing but the namespace may have been persisted.
	admin := k8sClient(t, s, apiserver.Admin)
	if _, err := admin.RbacV1().ClusterRoles().Get(ctx, "wgmesh", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRole wgmesh after a dry run: got %v, want NotFound", err)
	}
}

// TestK8sAgentConfinedToOwnNode is scenario 9: with the base's RBAC and
// admission policy applied, the agent's service account on node-a may write
// wgmesh.io/ annotations on node-a only, and nothing else on any Node.
func TestK8sAgentConfinedToOwnNode(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := k8sClient(t, s, apiserver.Admin)
	k8sApplyDeploy(t, ctx, s)
	before := k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-a", PodCIDRs: []string{"10.244.1.0/24"}, InternalIP: "198.18.0.1"})
	k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-b", PodCIDRs: []string{"10.244.2.0/24"}, InternalIP: "198.18.0.2",
		Annotations: map[string]string{kube.AnnotationPublicKey: k8sTestKey(t).PublicKey().String()}})
	agent := k8sAgentClient(t, s, "node-a")
	k8sWaitPolicyActive(t, ctx, agent, "node-b")
	keyA := k8sTestKey(t).PublicKey().String()

	patchNode := func(node string, patch []byte) error {
		_, err := agent.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	}
	denied := []struct {
		name, node string
		patch      []byte
	}{
		{"other node's key", "node-b", k8sAnnotationPatch(t, kube.AnnotationPublicKey, keyA)},
		{"other node's endpoint", "node-b", k8sAnnotationPatch(t, kube.AnnotationEndpoint, "198.18.0.1:51820")},
		{"other node's key removed", "node-b", k8sMergePatch(t, map[string]any{"metadata": map[string]any{"annotations": map[string]any{kube.AnnotationPublicKey: nil}}})},
		{"own node's labels", "node-a", k8sMergePatch(t, map[string]any{"metadata": map[string]any{"labels": map[string]string{"wgmesh.io/x": "y"}}})},
		{"own node's foreign annotation", "node-a", k8sAnnotationPatch(t, "example.com/other", "x")},
		{"own node's spec", "node-a", k8sMergePatch(t, map[string]any{"spec": map[string]any{"unschedulable": true}})},
		{"own node's taints", "node-a", k8sMergePatch(t, map[string]any{"spec": map[string]any{"taints": []map[string]string{{"key": "k", "effect": "NoSchedule"}}}})},
	}
	for _, d := range denied {
		if err := patchNode(d.node, d.patch); !k8sDeniedByPolicy(err) {
			t.Errorf("agent on node-a, %s (%s): got %v, want a denial by the ValidatingAdmissionPolicy", d.name, d.patch, err)
		}
	}

	// A token without the node name (not bound to a pod) is no node's agent.
	unbound := apiserver.Agent("node-a")
	unbound.Extra = nil
	ucfg, err := s.RESTConfigImpersonating(unbound)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k8sClientFor(t, ucfg).CoreV1().Nodes().Patch(ctx, "node-a", types.MergePatchType,
		k8sAnnotationPatch(t, kube.AnnotationPublicKey, keyA), metav1.PatchOptions{}); !k8sDeniedByPolicy(err) {
		t.Errorf("agent service account without a node name patching node-a's key: got %v, want a denial by the policy", err)
	}

	// What RBAC alone must refuse (no verb granted).
	if _, err := agent.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-x"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent creating a node: got %v, want Forbidden", err)
	}
	if err := agent.CoreV1().Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent deleting node-b: got %v, want Forbidden", err)
	}
	if _, err := agent.CoreV1().Nodes().PatchStatus(ctx, "node-a", []byte(`{"status":{"addresses":[{"type":"InternalIP","address":"198.18.9.9"}]}}`)); !apierrors.IsForbidden(err) {
		t.Errorf("agent patching node-a's status: got %v, want Forbidden", err)
	}
	if _, err := agent.CoreV1().Secrets("wgmesh").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("agent listing secrets: got %v, want Forbidden", err)
	}

	// Allowed: its own node's wgmesh.io/ annotations, all three at once.
	own := k8sMergePatch(t, map[string]any{"metadata": map[string]any{"annotations": map[string]string{
		kube.AnnotationPublicKey: keyA,
		kube.AnnotationEndpoint:  "198.18.0.1:51820",
		kube.AnnotationBackend:   string(mesh.BackendUserspace),
	}}})
	if err := patchNode("node-a", own); err != nil {
		t.Fatalf("agent on node-a patching its own wgmesh.io/ annotations: %v", err)
	}
	// Re-publishing the same values (every restart does) is allowed too.
	if err := patchNode("node-a", own); err != nil {
		t.Errorf("agent on node-a re-publishing identical annotations: %v", err)
	}
	// And reading every node is, or the mesh could not be built.
	if _, err := agent.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("agent listing nodes: %v", err)
	}

	a, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Annotations[kube.AnnotationPublicKey]; got != keyA {
		t.Errorf("node-a key annotation = %q, want %q", got, keyA)
	}
	// The API server's own admission taints new nodes not-ready; compare
	// with the node as created, not with an empty spec.
	if diff := cmp.Diff(before.Spec, a.Spec); diff != "" || !maps.Equal(before.Labels, a.Labels) {
		t.Errorf("node-a changed by denied patches: labels %v -> %v, spec (-before +after):\n%s", before.Labels, a.Labels, diff)
	}
	b, err := admin.CoreV1().Nodes().Get(ctx, "node-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Annotations[kube.AnnotationPublicKey]; got == keyA || got == "" {
		t.Errorf("node-b key annotation = %q after denied patches", got)
	}

	// The admin (and anyone not the agent) is outside the policy.
	if _, err := admin.CoreV1().Nodes().Patch(ctx, "node-b", types.MergePatchType,
		k8sAnnotationPatch(t, kube.AnnotationForceEndpoint, "198.18.0.2:51820"), metav1.PatchOptions{}); err != nil {
		t.Errorf("admin setting node-b's force-endpoint: %v", err)
	}
}

// TestK8sKubeSourceAgainstAPIServer runs mesh/kube unchanged against a real
// API server, as the agent's service account under the base's RBAC and
// policy: it publishes its own annotations, sees the other nodes' keys and
// pod CIDRs, and turns a malformed annotation into a Warning Event.
func TestK8sKubeSourceAgainstAPIServer(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := k8sClient(t, s, apiserver.Admin)
	k8sApplyDeploy(t, ctx, s)
	keyB := k8sTestKey(t).PublicKey()
	k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-a", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, InternalIP: "198.18.0.1"})
	k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-b", PodCIDRs: []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, InternalIP: "198.18.0.2",
		Annotations: map[string]string{kube.AnnotationPublicKey: keyB.String(), kube.AnnotationEndpoint: "198.18.0.2:51820"}})
	k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-c", PodCIDRs: []string{"10.244.3.0/24"}, InternalIP: "198.18.0.3",
		Annotations: map[string]string{kube.AnnotationPublicKey: "not-a-wireguard-key", kube.AnnotationEndpoint: "198.18.0.3:51820"}})
	agent := k8sAgentClient(t, s, "node-a")
	k8sWaitPolicyActive(t, ctx, agent, "node-b")

	src := k8sRunSource(t, ctx, agent, "node-a")
	keyA := k8sTestKey(t).PublicKey()
	self := meshagent.Self{Name: "node-a", PublicKey: keyA, Backend: mesh.BackendUserspace}
	if err := src.Publish(ctx, self); err != nil {
		t.Fatalf("publish node-a's identity as the agent: %v", err)
	}
	a, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantAnn := map[string]string{
		kube.AnnotationPublicKey: keyA.String(),
		kube.AnnotationEndpoint:  "198.18.0.1:51820", // InternalIP and the listen port
		kube.AnnotationBackend:   string(mesh.BackendUserspace),
	}
	for k, v := range wantAnn {
		if a.Annotations[k] != v {
			t.Errorf("node-a annotation %s = %q, want %q", k, a.Annotations[k], v)
		}
	}
	// Publishing is idempotent (every restart publishes).
	if err := src.Publish(ctx, self); err != nil {
		t.Errorf("publish again: %v", err)
	}

	// The source sees its own published key, node-b's key, endpoint and
	// pod CIDRs, and node-c's malformed key as a problem.
	var nodes []mesh.Node
	err = k8sPoll(ctx, time.Minute, func() bool {
		nodes = src.Nodes()
		na, okA := k8sFind(nodes, "node-a")
		_, okC := k8sFind(nodes, "node-c")
		return okA && na.PublicKey == keyA && okC
	})
	if err != nil {
		t.Fatalf("source never showed node-a's published key and node-c: %v; nodes: %+v", err, nodes)
	}
	nb, _ := k8sFind(nodes, "node-b")
	if nb.PublicKey != keyB || nb.Endpoint != netip.MustParseAddrPort("198.18.0.2:51820") {
		t.Errorf("node-b as seen by the source: key %v endpoint %v, want %v 198.18.0.2:51820", nb.PublicKey, nb.Endpoint, keyB)
	}
	wantCIDRs := []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")}
	if diff := cmp.Diff(wantCIDRs, nb.PodCIDRs, cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })); diff != "" {
		t.Errorf("node-b pod CIDRs (-want +got):\n%s", diff)
	}
	nc, _ := k8sFind(nodes, "node-c")
	if !slices.ContainsFunc(nc.Problems, func(p mesh.Problem) bool { return p.Reason == mesh.ReasonInvalidKey }) {
		t.Errorf("node-c with a malformed key: problems %+v, want %s", nc.Problems, mesh.ReasonInvalidKey)
	}

	// Derive from what the source sees: node-b is a peer, node-c is not.
	selfNode, _ := k8sFind(nodes, "node-a")
	d := mesh.Derive(selfNode, nodes, mesh.DeriveOptions{IPv4: true, IPv6: true})
	if peers := k8sPeerNames(d); !slices.Equal(peers, []string{"node-b"}) {
		t.Errorf("derived peers %v, want [node-b]", peers)
	}
	src.Report(d.Problems)

	var events []corev1.Event
	err = k8sPoll(ctx, time.Minute, func() bool {
		l, err := admin.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=node-c"})
		if err != nil {
			return false
		}
		events = l.Items
		return slices.ContainsFunc(events, func(e corev1.Event) bool { return e.Type == corev1.EventTypeWarning })
	})
	if err != nil {
		t.Fatalf("no Warning Event on node-c for its malformed key: %v; events: %+v", err, events)
	}
	for _, e := range events {
		t.Logf("event on node-c: %s %s %q (by %s/%s)", e.Type, e.Reason, e.Message, e.Source.Component, e.ReportingController)
	}
	// Nothing reported about healthy nodes.
	l, err := admin.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 0 {
		t.Errorf("events on healthy node-b: %+v", l.Items)
	}
}

// TestK8sNodeChurn is the control-plane half of scenario 11: 50 node joins and
// leaves in a row; afterwards the source's view is exactly the live nodes,
// so the derived peers match what a fresh read of the cluster gives.
func TestK8sNodeChurn(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := k8sClient(t, s, apiserver.Admin)
	// The base as compiled into the deploy package (what `make demo-k8s`
	// applies); the other tests apply the files on disk.
	if err := s.ApplyDeploy(ctx); err != nil {
		t.Fatal(err)
	}
	k8sCreateNode(t, ctx, admin, k8sNode{Name: "node-a", PodCIDRs: []string{"10.244.1.0/24"}, InternalIP: "198.18.0.1",
		Annotations: map[string]string{kube.AnnotationPublicKey: k8sTestKey(t).PublicKey().String()}})
	src := k8sRunSource(t, ctx, k8sAgentClient(t, s, "node-a"), "node-a")

	// 50 operations: joins of fresh nodes, leaves, and re-joins of a name
	// that left, under a new key and CIDR (a reinstalled machine) — the
	// case where a stale view would program the old key.
	live := map[string]bool{}
	var order, left []string // live nodes oldest first; names that left
	joins, leaves, rejoins := 0, 0, 0
	for op := 0; op < 50; op++ {
		if op%4 == 3 { // leave: the oldest live node
			name := order[0]
			order = order[1:]
			if err := admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("op %d: delete node %s: %v", op, name, err)
			}
			delete(live, name)
			left = append(left, name)
			leaves++
			continue
		}
		name := fmt.Sprintf("churn-%02d", op)
		if op%3 == 0 && len(left) > 0 { // re-join of a node that left
			name, left = left[0], left[1:]
			rejoins++
		}
		joins++
		k8sCreateNode(t, ctx, admin, k8sNode{
			Name:       name,
			PodCIDRs:   []string{fmt.Sprintf("10.244.%d.0/24", 10+joins)},
			InternalIP: fmt.Sprintf("198.18.1.%d", joins),
			Annotations: map[string]string{
				kube.AnnotationPublicKey: k8sTestKey(t).PublicKey().String(),
				kube.AnnotationEndpoint:  fmt.Sprintf("198.18.1.%d:51820", joins),
			},
		})
		live[name] = true
		order = append(order, name)
	}
	t.Logf("50 operations: %d joins (%d re-joins of a departed name under a new key and CIDR), %d leaves; %d churn nodes live",
		joins, rejoins, leaves, len(live))

	list, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []mesh.Node
	for i := range list.Items {
		want = append(want, kube.NodeFromObject(&list.Items[i]))
	}
	selfWant, _ := k8sFind(want, "node-a")
	opts := mesh.DeriveOptions{IPv4: true, IPv6: true}
	wantD := mesh.Derive(selfWant, want, opts)
	if len(wantD.Peers) != len(live) {
		t.Fatalf("derived %d peers from the live nodes, want %d (test setup)", len(wantD.Peers), len(live))
	}

	var gotD mesh.Desired
	err = k8sPoll(ctx, 2*time.Minute, func() bool {
		nodes := src.Nodes()
		self, ok := k8sFind(nodes, "node-a")
		if !ok {
			return false
		}
		gotD = mesh.Derive(self, nodes, opts)
		return cmp.Equal(wantD, gotD, k8sCmpOpts...) && k8sSameNames(nodes, want)
	})
	if err != nil {
		t.Fatalf("source never converged on the live nodes: %v\nderived (-live +source):\n%s", err, cmp.Diff(wantD, gotD, k8sCmpOpts...))
	}
}

// TestPrivilegedK8sAPIServerInNetNS runs the API server inside its own
// network namespace bound to a lab underlay address, as the lab does, and
// reaches it through the namespace-aware dialer and a kubeconfig.
func TestPrivilegedK8sAPIServerInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged: needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("privileged: ip not installed")
	}
	ns := netnslab.New(t, "wgmk8s", "api").NS[0]
	// The underlay address sits on the namespace's loopback: no dummy
	// module is needed, and it is reachable only from inside.
	netnslab.MustRun(t, "ip", "-n", ns, "addr", "add", "198.18.255.1/32", "dev", "lo")

	bctx, bcancel := context.WithTimeout(context.Background(), k8sBuildTimeout)
	defer bcancel()
	bin, err := apiserver.Build(bctx)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s, err := apiserver.Start(ctx, apiserver.Options{
		Dir: t.TempDir(), BinDir: bin, NetNS: ns, BindAddress: netip.MustParseAddr("198.18.255.1"), Port: 6443,
	})
	if err != nil {
		t.Fatalf("start in namespace %s: %v", ns, err)
	}
	t.Cleanup(func() { s.Stop() })
	if want := "https://198.18.255.1:6443"; s.URL() != want {
		t.Errorf("URL %s, want %s", s.URL(), want)
	}
	// 198.18.255.1 exists only inside the namespace; the client config's
	// dialer enters it, so no packet leaves the namespace.
	admin := k8sClient(t, s, apiserver.Admin)
	if _, err := admin.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("reach the API server in %s: %v", ns, err)
	}
	// The agent's kubeconfig carries the impersonation; load it as an agent
	// would and dial from inside the namespace as an agent there would.
	imp := apiserver.Agent("node-a")
	path, err := s.KubeconfigImpersonating(imp.User, imp.Groups, imp.Extra)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	if cfg.Impersonate.UserName != imp.User || !slices.Equal(cfg.Impersonate.Extra[apiserver.NodeNameExtra], []string{"node-a"}) {
		t.Errorf("kubeconfig %s impersonates %+v, want %s with node-name node-a", path, cfg.Impersonate, imp.User)
	}
	adminCfg, err := s.RESTConfig(apiserver.Admin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = adminCfg.Dial
	// Without the base's RBAC the service account may not list nodes: the
	// impersonation is in effect.
	if _, err := k8sClientFor(t, cfg).CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("impersonated agent without RBAC listing nodes: got %v, want Forbidden", err)
	}
	// Both processes really run in the namespace (never probe the address
	// from the host: its default route would send the packet off the machine).
	nsIno := k8sInode(t, "/run/netns/"+ns)
	apiPid, etcdPid := s.Pids()
	for name, pid := range map[string]int{"kube-apiserver": apiPid, "etcd": etcdPid} {
		if got := k8sInode(t, fmt.Sprintf("/proc/%d/ns/net", pid)); got != nsIno {
			t.Errorf("%s (pid %d) runs in network namespace inode %d, want %s (inode %d)", name, pid, got, ns, nsIno)
		}
	}
}

// k8sInode returns the inode of path (namespaces are identified by theirs).
func k8sInode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatalf("stat %s: no inode", path)
	}
	return st.Ino
}

// k8sRunSource starts a mesh/kube source for node as the given client and
// waits for its first complete view.
func k8sRunSource(t *testing.T, ctx context.Context, cs kubernetes.Interface, node string) *kube.Source {
	t.Helper()
	src, err := kube.New(kube.Options{
		Client:     cs,
		NodeName:   node,
		ListenPort: 51820,
		Logger:     k8sTestLogger(t),
	})
	if err != nil {
		t.Fatalf("kube.New for %s: %v", node, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil && runCtx.Err() == nil {
				t.Errorf("kube source Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("kube source Run did not return 30s after cancel")
		}
	})
	if err := k8sPoll(ctx, time.Minute, src.Synced); err != nil {
		t.Fatalf("kube source for %s never synced: %v", node, err)
	}
	return src
}

// k8sTestLogger logs through t.Log (shown on failure or with -v) until the
// test ends; later lines from goroutines still winding down are dropped
// rather than panicking the test binary.
func k8sTestLogger(t *testing.T) *slog.Logger {
	w := &k8sTestWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type k8sTestWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *k8sTestWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func k8sTestKey(t *testing.T) mesh.Key {
	t.Helper()
	k, err := mesh.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func k8sFind(nodes []mesh.Node, name string) (mesh.Node, bool) {
	i := slices.IndexFunc(nodes, func(n mesh.Node) bool { return n.Name == name })
	if i < 0 {
		return mesh.Node{}, false
	}
	return nodes[i], true
}

func k8sPeerNames(d mesh.Desired) []string {
	var names []string
	for _, p := range d.Peers {
		names = append(names, p.Node)
	}
	return names
}

func k8sSameNames(a, b []mesh.Node) bool {
	names := func(ns []mesh.Node) []string {
		var out []string
		for _, n := range ns {
			out = append(out, n.Name)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(names(a), names(b))
}

// k8sCmpOpts compares netip values by value (they have unexported fields).
var k8sCmpOpts = []cmp.Option{
	cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }),
	cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
	cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y }),
}
