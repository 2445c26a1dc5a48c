package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// kubeUnderlay returns the node's first InternalIP (the address the kube
// source publishes as endpoint), for the router's MTU detection; the zero
// Addr if the Node cannot be read, and the router falls back to the default
// route.
func kubeUnderlay(ctx context.Context, client kubernetes.Interface, node string) netip.Addr {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}
	}
	if ips := kube.NodeFromObject(n).HostIPs; len(ips) > 0 {
		return ips[0]
	}
	return netip.Addr{}
}
