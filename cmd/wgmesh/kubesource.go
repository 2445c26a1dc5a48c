package main

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// newKubeSource is the Kubernetes source of nodes for the agent.
func newKubeSource(client kubernetes.Interface, cfg *agentConfig, log *slog.Logger) (mesh.Source, error) {
	s, err := kube.New(kube.Options{Client: client, NodeName: cfg.NodeName, ListenPort: cfg.ListenPort, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: %w", err)
	}
	return s, nil
}
