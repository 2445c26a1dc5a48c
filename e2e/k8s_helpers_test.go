package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wgmesh/wgmesh/deploy"
	"github.com/wgmesh/wgmesh/e2e/apiserver"
)

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

// k8sRender renders a base of the deploy package (deploy.Base or
// deploy.UninstallBase) with kustomize, the engine kubectl embeds, through
// an overlay setting o's image unless o is zero; the objects come in the
// order `kubectl apply -k` sends them.
func k8sRender(t *testing.T, dir string, o deploy.Overlay) []apiserver.Manifest {
	t.Helper()
	ms, err := apiserver.RenderDeploy(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// k8sApplyDeploy applies the whole wgmesh base for real: namespace, service
// account, RBAC, DaemonSet (inert: no controller manager runs) and the
// admission policy.
func k8sApplyDeploy(t *testing.T, ctx context.Context, s *apiserver.Server) {
	t.Helper()
	if err := s.Apply(ctx, k8sRender(t, deploy.Base, deploy.Overlay{}), apiserver.ApplyOptions{}); err != nil {
		t.Fatal(err)
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
