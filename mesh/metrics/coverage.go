package metrics

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/wgmesh/wgmesh/mesh"
)

// Coverage endpoints: who sends (From) and where to (To). They are stable
// strings of the /status document.
const (
	CoverPods  = "pods"
	CoverHost  = "host"
	CoverRPods = "remote pods"
	CoverRHost = "remote node addresses"
)

// CoverageStatus says whether one kind of traffic between this node and its
// peers goes through the tunnel.
type CoverageStatus struct {
	// From is "pods" (this node's pod CIDRs) or "host" (the node itself:
	// the agent, the kubelet, hostNetwork pods).
	From string `json:"from"`
	// To is "remote pods" or "remote node addresses" (the peers' host
	// IPs: InternalIP, peers-file hostIPs).
	To        string `json:"to"`
	Encrypted bool   `json:"encrypted"`
	// Detail counts what is covered and names the exceptions.
	Detail string `json:"detail,omitempty"`
}

// Coverage describes what the desired state d encrypts, in a fixed order:
// pods to remote pods, pods to remote node addresses, host to remote pods,
// host to remote node addresses. hostEncryption is the agent's
// --host-encryption.
func Coverage(d mesh.Desired, hostEncryption bool) []CoverageStatus {
	hosts := map[netip.Prefix]bool{}
	hostPeers := map[string]bool{}
	for _, r := range d.HostRoutes {
		hosts[r.Dst] = true
		hostPeers[r.Node] = true
	}
	podCIDRs := 0
	for _, p := range d.Peers {
		for _, a := range p.AllowedIPs {
			if !hosts[a] {
				podCIDRs++
			}
		}
	}
	var sources []string
	for _, s := range d.PodSources {
		sources = append(sources, s.String())
	}
	out := []CoverageStatus{{
		From: CoverPods, To: CoverRPods, Encrypted: true,
		Detail: fmt.Sprintf("%d pod CIDRs of %d peers", podCIDRs, len(d.Peers)),
	}}
	podHost := CoverageStatus{From: CoverPods, To: CoverRHost, Encrypted: len(d.HostRoutes) > 0 && len(sources) > 0}
	switch {
	case len(sources) == 0:
		podHost.Detail = "this node has no pod CIDRs"
	case len(d.HostRoutes) == 0:
		podHost.Detail = "no peer has a known node address (Node InternalIP, peers-file hostIPs)"
	default:
		podHost.Detail = fmt.Sprintf("%d addresses of %d peers, from %s (host route table), the API server and peer endpoints included",
			len(d.HostRoutes), len(hostPeers), strings.Join(sources, ", "))
	}
	out = append(out, podHost, CoverageStatus{
		From: CoverHost, To: CoverRPods, Encrypted: true,
		Detail: "from the tunnel address, or bound to this node's address (peers accept it)",
	})
	hostHost := CoverageStatus{From: CoverHost, To: CoverRHost, Encrypted: hostEncryption}
	if hostEncryption {
		hostHost.Detail = "--host-encryption; except peer endpoints and the API server, which stay outside the tunnel"
	} else {
		hostHost.Detail = "plaintext unless --host-encryption"
	}
	return append(out, hostHost)
}
