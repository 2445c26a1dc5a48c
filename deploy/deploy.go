// Package deploy holds wgmesh's deployment artefacts: the kustomize base in
// kubernetes/ (namespace, RBAC, DaemonSet, admission policy) and the
// Dockerfile. The Go package exists so that tests can decode every manifest
// strictly into client-go types and check it against the binary's flags and
// HTTP paths, and so that tools (e2e) can apply the very same manifests.
package deploy

import "embed"

// Kubernetes is the kustomize base, rooted at "kubernetes/".
//
//go:embed kubernetes/*.yaml
var Kubernetes embed.FS

// Namespace, ServiceAccount and Image are the names the manifests use.
const (
	Namespace      = "wgmesh"
	ServiceAccount = "wgmesh"
	Image          = "wgmesh/wgmesh"
)
