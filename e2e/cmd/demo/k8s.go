package main

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/e2e/apiserver"
	"github.com/wgmesh/wgmesh/e2e/lab"
)

// cluster is the Kubernetes side of `demo --k8s`: a real kube-apiserver in
// the lab's control-plane namespace, one Node object per lab node, and one
// kubeconfig per agent acting as the wgmesh service account on that node.
type cluster struct {
	server      *apiserver.Server
	client      kubernetes.Interface
	kubeconfigs map[string]string
}

// startCluster starts the API server and registers the lab's nodes the way
// kubelet and the controller manager would: pod CIDRs in the spec, the
// underlay address as InternalIP.
func startCluster(ctx context.Context, l *lab.Lab) (*cluster, error) {
	s, err := apiserver.Start(ctx, apiserver.Options{Dir: l.Dir(), NetNS: l.CP.NS, BindAddress: l.CP.Addr})
	if err != nil {
		return nil, err
	}
	c := &cluster{server: s, kubeconfigs: map[string]string{}}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	cfg, err := s.RESTConfig(apiserver.Admin)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	c.client = cs
	if err := grantAgentRBAC(ctx, cs); err != nil {
		return nil, err
	}
	for _, n := range l.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name},
			Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR4.String(), PodCIDRs: []string{n.PodCIDR4.String(), n.PodCIDR6.String()}},
		}
		created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create Node %s: %w", n.Name, err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Underlay.String()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("set InternalIP of Node %s: %w", n.Name, err)
		}
		imp := apiserver.Agent(n.Name)
		kc, err := s.KubeconfigImpersonating(imp.User, imp.Groups, imp.Extra)
		if err != nil {
			return nil, err
		}
		c.kubeconfigs[n.Name] = kc
	}
	ok = true
	return c, nil
}

// grantAgentRBAC gives the wgmesh service account what DESIGN.md allows it:
// nodes get/list/watch/patch, events create/patch. Nothing more.
func grantAgentRBAC(ctx context.Context, cs kubernetes.Interface) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: apiserver.AgentNamespace}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", apiserver.AgentNamespace, err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "wgmesh-demo"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch"}},
			{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ClusterRole %s: %w", role.Name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "wgmesh-demo"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: apiserver.AgentServiceAccount, Namespace: apiserver.AgentNamespace}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ClusterRoleBinding %s: %w", binding.Name, err)
	}
	return nil
}

// annotations returns the wgmesh annotations the agents published on a Node.
func (c *cluster) annotations(ctx context.Context, name string) (map[string]string, error) {
	n, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, "wgmesh.io/") {
			out[k] = v
		}
	}
	return out, nil
}
