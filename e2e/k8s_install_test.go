package e2e_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/lab"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// k8sTestOverlay is the image an operator's overlay would set; nothing pulls
// it here (no kubelet), it only has to replace the placeholder.
var k8sTestOverlay = deploy.Overlay{NewName: "registry.example/wgmesh", NewTag: "v0.0.0-e2e"}

// k8sRendered renders a base through README's overlay with kustomize.
func k8sRendered(t *testing.T, dir string) []apiserver.Manifest {
	t.Helper()
	return k8sRender(t, dir, k8sTestOverlay)
}

// TestK8sInstallDryRunFreshCluster follows README's install steps against a
// fresh API server with kustomize's rendering: a one-pass server-side dry
// run of the whole base fails on a fresh cluster (nothing is persisted, so
// the namespace the other objects live in does not exist — which is why
// README applies namespace.yaml first), and after that step both the
// install and the uninstall base pass the dry run, persisting nothing.
func TestK8sInstallDryRunFreshCluster(t *testing.T) {
	s := k8sStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	install := k8sRendered(t, deploy.Base)
	uninstall := k8sRendered(t, deploy.UninstallBase)

	// What `kubectl apply -k <overlay> --dry-run=server` does without the
	// namespace step: the first namespaced object is refused.
	err := s.Apply(ctx, install, apiserver.ApplyOptions{DryRun: true})
	if err == nil || !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), `namespaces "wgmesh" not found`) {
		t.Fatalf("one-pass dry run on a fresh cluster: %v; want namespaces \"wgmesh\" not found (README's namespace step exists for this)", err)
	}

	// README: `kubectl apply -f deploy/kubernetes/namespace.yaml` — the
	// very file of the base.
	nsFile, err := deploy.Kubernetes.ReadFile(deploy.Base + "/namespace.yaml")
	if err != nil {
		t.Fatal(err)
	}
	nsJSON, err := yaml.YAMLToJSON(nsFile)
	if err != nil {
		t.Fatal(err)
	}
	nsObj := &unstructured.Unstructured{}
	if err := nsObj.UnmarshalJSON(nsJSON); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, []apiserver.Manifest{{File: "namespace.yaml", Object: nsObj}}, apiserver.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, set := range []struct {
		name string
		ms   []apiserver.Manifest
	}{{"install", install}, {"uninstall", uninstall}} {
		if err := s.Apply(ctx, set.ms, apiserver.ApplyOptions{DryRun: true}); err != nil {
			t.Errorf("%s base, dry run after the namespace step: %v", set.name, err)
			continue
		}
		for _, m := range set.ms {
			t.Logf("dry-run applied (%s) %s", set.name, m)
		}
	}
	// kubectl's default (client-side) apply creates objects that do not
	// exist yet with a POST; they pass that dry run too. (The Namespace
	// exists now: kubectl would patch it.)
	rs, err := s.Resources(apiserver.Admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range [][]apiserver.Manifest{install, uninstall} {
		for _, m := range set {
			if m.Object.GetKind() == "Namespace" {
				continue
			}
			// POST with dryRun=All, as `kubectl apply --dry-run=server`
			// does for an object that does not exist yet.
			ri, _, err := rs.For(m.Object)
			if err == nil {
				_, err = ri.Create(ctx, m.Object.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			}
			if err != nil {
				t.Errorf("create (dry run) %s: %v", m, err)
			}
		}
	}
	admin := k8sClient(t, s, apiserver.Admin)
	for _, name := range []string{"wgmesh", deploy.CleanupServiceAccount} {
		if _, err := admin.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRole %s after a dry run: got %v, want NotFound", name, err)
		}
	}
}

