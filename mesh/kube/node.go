package kube

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The annotations wgmesh reads and writes on Node objects. The agent writes
// the first three on its own Node; force-endpoint belongs to the user.
const (
	// AnnotationPublicKey holds the node's WireGuard public key in base64
	// (the `wg pubkey` format).
	AnnotationPublicKey = "wgmesh.io/public-key"
	// AnnotationEndpoint holds the IP:port the node's agent listens on.
	AnnotationEndpoint = "wgmesh.io/endpoint"
	// AnnotationBackend holds "kernel" or "userspace" (informational).
	AnnotationBackend = "wgmesh.io/backend"
	// AnnotationForceEndpoint is set by the user to override the endpoint
	// (e.g. a NAT address); it wins over AnnotationEndpoint and the agent
	// never writes or removes it.
	AnnotationForceEndpoint = "wgmesh.io/force-endpoint"
)

// annotationPrefix selects the annotations the informer keeps.
const annotationPrefix = "wgmesh.io/"

// DefaultListenPort is the WireGuard port used when Options.ListenPort is 0:
// the agent's --listen-port default (cmd/wgmesh, which says why it is not
// 51820).
const DefaultListenPort = 51822

// maxShown bounds how much of a malformed value a Problem detail quotes: an
// annotation may be up to 256 KiB and Events should stay readable.
const maxShown = 64

// Strip reduces a Node to what NodeFromObject, Publish and Report need: name,
// UID, resourceVersion, creationTimestamp, labels, the wgmesh.io/ annotations, the pod CIDRs and
// the InternalIP addresses. Everything else (managed fields, images,
// conditions, capacity, …) is dropped so the informer's memory stays small at
// thousands of nodes. It is the informer's transform: it returns a new object
// (informer objects are shared and must not be mutated), is idempotent, and
// passes through anything that is not a *corev1.Node, such as a
// DeletedFinalStateUnknown tombstone.
func Strip(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
			Labels:            maps.Clone(n.Labels),
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  n.Spec.PodCIDR,
			PodCIDRs: append([]string(nil), n.Spec.PodCIDRs...),
		},
	}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string)
			}
			out.Annotations[k] = v
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out, nil
}

// NodeFromObject converts a Node object into the mesh model. It never fails:
// what it cannot parse becomes a Problem on the returned Node (InvalidKey,
// InvalidEndpoint, InvalidCIDR) whose detail names the annotation or field,
// and the field stays zero. Details never quote a malformed key annotation,
// which might hold a pasted private key. HostIPs are the InternalIPs, IPv4
// first. Created is metadata.creationTimestamp in UTC (zero if unset): the
// API server sets it when the Node is created and no update changes it, so a
// kubelet cannot make its Node older than another to take that node's key.
func NodeFromObject(n *corev1.Node) mesh.Node {
	out := mesh.Node{
		Name:    n.Name,
		Labels:  maps.Clone(n.Labels),
		Backend: mesh.Backend(n.Annotations[AnnotationBackend]),
	}
	if !n.CreationTimestamp.IsZero() {
		out.Created = n.CreationTimestamp.UTC()
	}
	problem := func(r mesh.Reason, format string, args ...any) {
		out.Problems = append(out.Problems, mesh.Problem{Node: n.Name, Reason: r, Detail: fmt.Sprintf(format, args...)})
	}

	if s := strings.TrimSpace(n.Annotations[AnnotationPublicKey]); s != "" {
		k, err := mesh.ParseKey(s)
		switch {
		case err != nil:
			problem(mesh.ReasonInvalidKey, "annotation %s: %v", AnnotationPublicKey, err)
		case k.IsZero():
			problem(mesh.ReasonInvalidKey, "annotation %s: the all-zero key is not a public key", AnnotationPublicKey)
		default:
			out.PublicKey = k
		}
	}

	// The user's override wins; when it is malformed the node is left
	// without endpoint rather than silently falling back to the published
	// one, which the user meant to replace.
	name := AnnotationEndpoint
	s := strings.TrimSpace(n.Annotations[AnnotationEndpoint])
	if f := strings.TrimSpace(n.Annotations[AnnotationForceEndpoint]); f != "" {
		name, s = AnnotationForceEndpoint, f
	}
	if s != "" {
		ep, err := ParseEndpoint(s)
		if err != nil {
			problem(mesh.ReasonInvalidEndpoint, "annotation %s: %v", name, err)
		} else {
			out.Endpoint = ep
		}
	}

	cidrs, field := n.Spec.PodCIDRs, "spec.podCIDRs"
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs, field = []string{n.Spec.PodCIDR}, "spec.podCIDR"
	}
	for i, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			problem(mesh.ReasonInvalidCIDR, "%s[%d] %q is not a CIDR prefix", field, i, shorten(c))
			continue
		}
		out.PodCIDRs = append(out.PodCIDRs, p)
	}

	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(a.Address))
		if err != nil || ip.Zone() != "" {
			problem(mesh.ReasonInvalidCIDR, "status.addresses InternalIP %q is not an IP address", shorten(a.Address))
			continue
		}
		ip = ip.Unmap()
		if !slices.Contains(out.HostIPs, ip) {
			out.HostIPs = append(out.HostIPs, ip)
		}
	}
	// IPv4 first, as Publish prefers it for the endpoint, so HostIPs[0] is
	// the address the agent listens on by default.
	slices.SortStableFunc(out.HostIPs, func(a, b netip.Addr) int { return cmp.Compare(a.BitLen(), b.BitLen()) })
	return out
}

// ParseEndpoint parses an endpoint annotation: a literal IP and a port, as
// in "198.18.0.1:51820" or "[fd00::1]:51820". Host names are not accepted:
// every agent would resolve them on its own, at a time of its choosing.
func ParseEndpoint(s string) (netip.AddrPort, error) {
	ep, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("%q is not IP:port (IPv6 as [addr]:port)", shorten(s))
	case ep.Addr().Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("%q carries an IPv6 zone, which means nothing to other nodes", shorten(s))
	case ep.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%q has port 0", shorten(s))
	}
	return netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()), nil
}

// shorten bounds a quoted value in a Problem detail.
func shorten(s string) string {
	if len(s) <= maxShown {
		return s
	}
	return s[:maxShown] + "…"
}

// internalIP returns the node's first InternalIP, IPv4 preferred: the
// address the agent listens on when nothing else is configured.
func internalIP(n *corev1.Node) (netip.Addr, bool) {
	var v6 netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(a.Address))
		if err != nil || ip.Zone() != "" || !ip.IsGlobalUnicast() {
			continue
		}
		ip = ip.Unmap()
		if ip.Is4() {
			return ip, true
		}
		if !v6.IsValid() {
			v6 = ip
		}
	}
	return v6, v6.IsValid()
}
