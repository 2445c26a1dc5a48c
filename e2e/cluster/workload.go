package cluster

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WorkerPort is where the workload pods of DeployWorkers serve HTTP.
const WorkerPort = 8080

// DeployWorkers creates a Deployment "name" in namespace default running the
// workload server with one pod on every node (required pod anti-affinity
// on the hostname), waits for its rollout with the real kubectl and
// returns the pods in node order. Pods carry the label app=<name>.
func (c *Cluster) DeployWorkers(ctx context.Context, name string) ([]corev1.Pod, error) {
	replicas := int32(len(c.Nodes))
	labels := map[string]string{"app": name}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Containers: []corev1.Container{{
						Name: "worker", Image: WorkloadImage, ImagePullPolicy: corev1.PullNever,
						Args:  []string{"serve", fmt.Sprintf(":%d", WorkerPort)},
						Ports: []corev1.ContainerPort{{ContainerPort: WorkerPort}},
					}},
				},
			},
		},
	}
	if _, err := c.Admin.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("cluster: deployment %s: %w", name, err)
	}
	return c.WorkerPods(ctx, name)
}

// WorkerPods waits for the rollout of DeployWorkers' Deployment "name" and
// returns its running pods in node order, one per node.
func (c *Cluster) WorkerPods(ctx context.Context, name string) ([]corev1.Pod, error) {
	if _, err := c.Kubectl(ctx, "rollout", "status", "deployment/"+name, "--timeout=5m"); err != nil {
		return nil, err
	}
	pods, err := c.Admin.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		return nil, err
	}
	byNode := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			byNode[p.Spec.NodeName] = p
		}
	}
	var out []corev1.Pod
	for _, n := range c.Nodes {
		p, ok := byNode[n.Name]
		if !ok {
			return nil, fmt.Errorf("cluster: deployment %s: no running pod on %s", name, n.Name)
		}
		out = append(out, p)
	}
	return out, nil
}

// AgentPods returns the live wgmesh agent pods by node name.
func (c *Cluster) AgentPods(ctx context.Context) (map[string]corev1.Pod, error) {
	pods, err := c.Admin.CoreV1().Pods("wgmesh").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=wgmesh"})
	if err != nil {
		return nil, err
	}
	m := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			m[p.Spec.NodeName] = p
		}
	}
	return m, nil
}