// TestPrivilegedK8sUninstall is the uninstall as README and
// deploy/kubernetes/uninstall do it, minus the kubelet: the agents stop (the
// agent DaemonSet is deleted), then on each node `wgmesh cleanup` runs the
// way the cleanup pod's init container runs it — in-cluster configuration
// (KUBERNETES_SERVICE_HOST/PORT and the service account token and CA at
// their in-pod path), a token of the wgmesh-cleanup service account bound
// to a Pod on that node (TokenRequest, as the kubelet asks for it), NODE_NAME
// from the pod's node, the base's flags. It checks what README promises:
// refused while an agent runs; between a cleaned and a not yet cleaned node
// pod traffic is dropped, never plaintext through a tunnel's absence; once
// both are clean pod traffic flows again and nothing of wgmesh remains (no
// interface, rule, route, nftables table, UAPI socket, key file or Node
// annotation); the token cannot touch another Node; the main container's
// `wgmesh wait` exits 0 on SIGTERM.
func TestPrivilegedK8sUninstall(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n0, n1 := k.Nodes[0], k.Nodes[1]
	p0, p1 := n0.Pods[0], n1.Pods[0]
	if err := waitPing(ctx, p0, p1.Addr4); err != nil {
		t.Fatalf("pods before the uninstall: %v", err)
	}

	// The uninstall base, as `kubectl apply -k <uninstall overlay>` would
	// create it, and its policy in force.
	uninstall := k8sRendered(t, deploy.UninstallBase)
	if err := k.server.Apply(ctx, uninstall, apiserver.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	var ds *unstructured.Unstructured
	for _, m := range uninstall {
		if m.Object.GetKind() == "DaemonSet" {
			ds = m.Object
		}
	}
	if ds == nil {
		t.Fatal("uninstall base has no DaemonSet")
	}
	tokens := map[string]string{}
	for _, n := range []*lab.Node{n0, n1} {
		tokens[n.Name] = k8sCleanupPodToken(t, ctx, k.admin, ds, n.Name)
	}
	k8sWaitCleanupPolicyActive(t, ctx, k.server, tokens[n0.Name], n1.Name)

	// cleanup refuses while the agent runs (the kubelet retries the init
	// container until the agent pod is gone).
	out, err := k8sCleanupLikePod(ctx, k, n0, tokens[n0.Name])
	if err == nil || !strings.Contains(out, "owned by a running wgmesh agent") {
		t.Errorf("cleanup while the agent runs: %v, want a refusal:\n%s", err, out)
	}

	// `kubectl -n wgmesh delete daemonset wgmesh`: SIGTERM, data plane stays.
	k.stopAgents()
	for _, n := range []*lab.Node{n0, n1} {
		if _, err := n.Exec(ctx, "ip", "link", "show", n.Interface); err != nil {
			t.Fatalf("interface %s on %s gone after SIGTERM: %v", n.Interface, n.Name, err)
		}
	}

	// node0 clean, node1 not yet: node1's strict ingress drops node0's
	// plaintext pod packets.
	out, err = k8sCleanupLikePod(ctx, k, n0, tokens[n0.Name])
	if err != nil {
		t.Fatalf("cleanup pod on %s: %v\n%s", n0.Name, err, out)
	}
	t.Logf("cleanup on %s:\n%s", n0.Name, out)
	for _, want := range []string{"removed: interface " + n0.Interface, "removed: private key " + n0.KeyFile, "removed: annotations wgmesh.io/"} {
		if !strings.Contains(out, want) {
			t.Errorf("cleanup output on %s lacks %q:\n%s", n0.Name, want, out)
		}
	}
	if r, err := p0.Ping(ctx, p1.Addr4, 5, 50*time.Millisecond); err == nil && r.Received > 0 {
		t.Errorf("pod traffic between a cleaned and a not yet cleaned node: %d of 5 replies, want none (strict ingress drops it)", r.Received)
	}

	// node0's token cannot touch node1: the policy confines it to its node.
	out, err = k8sCleanupLikePod(ctx, k, n0, tokens[n0.Name], "--node-name", n1.Name)
	if err == nil || !strings.Contains(out, "ValidatingAdmissionPolicy") {
		t.Errorf("cleanup with node0's token removing node1's annotations: %v, want the policy's denial:\n%s", err, out)
	}
	if node, err := k.admin.CoreV1().Nodes().Get(ctx, n1.Name, metav1.GetOptions{}); err != nil || node.Annotations["wgmesh.io/public-key"] == "" {
		t.Errorf("node %s lost its key annotation to another node's cleanup (%v): %v", n1.Name, err, node.Annotations)
	}

	out, err = k8sCleanupLikePod(ctx, k, n1, tokens[n1.Name])
	if err != nil {
		t.Fatalf("cleanup pod on %s: %v\n%s", n1.Name, err, out)
	}
	// A restarted init container finds nothing and succeeds.
	out, err = k8sCleanupLikePod(ctx, k, n1, tokens[n1.Name])
	if err != nil || !strings.Contains(out, "not found: private key") {
		t.Errorf("second cleanup on %s: %v, want success reporting nothing found:\n%s", n1.Name, err, out)
	}

	// Both clean: pod traffic flows over the nodes' plain routes.
	for _, pair := range [][2]*lab.Pod{{p0, p1}, {p1, p0}} {
		if err := waitPing(ctx, pair[0], pair[1].Addr4); err != nil {
			t.Errorf("pod %s -> %s after the uninstall: %v", pair[0].Name, pair[1].Name, err)
		}
		if err := waitPing(ctx, pair[0], pair[1].Addr6); err != nil {
			t.Errorf("pod %s -> %s (IPv6) after the uninstall: %v", pair[0].Name, pair[1].Name, err)
		}
	}
	for _, n := range []*lab.Node{n0, n1} {
		k8sAssertNothingLeft(t, ctx, k, n)
	}

	// The main container: `wgmesh wait` runs until SIGTERM, then exits 0.
	wait := exec.Command(k.wgmesh, "wait")
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- wait.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("wgmesh wait exited by itself: %v", err)
	case <-time.After(time.Second):
	}
	if err := wait.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("wgmesh wait after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		wait.Process.Kill()
		t.Error("wgmesh wait did not exit within 30s of SIGTERM")
	}
}

