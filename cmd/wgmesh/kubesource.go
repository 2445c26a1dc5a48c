package main

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// newKubeSource is the Kubernetes source of nodes for the agent; it also
// reads the cluster's pod ranges from kubeadm's ClusterConfiguration.
func newKubeSource(client kubernetes.Interface, cfg agentConfig, log *slog.Logger) (agent.Source, error) {
	s, err := kube.New(kube.Options{Client: client, NodeName: cfg.NodeName, ListenPort: cfg.ListenPort, Logger: log,
		// kubeadm's pod range joins --cluster-cidrs once read; the read is
		// retried in the background, so an API server unreachable at
		// start does not leave the agent without it for its whole life.
		KubeadmRanges: true})
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: %w", err)
	}
	return s, nil
}