// k8sCleanupPodToken creates the Pod the uninstall DaemonSet would create on
// node (its pod template, bound to the node as the scheduler binds it; no
// kubelet runs it) and returns a token of its service account bound to that
// Pod, as the kubelet requests for the projected token volume. Bound to a
// Pod with a node, the token carries the node name the policy checks.
func k8sCleanupPodToken(t *testing.T, ctx context.Context, admin kubernetes.Interface, ds *unstructured.Unstructured, node string) string {
	t.Helper()
	tmpl, _, err := unstructured.NestedMap(ds.Object, "spec", "template")
	if err != nil {
		t.Fatal(err)
	}
	var pt corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &pt); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: pt.ObjectMeta, Spec: pt.Spec}
	pod.Name = ds.GetName() + "-" + node
	pod.Namespace = ds.GetNamespace()
	pod.Spec.NodeName = node
	created, err := admin.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create the cleanup pod for %s from the DaemonSet's template: %v", node, err)
	}
	expire := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			ExpirationSeconds: &expire,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: created.Name, UID: created.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s bound to pod %s: %v", pod.Spec.ServiceAccountName, created.Name, err)
	}
	return tr.Status.Token
}

// k8sWaitCleanupPolicyActive waits until the cleanup's admission policy
// denies the cleanup token of one node a (dry-run) removal of otherNode's
// annotations: policies take effect asynchronously.
func k8sWaitCleanupPolicyActive(t *testing.T, ctx context.Context, s *apiserver.Server, token, otherNode string) {
	t.Helper()
	cfg, err := s.RESTConfig(apiserver.Admin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.CertData, cfg.KeyData, cfg.BearerToken = nil, nil, token
	cs := k8sClientFor(t, cfg)
	patch := k8sMergePatch(t, map[string]any{"metadata": map[string]any{"annotations": map[string]any{"wgmesh.io/public-key": nil}}})
	var last error
	if err := k8sPoll(ctx, 90*time.Second, func() bool {
		_, last = cs.CoreV1().Nodes().Patch(ctx, otherNode, types.MergePatchType, patch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return k8sDeniedByPolicy(last)
	}); err != nil {
		t.Fatalf("cleanup policy never denied another node's cleanup token (last answer: %v): %v", last, err)
	}
}

// k8sCleanupLikePod runs the cleanup init container's command line in n's
// network namespace, in a private mount namespace where a fresh /run holds
// the pod's service account files at their in-cluster path (the host's
// /run/wireguard is bound back in, as the DaemonSet mounts it), with the
// environment a pod gets: KUBERNETES_SERVICE_HOST/PORT, NODE_NAME, and no
// kubeconfig. The agent's lab-specific flags (interface, key file) are
// what an overlay would add to the args.
func k8sCleanupLikePod(ctx context.Context, k *k8sLab, n *lab.Node, token string, extra ...string) (string, error) {
	ds, err := deploy.Render(deploy.UninstallBase, deploy.Overlay{})
	if err != nil {
		return "", err
	}
	var args []string
	for _, u := range ds {
		if u.GetKind() != "DaemonSet" {
			continue
		}
		ics, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "initContainers")
		for _, a := range ics[0].(map[string]any)["args"].([]any) {
			args = append(args, a.(string))
		}
	}
	if len(args) == 0 || args[0] != "cleanup" {
		return "", fmt.Errorf("uninstall DaemonSet's init container args %v: not a cleanup", args)
	}
	args = append(args, "--interface", n.Interface, "--key-file", n.KeyFile)
	args = append(args, extra...)

	dir, err := os.MkdirTemp(k.Dir(), "cleanup-pod-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	sa := filepath.Join(dir, "sa")
	keep := filepath.Join(dir, "wireguard")
	home := filepath.Join(dir, "home")
	for _, d := range []string{sa, keep, home, "/run/wireguard"} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(sa, "token"), []byte(token), 0o600); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(sa, "ca.crt"), k.server.CACert(), 0o644); err != nil {
		return "", err
	}
	host, port, ok := strings.Cut(strings.TrimPrefix(k.server.URL(), "https://"), ":")
	if !ok {
		return "", fmt.Errorf("API server URL %s has no port", k.server.URL())
	}
	script := `set -e
mount --bind /run/wireguard "$KEEP"
mount -t tmpfs tmpfs /run
mkdir -p /run/wireguard /run/secrets/kubernetes.io/serviceaccount
mount --bind "$KEEP" /run/wireguard
cp "$SA/token" "$SA/ca.crt" /run/secrets/kubernetes.io/serviceaccount/
exec env -i HOME="$HOME_DIR" PATH=/usr/sbin:/usr/bin:/sbin:/bin NODE_NAME="$NODE" \
  KUBERNETES_SERVICE_HOST="$HOST" KUBERNETES_SERVICE_PORT="$PORT" "$@"`
	cmdArgs := append([]string{"netns", "exec", n.NS, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", script, "sh", k.wgmesh}, args...)
	// In the script, "$@" is the wgmesh binary and its arguments.
	cmd := exec.CommandContext(ctx, "ip", cmdArgs...)
	cmd.Env = append(os.Environ(), "KEEP="+keep, "SA="+sa, "HOME_DIR="+home, "NODE="+n.Name, "HOST="+host, "PORT="+port)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// k8sAssertNothingLeft checks that nothing of the node's wgmesh instance
// remains: interface, policy rules, routes in its tables, nftables table,
// UAPI socket, key file, Node annotations.
func k8sAssertNothingLeft(t *testing.T, ctx context.Context, k *k8sLab, n *lab.Node) {
	t.Helper()
	if _, err := n.Exec(ctx, "ip", "link", "show", n.Interface); err == nil {
		t.Errorf("%s: interface %s still there", n.Name, n.Interface)
	}
	for _, fam := range []string{"-4", "-6"} {
		rules, _ := n.Exec(ctx, "ip", fam, "rule")
		for _, tbl := range []string{"lookup 51820", "lookup 51821"} {
			if strings.Contains(rules, tbl) {
				t.Errorf("%s: rule %q still there:\n%s", n.Name, tbl, rules)
			}
		}
		for _, tbl := range []string{"51820", "51821"} {
			if routes, _ := n.Exec(ctx, "ip", fam, "route", "show", "table", tbl); strings.TrimSpace(routes) != "" {
				t.Errorf("%s: table %s still has routes:\n%s", n.Name, tbl, routes)
			}
		}
	}
	if tables, _ := n.Exec(ctx, "nft", "list", "tables"); strings.Contains(tables, "wgmesh_"+n.Interface) {
		t.Errorf("%s: nftables table of %s still there:\n%s", n.Name, n.Interface, tables)
	}
	if _, err := os.Lstat(filepath.Join("/run/wireguard", n.Interface+".sock")); err == nil {
		t.Errorf("%s: UAPI socket of %s still there", n.Name, n.Interface)
	}
	if _, err := os.Lstat(n.KeyFile); err == nil {
		t.Errorf("%s: private key %s still there", n.Name, n.KeyFile)
	}
	node, err := k.admin.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for key := range node.Annotations {
		if strings.HasPrefix(key, "wgmesh.io/") {
			t.Errorf("%s: annotation %s still on the Node", n.Name, key)
		}
	}
}

// k8sHTTPGet fetches path from the agent's metrics listener (the default
// --metrics-addr, :9587) from inside n's network namespace, as a scraper on
// the node network would, and returns the status line and body.
func k8sHTTPGet(n *lab.Node, path string) (string, error) {
	var conn net.Conn
	if err := lab.InNetNS(n.NS, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(n.Underlay, 9587).String(), 10*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(writeThen(conn, "GET "+path+" HTTP/1.0\r\nHost: node\r\n\r\n")), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.Status + "\n" + string(body), err
}

// writeThen writes req to conn and returns conn for reading the answer.
func writeThen(conn net.Conn, req string) net.Conn {
	io.WriteString(conn, req)
	return conn
}

// TestPrivilegedK8sEndpointsExposeNoSecrets reads every endpoint of the
// metrics/status listener (which the DaemonSet serves on the host network)
// on each node and checks README's promise: no private key of any node in
// any encoding, and the mesh facts /status gives (keys, endpoints, allowed
// IPs) are the ones the Node objects already publish.
func TestPrivilegedK8sEndpointsExposeNoSecrets(t *testing.T) {
	k := startK8sLab(t, k8sLabOptions{Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := waitPing(ctx, k.Nodes[0].Pods[0], k.Nodes[1].Pods[0].Addr4); err != nil {
		t.Fatal(err)
	}
	// Every node's private key in the encodings a leak could take.
	var secrets []string
	for _, n := range k.Nodes {
		data, err := os.ReadFile(n.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		key, err := mesh.ParseKey(strings.TrimSpace(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		// The search below must find the key where it is.
		if !strings.Contains(string(data), key.String()) {
			t.Fatalf("key of %s does not print as its key file holds it", n.Name)
		}
		secrets = append(secrets, key.String(), hex.EncodeToString(key[:]), base64.RawStdEncoding.EncodeToString(key[:]),
			base64.URLEncoding.EncodeToString(key[:]), fmt.Sprint(key[:]))
	}
	// What the Node objects publish.
	published := map[string]bool{}
	nodes, err := k.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range nodes.Items {
		for _, k := range []string{"wgmesh.io/public-key", "wgmesh.io/endpoint"} {
			published[node.Annotations[k]] = true
		}
		for _, c := range node.Spec.PodCIDRs {
			published[c] = true
		}
		// Pod traffic to a node's own addresses goes through the tunnel
		// too: its addresses are allowed IPs, as single hosts.
		for _, a := range node.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				published[netip.PrefixFrom(ip, ip.BitLen()).String()] = true
			}
		}
	}
	for _, n := range k.Nodes {
		for _, p := range []string{"/metrics", "/healthz", "/readyz", "/status"} {
			out, err := k8sHTTPGet(n, p)
			if err != nil {
				t.Errorf("%s %s: %v", n.Name, p, err)
				continue
			}
			if !strings.HasPrefix(out, "200") {
				t.Errorf("%s %s: %s", n.Name, p, strings.SplitN(out, "\n", 2)[0])
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("%s %s exposes a private key (%d characters of key material)", n.Name, p, len(s))
				}
			}
			if p != "/status" {
				continue
			}
			var st metrics.Status
			if err := json.Unmarshal([]byte(out[strings.Index(out, "\n")+1:]), &st); err != nil {
				t.Fatalf("%s /status: %v", n.Name, err)
			}
			if !published[st.PublicKey] {
				t.Errorf("%s /status: own public key %q is not a Node annotation", n.Name, st.PublicKey)
			}
			if len(st.Peers) == 0 {
				t.Errorf("%s /status: no peers", n.Name)
			}
			for _, peer := range st.Peers {
				if !published[peer.PublicKey] || !published[peer.Endpoint] {
					t.Errorf("%s /status: peer %s key %q endpoint %q not published on a Node", n.Name, peer.Node, peer.PublicKey, peer.Endpoint)
				}
				for _, a := range peer.AllowedIPs {
					if !published[a] {
						t.Errorf("%s /status: peer %s allowed IP %s is no Node's pod CIDR", n.Name, peer.Node, a)
					}
				}
			}
		}
	}
}
