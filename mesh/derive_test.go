package mesh

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/internal/prefixes"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Render prints a Desired as sorted, readable text for golden files. It
// prints the slices in the order Derive produced them, so an ordering bug
// shows up as a diff.
func Render(d Desired) string {
	var b strings.Builder
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, p := range d.Peers {
		fmt.Fprintf(&b, "peer %s key=%s endpoint=%s keepalive=%s\n", orDash(p.Node), p.PublicKey, p.Endpoint, p.Keepalive)
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "  allowed %s\n", a)
		}
	}
	for _, r := range d.Routes {
		fmt.Fprintf(&b, "route %-26s %-11s %s\n", r.Dst, r.Kind, orDash(r.Node))
	}
	for _, a := range d.Addresses {
		fmt.Fprintf(&b, "address %s\n", a)
	}
	for _, r := range d.HostRoutes {
		fmt.Fprintf(&b, "host-route %-21s %-11s %s\n", r.Dst, r.Kind, orDash(r.Node))
	}
	for _, s := range d.PodSources {
		fmt.Fprintf(&b, "pod-source %s\n", s)
	}
	for _, s := range d.StrictSources {
		fmt.Fprintf(&b, "strict-source %s\n", s)
	}
	// Printed only when they differ from the strict sources (with cluster
	// ranges), so the goldens of cases without ranges stay as they were.
	if !slices.Equal(d.EncryptOnly, d.StrictSources) {
		for _, s := range d.EncryptOnly {
			fmt.Fprintf(&b, "encrypt-only %s\n", s)
		}
	}
	for _, c := range d.ClusterCIDRs {
		fmt.Fprintf(&b, "cluster-cidr %s\n", c)
	}
	for _, n := range d.Unencrypted {
		fmt.Fprintf(&b, "unencrypted %s\n", orDash(n))
	}
	for _, p := range d.Problems {
		fmt.Fprintf(&b, "problem %s %s: %s\n", orDash(p.Node), p.Reason, p.Detail)
	}
	return b.String()
}

// key returns a test key whose 32 bytes are all b; 0 is the zero key.
func key(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

// node builds a test node; ep "" means no endpoint, key 0 means no key.
func node(name string, k byte, ep string, cidrs ...string) Node {
	n := Node{Name: name, PublicKey: key(k)}
	if ep != "" {
		n.Endpoint = netip.MustParseAddrPort(ep)
	}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
	}
	return n
}

func withHosts(n Node, ips ...string) Node {
	for _, ip := range ips {
		n.HostIPs = append(n.HostIPs, netip.MustParseAddr(ip))
	}
	return n
}

func withLabels(n Node, kv ...string) Node {
	n.Labels = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Labels[kv[i]] = kv[i+1]
	}
	return n
}

// created sets the node's seniority to the start of year.
func created(n Node, year int) Node {
	n.Created = time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC)
	return n
}

func withProblems(n Node, ps ...Problem) Node {
	n.Problems = append(n.Problems, ps...)
	return n
}

func defaultOptions() DeriveOptions {
	return DeriveOptions{IPv4: true, IPv6: true}
}

func windowsUnmanaged(labels map[string]string) bool {
	return labels["kubernetes.io/os"] == "windows"
}

var (
	self  = node("self", 1, "198.18.0.1:51820", "10.244.0.0/24", "fd00:10:244::/64")
	nodeA = node("a", 2, "198.18.0.2:51820", "10.244.1.0/24", "fd00:10:244:1::/64")
	nodeB = node("b", 3, "198.18.0.3:51820", "10.244.2.0/24", "fd00:10:244:2::/64")
)

type deriveCase struct {
	name  string
	self  Node
	nodes []Node
	opts  func(*DeriveOptions)
	// Hand-written expectations, checked in addition to the golden file.
	peers       []string          // names of the peers
	problems    []string          // "node Reason" of every problem, sorted
	unencrypted []string          // nodes listed as unencrypted
	routes      map[string]string // destination -> "kind node" for selected routes
	allowed     map[string][]string
	noRoute     []string // destinations that must have no route (or "" in routes)
}

func deriveCases() []deriveCase {
	return []deriveCase{
		{
			name:     "empty-cluster",
			self:     self,
			problems: []string{"self SelfMissing"},
			routes:   map[string]string{"10.244.0.0/24": "throw self"},
		},
		{
			name:     "zero-self-zero-options",
			opts:     func(o *DeriveOptions) { *o = DeriveOptions{} },
			problems: []string{"- SelfMissing"},
		},
		{
			name:  "self-only",
			self:  self,
			nodes: []Node{self},
			routes: map[string]string{
				"10.244.0.0/24":    "throw self",
				"fd00:10:244::/64": "throw self",
			},
		},
		{
			name:  "three-nodes-dual-stack",
			self:  self,
			nodes: []Node{nodeB, self, nodeA},
			peers: []string{"a", "b"},
			routes: map[string]string{
				"10.244.1.0/24":      "tunnel a",
				"fd00:10:244:2::/64": "tunnel b",
			},
			allowed: map[string][]string{"a": {"10.244.1.0/24", "fd00:10:244:1::/64"}},
		},
		{
			name:     "self-missing-still-derives-peers",
			self:     self,
			nodes:    []Node{nodeA},
			peers:    []string{"a"},
			problems: []string{"self SelfMissing"},
		},
		{
			name:    "self-entry-merged-with-minimal-self",
			self:    Node{Name: "self", PublicKey: key(1)},
			nodes:   []Node{self, nodeA},
			peers:   []string{"a"},
			routes:  map[string]string{"10.244.0.0/24": "throw self"},
			allowed: map[string][]string{"a": {"10.244.1.0/24", "fd00:10:244:1::/64"}},
		},
		{
			name:    "ipv4-only",
			self:    self,
			nodes:   []Node{self, nodeA},
			opts:    func(o *DeriveOptions) { o.IPv6 = false },
			peers:   []string{"a"},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}},
			noRoute: []string{"fd00:10:244:1::/64", "fd00:10:244::/64"},
		},
		{
			name:    "ipv6-only",
			self:    self,
			nodes:   []Node{self, nodeA},
			opts:    func(o *DeriveOptions) { o.IPv4 = false },
			peers:   []string{"a"},
			allowed: map[string][]string{"a": {"fd00:10:244:1::/64"}},
			noRoute: []string{"10.244.1.0/24", "10.244.0.0/24"},
		},
		{
			name:    "ipv6-endpoint-with-ipv6-disabled",
			self:    self,
			nodes:   []Node{self, node("a", 2, "[fd00:198:18::2]:51820", "10.244.1.0/24", "fd00:10:244:1::/64")},
			opts:    func(o *DeriveOptions) { o.IPv6 = false },
			peers:   []string{"a"},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}},
		},
		{
			name:     "no-key-strict",
			self:     self,
			nodes:    []Node{self, nodeA, node("c", 0, "198.18.0.4:51820", "10.244.3.0/24")},
			peers:    []string{"a"},
			problems: []string{"c NoKey"},
			routes:   map[string]string{"10.244.3.0/24": "unreachable c"},
		},
		{
			name:        "no-key-allow-unencrypted",
			self:        self,
			nodes:       []Node{self, nodeA, node("c", 0, "198.18.0.4:51820", "10.244.3.0/24")},
			opts:        func(o *DeriveOptions) { o.AllowUnencrypted = true },
			peers:       []string{"a"},
			problems:    []string{"c NoKey"},
			unencrypted: []string{"c"},
			routes:      map[string]string{"10.244.3.0/24": "throw c"},
		},
		{
			name:     "no-endpoint-strict",
			self:     self,
			nodes:    []Node{self, node("c", 4, "", "10.244.3.0/24")},
			problems: []string{"c NoEndpoint"},
			routes:   map[string]string{"10.244.3.0/24": "unreachable c"},
		},
		{
			name: "invalid-endpoints",
			self: self,
			nodes: []Node{self,
				node("port0", 4, "198.18.0.4:0", "10.244.3.0/24"),
				node("unspecified", 5, "0.0.0.0:51820", "10.244.4.0/24"),
				node("multicast", 6, "[ff02::1]:51820", "10.244.5.0/24"),
			},
			problems: []string{"multicast InvalidEndpoint", "port0 InvalidEndpoint", "unspecified InvalidEndpoint"},
			routes: map[string]string{
				"10.244.3.0/24": "unreachable port0",
				"10.244.4.0/24": "unreachable unspecified",
				"10.244.5.0/24": "unreachable multicast",
			},
		},
		{
			name: "source-reported-invalid-key-and-endpoint",
			self: self,
			nodes: []Node{self,
				withProblems(node("badkey", 0, "198.18.0.4:51820", "10.244.3.0/24"),
					Problem{Reason: ReasonInvalidKey, Detail: "annotation wgmesh.io/public-key: not base64"}),
				withProblems(node("badep", 5, "", "10.244.4.0/24"),
					Problem{Node: "badep", Reason: ReasonInvalidEndpoint, Detail: "annotation wgmesh.io/endpoint: missing port"}),
			},
			problems: []string{"badep InvalidEndpoint", "badkey InvalidKey"},
			routes: map[string]string{
				"10.244.3.0/24": "unreachable badkey",
				"10.244.4.0/24": "unreachable badep",
			},
		},
		{
			name: "source-problems-copied",
			self: withProblems(self, Problem{Reason: ReasonSelfKeyMismatch, Detail: "peers file key differs"}),
			nodes: []Node{self,
				withProblems(nodeA, Problem{Reason: ReasonInvalidCIDR, Detail: "podCIDRs[1]: not a prefix"}),
			},
			peers:    []string{"a"},
			problems: []string{"a InvalidCIDR", "self SelfKeyMismatch"},
		},
		{
			// Without a known age the lower name is senior.
			name: "duplicate-key",
			self: self,
			nodes: []Node{self, nodeA,
				node("b", 9, "198.18.0.3:51820", "10.244.2.0/24"),
				node("c", 9, "198.18.0.4:51820", "10.244.3.0/24"),
			},
			peers:    []string{"a", "b"},
			problems: []string{"c DuplicateKey"},
			routes: map[string]string{
				"10.244.2.0/24": "tunnel b",
				"10.244.3.0/24": "unreachable c",
			},
		},
		{
			name: "duplicate-key-allow-unencrypted",
			self: self,
			nodes: []Node{self,
				node("b", 9, "198.18.0.3:51820", "10.244.2.0/24"),
				node("c", 9, "198.18.0.4:51820", "10.244.3.0/24"),
			},
			opts:        func(o *DeriveOptions) { o.AllowUnencrypted = true },
			peers:       []string{"b"},
			problems:    []string{"c DuplicateKey"},
			unencrypted: []string{"c"},
			routes:      map[string]string{"10.244.2.0/24": "tunnel b", "10.244.3.0/24": "throw c"},
		},
		{
			// A newer Node object publishing an established node's key
			// (a compromised kubelet can write its own Node) takes nothing
			// from it, whatever its name.
			name: "duplicate-key-older-node-keeps-it",
			self: self,
			nodes: []Node{self,
				created(node("old", 9, "198.18.0.3:51820", "10.244.2.0/24"), 2020),
				created(node("aaa-new", 9, "198.18.0.4:51820", "10.244.3.0/24"), 2024),
				created(node("zzz-newer", 9, "198.18.0.5:51820", "10.244.4.0/24"), 2025),
			},
			peers:    []string{"old"},
			problems: []string{"aaa-new DuplicateKey", "zzz-newer DuplicateKey"},
			routes: map[string]string{
				"10.244.2.0/24": "tunnel old",
				"10.244.3.0/24": "unreachable aaa-new",
				"10.244.4.0/24": "unreachable zzz-newer",
			},
		},
		{
			// Same second: the lower name keeps the key; a node of unknown
			// age never takes it from one of known age.
			name: "duplicate-key-tie-and-unknown-age",
			self: self,
			nodes: []Node{self,
				created(node("b", 9, "198.18.0.3:51820", "10.244.2.0/24"), 2020),
				created(node("a", 9, "198.18.0.4:51820", "10.244.3.0/24"), 2020),
				node("0-unknown", 9, "198.18.0.5:51820", "10.244.4.0/24"),
			},
			peers:    []string{"a"},
			problems: []string{"0-unknown DuplicateKey", "b DuplicateKey"},
		},
		{
			name:     "key-of-local-node-on-another-node",
			self:     created(self, 2020),
			nodes:    []Node{self, nodeA, created(node("clone", 1, "198.18.0.9:51820", "10.244.9.0/24"), 2024)},
			peers:    []string{"a"},
			problems: []string{"clone DuplicateKey"},
			routes:   map[string]string{"10.244.9.0/24": "unreachable clone"},
		},
		{
			// The local node is the newcomer (its age comes from its list
			// entry): every other agent gives the key to "elder". The
			// younger claimant is reported as everywhere, the local node
			// reports that its key is taken and programs no peer at all:
			// a handshake with a, made with elder's key, would roam elder's
			// endpoint at a to this host.
			name: "local-node-is-the-newcomer",
			self: self,
			nodes: []Node{created(self, 2024), nodeA,
				created(node("elder", 1, "198.18.0.9:51820", "10.244.9.0/24"), 2020),
				created(node("younger", 1, "198.18.0.8:51820", "10.244.8.0/24"), 2025),
			},
			problems: []string{"self DuplicateKey", "younger DuplicateKey"},
			routes: map[string]string{"10.244.1.0/24": "unreachable a",
				"10.244.9.0/24": "unreachable elder", "10.244.8.0/24": "unreachable younger"},
		},
		{
			// Every agent keeps both claimants of an endpoint, the local
			// one included: WireGuard tells them apart by key.
			name:     "endpoint-of-local-node-on-another-node",
			self:     Node{Name: "self", PublicKey: self.PublicKey},
			nodes:    []Node{self, nodeA, node("impostor", 9, "198.18.0.1:51820", "10.244.9.0/24")},
			peers:    []string{"a", "impostor"},
			problems: []string{"impostor DuplicateEndpoint"},
			routes:   map[string]string{"10.244.9.0/24": "tunnel impostor"},
		},
		{
			name: "many-nodes-share-a-key",
			self: self,
			nodes: []Node{self,
				node("k1", 7, "198.18.1.1:51820"), node("k2", 7, "198.18.1.2:51820"),
				node("k3", 7, "198.18.1.3:51820"), node("k4", 7, "198.18.1.4:51820"),
				node("k5", 7, "198.18.1.5:51820"), node("k6", 7, "198.18.1.6:51820"),
			},
			peers:    []string{"k1"},
			problems: []string{"k2 DuplicateKey", "k3 DuplicateKey", "k4 DuplicateKey", "k5 DuplicateKey", "k6 DuplicateKey"},
		},
		{
			name: "duplicate-endpoint",
			self: self,
			nodes: []Node{self, nodeA,
				node("b", 3, "198.18.0.9:51820", "10.244.2.0/24"),
				node("c", 4, "198.18.0.9:51820", "10.244.3.0/24"),
			},
			peers:    []string{"a", "b", "c"},
			problems: []string{"b DuplicateEndpoint", "c DuplicateEndpoint"},
			routes:   map[string]string{"10.244.2.0/24": "tunnel b", "10.244.3.0/24": "tunnel c"},
		},
		{
			name: "same-address-different-ports",
			self: self,
			nodes: []Node{self,
				node("b", 3, "198.18.0.9:51820", "10.244.2.0/24"),
				node("c", 4, "198.18.0.9:51821", "10.244.3.0/24"),
			},
			peers: []string{"b", "c"},
		},
		{
			name: "mapped-endpoint-unmapped-and-duplicate",
			self: self,
			nodes: []Node{self,
				node("b", 3, "[::ffff:198.18.0.3]:51820", "10.244.2.0/24"),
				node("c", 4, "198.18.0.3:51820", "10.244.3.0/24"),
				node("d", 5, "[::ffff:198.18.0.5]:51820", "10.244.5.0/24"),
			},
			peers:    []string{"b", "c", "d"},
			problems: []string{"b DuplicateEndpoint", "c DuplicateEndpoint"},
		},
		{
			name: "cidr-claimed-twice",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "10.244.1.0/24", "10.244.7.0/24"),
				node("b", 3, "198.18.0.3:51820", "10.244.7.0/24", "fd00:10:244:2::/64"),
			},
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "b CIDROverlap"},
			routes: map[string]string{
				"10.244.1.0/24": "tunnel a",
				"10.244.7.0/24": "unreachable -",
			},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}, "b": {"fd00:10:244:2::/64"}},
		},
		{
			name: "cidr-nested-overlap",
			self: self,
			nodes: []Node{self,
				node("wide", 2, "198.18.0.2:51820", "10.245.0.0/16"),
				node("narrow", 3, "198.18.0.3:51820", "10.245.7.0/24"),
				node("other", 4, "198.18.0.4:51820", "10.246.0.0/24"),
			},
			peers:    []string{"narrow", "other", "wide"},
			problems: []string{"narrow CIDROverlap", "wide CIDROverlap"},
			routes: map[string]string{
				"10.245.0.0/16": "unreachable -",
				"10.245.7.0/24": "unreachable -",
				"10.246.0.0/24": "tunnel other",
			},
			allowed: map[string][]string{"wide": nil, "narrow": nil},
		},
		{
			name: "cidr-overlap-allow-unencrypted",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "10.245.0.0/16"),
				node("b", 3, "198.18.0.3:51820", "10.245.7.0/24"),
			},
			opts:     func(o *DeriveOptions) { o.AllowUnencrypted = true },
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "b CIDROverlap"},
			routes:   map[string]string{"10.245.0.0/16": "throw -", "10.245.7.0/24": "throw -"},
		},
		{
			name: "cidr-overlap-with-keyless-node",
			self: self,
			nodes: []Node{self, nodeA,
				node("keyless", 0, "", "10.244.1.0/24"),
			},
			peers:    []string{"a"},
			problems: []string{"a CIDROverlap", "keyless CIDROverlap", "keyless NoKey"},
			routes:   map[string]string{"10.244.1.0/24": "unreachable -", "fd00:10:244:1::/64": "tunnel a"},
		},
		{
			name: "own-cidr-claimed-by-peer",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "10.244.0.0/24", "10.244.1.0/24"),
			},
			peers:    []string{"a"},
			problems: []string{"a OwnCIDROverlap"},
			routes:   map[string]string{"10.244.0.0/24": "throw self", "10.244.1.0/24": "tunnel a"},
			allowed:  map[string][]string{"a": {"10.244.1.0/24"}},
		},
		{
			name: "peer-cidr-contains-own",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "10.244.0.0/16"),
				node("b", 3, "198.18.0.3:51820", "10.244.2.0/24"),
			},
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "a OwnCIDROverlap", "b CIDROverlap"},
			// The wider claim is blocked, the own CIDR inside stays local.
			routes: map[string]string{"10.244.2.0/24": "unreachable -", "10.244.0.0/16": "unreachable -", "10.244.0.0/24": "throw self"},
		},
		{
			name: "same-node-nested-cidrs-collapse",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "10.244.1.128/25", "10.244.1.0/24", "10.244.1.0/24"),
			},
			peers:   []string{"a"},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}},
		},
		{
			name: "unmasked-cidrs-are-masked",
			self: node("self", 1, "198.18.0.1:51820", "10.244.0.77/24"),
			nodes: []Node{
				node("a", 2, "198.18.0.2:51820", "10.244.1.9/24", "fd00:10:244:1::1/64"),
			},
			peers:    []string{"a"},
			problems: []string{"self SelfMissing"},
			allowed:  map[string][]string{"a": {"10.244.1.0/24", "fd00:10:244:1::/64"}},
			routes:   map[string]string{"10.244.0.0/24": "throw self"},
		},
		{
			name: "invalid-cidrs",
			self: self,
			nodes: []Node{self,
				{Name: "a", PublicKey: key(2), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), PodCIDRs: []netip.Prefix{
					{}, netip.MustParsePrefix("::ffff:10.244.1.0/120"), netip.MustParsePrefix("0.0.0.0/0"),
					netip.MustParsePrefix("::/0"), netip.MustParsePrefix("10.244.1.0/24"),
				}},
			},
			peers:    []string{"a"},
			problems: []string{"a InvalidCIDR", "a InvalidCIDR", "a InvalidCIDR", "a InvalidCIDR"},
			allowed:  map[string][]string{"a": {"10.244.1.0/24"}},
		},
		{
			name: "unmanaged-with-key",
			self: self,
			nodes: []Node{self, nodeA,
				withLabels(node("win", 5, "198.18.0.5:51820", "10.244.5.0/24"), "kubernetes.io/os", "windows"),
			},
			opts:        func(o *DeriveOptions) { o.Unmanaged = windowsUnmanaged },
			peers:       []string{"a"},
			problems:    []string{"win Unmanaged"},
			unencrypted: []string{"win"},
			routes:      map[string]string{"10.244.5.0/24": "throw win"},
		},
		{
			name: "unmanaged-without-key-is-not-keyless",
			self: self,
			nodes: []Node{self,
				withLabels(node("win", 0, "", "10.244.5.0/24"), "kubernetes.io/os", "windows"),
				withLabels(node("linux", 0, "", "10.244.6.0/24"), "kubernetes.io/os", "linux"),
			},
			opts:        func(o *DeriveOptions) { o.Unmanaged = windowsUnmanaged },
			problems:    []string{"linux NoKey", "win Unmanaged"},
			unencrypted: []string{"win"},
			routes:      map[string]string{"10.244.5.0/24": "throw win", "10.244.6.0/24": "unreachable linux"},
		},
		{
			name: "unmanaged-sharing-a-key-is-not-a-duplicate",
			self: self,
			nodes: []Node{self,
				node("a", 9, "198.18.0.2:51820", "10.244.1.0/24"),
				withLabels(node("win", 9, "198.18.0.2:51820", "10.244.5.0/24"), "kubernetes.io/os", "windows"),
			},
			opts:        func(o *DeriveOptions) { o.Unmanaged = windowsUnmanaged },
			peers:       []string{"a"},
			problems:    []string{"win Unmanaged"},
			unencrypted: []string{"win"},
		},
		{
			name: "host-encryption",
			self: withHosts(self, "198.18.0.1", "192.0.2.1"),
			nodes: []Node{
				withHosts(self, "198.18.0.1", "192.0.2.1"),
				withHosts(nodeA, "198.18.0.2", "192.0.2.2", "fd00:198:18::2"),
				withHosts(node("keyless", 0, "", "10.244.3.0/24"), "192.0.2.3"),
			},
			opts: func(o *DeriveOptions) {
				o.HostEncryption = true
				o.KeepOutside = []netip.Addr{netip.MustParseAddr("192.0.2.100")}
			},
			peers:    []string{"a"},
			problems: []string{"keyless NoKey"},
			// The endpoint address is allowed (replies from it) but gets a
			// throw route: host traffic to it stays outside the tunnel.
			allowed: map[string][]string{"a": {"10.244.1.0/24", "192.0.2.2/32", "198.18.0.2/32", "fd00:10:244:1::/64", "fd00:198:18::2/128"}},
			routes: map[string]string{
				"198.18.0.2/32":  "throw a",
				"192.0.2.100/32": "throw -",
				"192.0.2.2/32":   "tunnel a",
			},
			noRoute: []string{"192.0.2.3/32", "192.0.2.1/32"},
		},
		{
			name: "host-encryption-api-server-on-a-peer",
			self: self,
			nodes: []Node{self,
				withHosts(nodeA, "198.18.0.2", "192.0.2.2"),
			},
			opts: func(o *DeriveOptions) {
				o.HostEncryption = true
				o.KeepOutside = []netip.Addr{netip.MustParseAddr("192.0.2.2")}
			},
			peers: []string{"a"},
			// Allowed and host routes (pods reach the API server
			// encrypted), but throw routes in the main table: the agent
			// reaches the API server and the endpoint outside the tunnel.
			allowed: map[string][]string{"a": {"10.244.1.0/24", "192.0.2.2/32", "198.18.0.2/32", "fd00:10:244:1::/64"}},
			routes:  map[string]string{"192.0.2.2/32": "throw -", "198.18.0.2/32": "throw a"},
		},
		{
			name: "host-encryption-shared-host-ip",
			self: self,
			nodes: []Node{self,
				withHosts(nodeA, "192.0.2.50"),
				withHosts(nodeB, "192.0.2.50"),
			},
			opts:     func(o *DeriveOptions) { o.HostEncryption = true },
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "b CIDROverlap"},
			noRoute:  []string{"192.0.2.50/32"},
		},
		{
			name: "host-ip-inside-peer-pod-cidr",
			self: self,
			nodes: []Node{self,
				withHosts(nodeA, "10.244.2.9"),
				nodeB,
			},
			opts:     func(o *DeriveOptions) { o.HostEncryption = true },
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "b CIDROverlap", "b CIDROverlap"},
			routes:   map[string]string{"10.244.2.0/24": "unreachable -", "10.244.2.9/32": "throw a"},
		},
		{
			name: "pod-cidr-contains-endpoint-or-api-server",
			self: self,
			nodes: []Node{self,
				node("a", 2, "198.18.0.2:51820", "198.18.0.0/24", "10.244.1.0/24"),
				node("b", 3, "198.19.0.3:51820", "192.0.2.0/24", "10.244.2.0/24"),
			},
			opts:     func(o *DeriveOptions) { o.KeepOutside = []netip.Addr{netip.MustParseAddr("192.0.2.10")} },
			peers:    []string{"a", "b"},
			problems: []string{"a CIDROverlap", "b CIDROverlap"},
			routes: map[string]string{
				"198.18.0.0/24":  "unreachable a",
				"198.18.0.2/32":  "throw a",
				"192.0.2.0/24":   "unreachable b",
				"192.0.2.10/32":  "throw -",
				"198.19.0.3/32":  "",
				"198.18.0.1/32":  "",
				"10.244.2.0/24":  "tunnel b",
				"10.244.0.0/24":  "throw self",
				"10.244.1.0/24":  "tunnel a",
				"fd00:10::/32":   "",
				"192.0.2.100/32": "",
			},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}, "b": {"10.244.2.0/24"}},
		},
		{
			name: "pod-cidr-contains-host-ip-allow-unencrypted",
			self: withHosts(self, "10.250.0.1"),
			nodes: []Node{self,
				withHosts(node("a", 2, "198.18.0.2:51820", "10.250.0.0/24", "10.244.1.0/24"), "10.250.0.2"),
				withHosts(nodeB, "10.250.0.3"),
				node("c", 4, "198.18.0.4:51820", "10.250.0.0/28"),
			},
			opts:  func(o *DeriveOptions) { o.AllowUnencrypted = true },
			peers: []string{"a", "b", "c"},
			// b's host IP inside c's pod CIDR is contested: neither is
			// programmed, b's pod CIDRs are.
			problems: []string{"a CIDROverlap", "a CIDROverlap", "b CIDROverlap", "c CIDROverlap", "c CIDROverlap"},
			routes: map[string]string{
				"10.250.0.0/24": "throw -",
				"10.250.0.0/28": "throw -",
				"10.250.0.2/32": "",
				"10.250.0.3/32": "",
				"10.250.0.1/32": "",
			},
			allowed: map[string][]string{"a": {"10.244.1.0/24"}, "b": {"10.244.2.0/24", "fd00:10:244:2::/64"}, "c": nil},
		},
		{
			// Issue #11, scenario 3: without host encryption every peer's
			// host IPs are allowed and host routes (pod-sourced traffic is
			// encrypted), endpoints and the API server included, and get
			// no main-table route. Conflicts over a host IP leave it out
			// and never take a pod CIDR down.
			name: "pod-to-host",
			self: withHosts(self, "198.18.0.1"),
			nodes: []Node{
				withHosts(self, "198.18.0.1"),
				withHosts(nodeA, "198.18.0.2", "fd00:198:18::2"),
				withHosts(nodeB, "198.18.0.3", "192.0.2.50", "192.0.2.100"),
				withHosts(node("c", 4, "198.18.0.4:51820", "10.244.4.0/24"), "198.18.0.4", "192.0.2.50", "198.18.0.1", "10.244.0.7"),
				withHosts(node("keyless", 0, "", "10.244.3.0/24"), "198.18.0.5"),
			},
			opts:     func(o *DeriveOptions) { o.KeepOutside = []netip.Addr{netip.MustParseAddr("192.0.2.100")} },
			peers:    []string{"a", "b", "c"},
			problems: []string{"b CIDROverlap", "c CIDROverlap", "c OwnCIDROverlap", "c OwnCIDROverlap", "keyless NoKey"},
			allowed: map[string][]string{
				"a": {"10.244.1.0/24", "198.18.0.2/32", "fd00:10:244:1::/64", "fd00:198:18::2/128"},
				"b": {"10.244.2.0/24", "192.0.2.100/32", "198.18.0.3/32", "fd00:10:244:2::/64"},
				"c": {"10.244.4.0/24", "198.18.0.4/32"},
			},
			routes: map[string]string{
				"10.244.1.0/24":  "tunnel a",
				"10.244.2.0/24":  "tunnel b",
				"10.244.4.0/24":  "tunnel c",
				"198.18.0.2/32":  "",
				"192.0.2.100/32": "",
				"192.0.2.50/32":  "",
			},
		},
		{
			name:  "tunnel-address-none",
			self:  self,
			nodes: []Node{self, nodeA},
			opts:  func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressNone },
			peers: []string{"a"},
		},
		{
			name:  "tunnel-address-fixed",
			self:  self,
			nodes: []Node{self, nodeA},
			opts: func(o *DeriveOptions) {
				o.IPv6 = false
				o.TunnelAddress = TunnelAddressFixed
				o.TunnelAddrs = []netip.Addr{netip.MustParseAddr("fd00:10:244::1"), netip.MustParseAddr("::ffff:10.244.0.1"), {}}
			},
			peers: []string{"a"},
		},
		{
			name:  "tunnel-address-from-host-sized-and-several-cidrs",
			self:  node("self", 1, "198.18.0.1:51820", "10.244.9.0/24", "10.244.0.5/32", "fd00:10:244::/64", "fd00:10:243::/64"),
			nodes: []Node{nodeA},
			opts:  func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressFirst },
			peers: []string{"a"},
			problems: []string{
				"self SelfMissing",
			},
		},
		{
			// The default: IPv6 takes the first address + 1, never the
			// subnet-router anycast address; IPv4 the first address; a
			// /127 its first address (no anycast address, RFC 6164).
			name:  "tunnel-address-auto-from-host-sized-and-several-cidrs",
			self:  node("self", 1, "198.18.0.1:51820", "10.244.9.0/24", "10.244.0.5/32", "fd00:10:244::/64", "fd00:10:243::/64"),
			nodes: []Node{nodeA},
			opts:  func(o *DeriveOptions) { o.TunnelAddress = TunnelAddressAuto },
			peers: []string{"a"},
			problems: []string{
				"self SelfMissing",
			},
		},
		{
			name:  "tunnel-address-auto-ipv6-127",
			self:  node("self", 1, "198.18.0.1:51820", "fd00:10:244::/127"),
			nodes: []Node{nodeA},
			peers: []string{"a"},
			problems: []string{
				"self SelfMissing",
			},
		},
		{
			name:  "unknown-tunnel-mode-and-negative-keepalive",
			self:  self,
			nodes: []Node{self, nodeA},
			opts: func(o *DeriveOptions) {
				o.TunnelAddress = "bogus"
				o.Keepalive = -time.Second
			},
			peers: []string{"a"},
		},
		{
			name:  "keepalive",
			self:  self,
			nodes: []Node{self, nodeA, nodeB},
			opts:  func(o *DeriveOptions) { o.Keepalive = 25 * time.Second },
			peers: []string{"a", "b"},
		},
		{
			name: "duplicate-name",
			self: self,
			nodes: []Node{self, nodeA,
				node("twin", 5, "198.18.0.5:51820", "10.244.5.0/24"),
				node("twin", 6, "198.18.0.6:51820", "10.244.6.0/24"),
			},
			peers:    []string{"a"},
			problems: []string{"twin DuplicateName"},
			routes:   map[string]string{"10.244.5.0/24": "unreachable twin", "10.244.6.0/24": "unreachable twin"},
		},
		{
			name:     "empty-name",
			self:     self,
			nodes:    []Node{self, node("", 5, "198.18.0.5:51820", "10.244.5.0/24")},
			problems: []string{"- InvalidName"},
			routes:   map[string]string{"10.244.5.0/24": "unreachable -"},
		},
		{
			name: "peer-without-pod-cidrs",
			self: self,
			nodes: []Node{self,
				node("bare", 5, "198.18.0.5:51820"),
			},
			peers:   []string{"bare"},
			allowed: map[string][]string{"bare": nil},
		},
		{
			// The first start: only the local node is known, yet every
			// other pod CIDR of the cluster is already dropped.
			name:  "cluster-range-self-only",
			self:  self,
			nodes: []Node{self},
			opts:  func(o *DeriveOptions) { o.ClusterCIDRs = clusterRanges },
			routes: map[string]string{
				"10.244.0.0/16":    "unreachable -",
				"fd00:10:244::/48": "unreachable -",
				"10.244.0.0/24":    "throw self",
				"fd00:10:244::/64": "throw self",
			},
			noRoute: []string{"198.18.0.1/32", "fd00:10:244:1::/64"},
		},
		{
			// A node removed from the input: its CIDR falls into the
			// range's unreachable route, the peers' stay more specific.
			name:  "cluster-range-strict",
			self:  self,
			nodes: []Node{self, nodeA},
			opts:  func(o *DeriveOptions) { o.ClusterCIDRs = clusterRanges },
			peers: []string{"a"},
			routes: map[string]string{
				"10.244.0.0/16": "unreachable -",
				"10.244.1.0/24": "tunnel a",
			},
			noRoute: []string{"10.244.2.0/24"},
		},
		{
			name:  "cluster-range-allow-unencrypted",
			self:  self,
			nodes: []Node{self, nodeA},
			opts: func(o *DeriveOptions) {
				o.ClusterCIDRs = clusterRanges
				o.AllowUnencrypted = true
			},
			peers:  []string{"a"},
			routes: map[string]string{"10.244.0.0/16": "throw -", "fd00:10:244::/48": "throw -"},
		},
		{
			// Endpoints, host IPs (of peers and of nodes without an
			// agent) and the API server inside a range stay reachable
			// outside the tunnel; a peer's host IP the tunnel carries
			// (host encryption) keeps its tunnel route.
			name: "cluster-range-contains-endpoints-and-api-server",
			self: withHosts(self, "198.18.0.1"),
			nodes: []Node{withHosts(self, "198.18.0.1"),
				withHosts(nodeA, "198.18.0.2", "198.19.0.2"),
				withHosts(node("keyless", 0, "", "10.244.3.0/24"), "198.18.0.3"),
			},
			opts: func(o *DeriveOptions) {
				o.HostEncryption = true
				o.KeepOutside = []netip.Addr{netip.MustParseAddr("198.18.0.100")}
				o.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("198.18.0.0/15")}
			},
			peers:    []string{"a"},
			problems: []string{"keyless NoKey"},
			routes: map[string]string{
				"198.18.0.0/15":   "unreachable -",
				"198.18.0.2/32":   "throw a",
				"198.18.0.3/32":   "throw keyless",
				"198.18.0.100/32": "throw -",
				"198.18.0.1/32":   "throw -",
				"198.19.0.2/32":   "tunnel a",
				"10.244.3.0/24":   "unreachable keyless",
			},
		},
		{
			// Unmanaged nodes stay plaintext inside the range, and the
			// guard leaves their CIDR alone.
			name: "cluster-range-with-unmanaged-node",
			self: self,
			nodes: []Node{self, nodeA,
				withLabels(node("win", 0, "198.18.0.5:51820", "10.244.5.0/24"), "kubernetes.io/os", "windows"),
			},
			opts: func(o *DeriveOptions) {
				o.Unmanaged = windowsUnmanaged
				o.ClusterCIDRs = clusterRanges
			},
			peers:       []string{"a"},
			problems:    []string{"win Unmanaged"},
			unencrypted: []string{"win"},
			routes:      map[string]string{"10.244.5.0/24": "throw win", "10.244.0.0/16": "unreachable -"},
		},
		{
			// Ranges inside a pod CIDR (which covers them), nested ranges
			// (the outer one stays), invalid ones, a whole family and a
			// disabled family are ignored.
			name:  "cluster-range-ignored-and-nested",
			self:  self,
			nodes: []Node{self, nodeA},
			opts: func(o *DeriveOptions) {
				o.IPv6 = false
				o.ClusterCIDRs = []netip.Prefix{
					netip.MustParsePrefix("10.244.1.0/25"), netip.MustParsePrefix("10.244.0.0/24"),
					netip.MustParsePrefix("10.244.0.0/17"), netip.MustParsePrefix("10.244.0.0/16"),
					netip.MustParsePrefix("10.245.0.0/16"), {}, netip.MustParsePrefix("0.0.0.0/0"),
					netip.MustParsePrefix("::ffff:10.0.0.0/104"), netip.MustParsePrefix("fd00:10:244::/48"),
				}
			},
			peers: []string{"a"},
			routes: map[string]string{
				"10.244.0.0/16": "unreachable -",
				"10.245.0.0/16": "unreachable -",
				"10.244.1.0/24": "tunnel a",
			},
			noRoute: []string{"10.244.0.0/17", "10.244.1.0/25", "0.0.0.0/0"},
		},
	}
}

// clusterRanges are the test cluster's pod ranges, holding every test
// node's pod CIDRs.
var clusterRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}

// byName finds the peer named name.
func peerByName(d Desired, name string) (Peer, bool) {
	for _, p := range d.Peers {
		if p.Node == name {
			return p, true
		}
	}
	return Peer{}, false
}

func TestDerive(t *testing.T) {
	cases := deriveCases()
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	names := map[string]bool{}
	for _, tc := range cases {
		if names[tc.name] {
			t.Fatalf("duplicate case name %q", tc.name)
		}
		names[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			o := defaultOptions()
			if tc.opts != nil {
				tc.opts(&o)
			}
			d := Derive(tc.self, tc.nodes, o)

			var peers []string
			for _, p := range d.Peers {
				peers = append(peers, p.Node)
			}
			if diff := cmp.Diff(tc.peers, peers); diff != "" {
				t.Errorf("peers (-want +got):\n%s", diff)
			}
			var problems []string
			for _, p := range d.Problems {
				n := p.Node
				if n == "" {
					n = "-"
				}
				problems = append(problems, n+" "+string(p.Reason))
			}
			if diff := cmp.Diff(tc.problems, problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.unencrypted, d.Unencrypted); diff != "" {
				t.Errorf("unencrypted (-want +got):\n%s", diff)
			}
			routes := map[string]string{}
			for _, r := range d.Routes {
				n := r.Node
				if n == "" {
					n = "-"
				}
				routes[r.Dst.String()] = r.Kind.String() + " " + n
			}
			for dst, want := range tc.routes {
				if got := routes[dst]; got != want {
					t.Errorf("route %s = %q, want %q (\"\" = none)", dst, got, want)
				}
			}
			for _, dst := range tc.noRoute {
				if got, ok := routes[dst]; ok {
					t.Errorf("route %s = %q, want none", dst, got)
				}
			}
			for name, want := range tc.allowed {
				p, ok := peerByName(d, name)
				if !ok {
					t.Errorf("no peer %s", name)
					continue
				}
				var got []string
				for _, a := range p.AllowedIPs {
					got = append(got, a.String())
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("allowed IPs of %s (-want +got):\n%s", name, diff)
				}
			}

			checkInvariants(t, tc.self, tc.nodes, o, d)
			checkGolden(t, filepath.Join("testdata", "derive", tc.name+".golden"), Render(d))
		})
	}
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got); run go test -update if the change is intended:\n%s", path, diff)
	}
}

// overlaps reports whether two prefixes share an address.
func overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

// checkInvariants asserts what must hold for every input. It uses naive,
// quadratic algorithms on purpose: it must not share Derive's cleverness.
func checkInvariants(t *testing.T, self Node, nodes []Node, o DeriveOptions, d Desired) {
	t.Helper()
	famOK := func(a netip.Addr) bool { return (a.Is4() && o.IPv4) || (a.Is6() && !a.Is4In6() && o.IPv6) }

	// Sorted and masked.
	isSortedPrefixes := func(what string, ps []netip.Prefix) {
		for i, p := range ps {
			if p != p.Masked() || !p.IsValid() {
				t.Errorf("%s: %s is not a valid masked prefix", what, p)
			}
			if !famOK(p.Addr()) {
				t.Errorf("%s: %s is of a disabled family", what, p)
			}
			if i > 0 && prefixes.Compare(ps[i-1], p) >= 0 {
				t.Errorf("%s: %s after %s: not sorted or duplicate", what, p, ps[i-1])
			}
		}
	}
	for i, p := range d.Peers {
		if i > 0 && d.Peers[i-1].Node >= p.Node {
			t.Errorf("peers not sorted/unique: %q after %q", p.Node, d.Peers[i-1].Node)
		}
		isSortedPrefixes("allowed IPs of "+p.Node, p.AllowedIPs)
		if p.PublicKey.IsZero() || p.PublicKey == self.PublicKey || !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
			t.Errorf("peer %s has an unusable key or endpoint %s", p.Node, p.Endpoint)
		}
		if p.Node == self.Name {
			t.Errorf("the local node %q is a peer", p.Node)
		}
		for _, q := range d.Peers[:i] {
			if q.PublicKey == p.PublicKey {
				t.Errorf("peers %s and %s share a key", q.Node, p.Node)
			}
		}
	}
	var dsts []netip.Prefix
	for _, r := range d.Routes {
		dsts = append(dsts, r.Dst)
		if r.Kind < ViaTunnel || r.Kind > Unreachable {
			t.Errorf("route %s has kind %d", r.Dst, r.Kind)
		}
	}
	isSortedPrefixes("routes", dsts)
	var hostDsts []netip.Prefix
	for _, r := range d.HostRoutes {
		hostDsts = append(hostDsts, r.Dst)
		if r.Kind != ViaTunnel || !r.Dst.IsSingleIP() {
			t.Errorf("host route %s (%s) is not a tunnel route to one address", r.Dst, r.Kind)
		}
	}
	isSortedPrefixes("host routes", hostDsts)
	isSortedPrefixes("pod sources", d.PodSources)
	isSortedPrefixes("addresses", d.Addresses)
	isSortedPrefixes("strict sources", d.StrictSources)
	for _, a := range d.Addresses {
		if !a.IsSingleIP() {
			t.Errorf("address %s is not a single address", a)
		}
	}
	if !slices.IsSorted(d.Unencrypted) || len(slices.Compact(slices.Clone(d.Unencrypted))) != len(d.Unencrypted) {
		t.Errorf("unencrypted not sorted/unique: %q", d.Unencrypted)
	}
	for i := 1; i < len(d.Problems); i++ {
		a, b := d.Problems[i-1], d.Problems[i]
		if a.Node > b.Node || (a.Node == b.Node && a.Reason > b.Reason) ||
			(a.Node == b.Node && a.Reason == b.Reason && a.Detail >= b.Detail) {
			t.Errorf("problems not sorted/unique at %d: %+v, %+v", i, a, b)
		}
	}

	// No address is allowed for two peers.
	type owned struct {
		p    netip.Prefix
		node string
	}
	var allowed []owned
	for _, p := range d.Peers {
		for _, a := range p.AllowedIPs {
			for _, o := range allowed {
				if overlaps(o.p, a) {
					t.Errorf("allowed IP %s of %s overlaps %s of %s", a, p.Node, o.p, o.node)
				}
			}
			allowed = append(allowed, owned{a, p.Node})
		}
	}

	// Every allowed IP has its tunnel route and every tunnel route its peer.
	routeOf := map[netip.Prefix]Route{}
	for _, r := range d.Routes {
		routeOf[r.Dst] = r
	}
	// hostOf says whether a is one of node's host IPs.
	hostOf := func(node string, a netip.Addr) bool {
		for _, n := range nodes {
			if n.Name == node && slices.ContainsFunc(n.HostIPs, func(h netip.Addr) bool { return h.Unmap().WithZone("") == a }) {
				return true
			}
		}
		return false
	}
	hostRouteOf := map[netip.Prefix]Route{}
	for _, r := range d.HostRoutes {
		hostRouteOf[r.Dst] = r
		if !slices.Contains(allowed, owned{r.Dst, r.Node}) || !hostOf(r.Node, r.Dst.Addr()) {
			t.Errorf("host route %s for %q is no allowed host IP of that peer", r.Dst, r.Node)
		}
	}
	for _, a := range allowed {
		if a.p.IsSingleIP() && hostOf(a.node, a.p.Addr()) {
			// A peer's host IP: the host table routes it, the main
			// table only with host encryption.
			if r, ok := hostRouteOf[a.p]; !ok || r.Node != a.node {
				t.Errorf("allowed host IP %s of %s has host route %+v, want tunnel", a.p, a.node, r)
			}
			if r, ok := routeOf[a.p]; ok && r.Kind == ViaTunnel && (!o.HostEncryption || r.Node != a.node) {
				t.Errorf("allowed host IP %s of %s has route %+v without host encryption", a.p, a.node, r)
			}
			continue
		}
		if r, ok := routeOf[a.p]; !ok || r.Kind != ViaTunnel || r.Node != a.node {
			t.Errorf("allowed IP %s of %s has route %+v, want tunnel", a.p, a.node, r)
		}
	}
	// The own pod CIDRs are the pod sources.
	var wantSources []netip.Prefix
	for _, c := range d.Routes {
		if c.Kind == Throw && c.Node == self.Name && self.Name != "" {
			wantSources = append(wantSources, c.Dst)
		}
	}
	if !slices.Equal(wantSources, d.PodSources) && self.Name != "" {
		t.Errorf("pod sources %v, want the own pod CIDRs %v", d.PodSources, wantSources)
	}
	for _, r := range d.Routes {
		if r.Kind == ViaTunnel && !slices.Contains(allowed, owned{r.Dst, r.Node}) {
			t.Errorf("tunnel route %s for %q is no allowed IP of that peer", r.Dst, r.Node)
		}
	}

	// Own pod CIDRs stay local: never allowed, never strict.
	var own []netip.Prefix
	ownCIDRs := slices.Clone(self.PodCIDRs)
	for _, n := range nodes {
		if n.Name == self.Name {
			ownCIDRs = append(ownCIDRs, n.PodCIDRs...)
		}
	}
	for _, p := range ownCIDRs {
		if p.IsValid() && famOK(p.Addr()) && p.Bits() > 0 {
			own = append(own, p.Masked())
		}
	}
	for _, p := range own {
		for _, a := range allowed {
			if overlaps(p, a.p) {
				t.Errorf("own CIDR %s overlaps allowed IP %s of %s", p, a.p, a.node)
			}
		}
		for _, s := range d.StrictSources {
			if overlaps(p, s) {
				t.Errorf("own CIDR %s overlaps strict source %s", p, s)
			}
		}
		if r, ok := routeOf[p]; ok && (r.Kind != Throw || r.Node != self.Name) {
			t.Errorf("own CIDR %s has route %+v, want throw", p, r)
		}
	}

	// Endpoints and keep-outside addresses are never in the tunnel, nor
	// inside a strict source; host IPs only as their own node's /32.
	type addrOf struct {
		a    netip.Addr
		node string
		host bool
	}
	var keep []addrOf
	usable := func(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() }
	for _, a := range o.KeepOutside {
		keep = append(keep, addrOf{a.Unmap(), "", false})
	}
	for _, n := range append(slices.Clone(nodes), self) {
		keep = append(keep, addrOf{n.Endpoint.Addr().Unmap(), n.Name, false})
		for _, h := range n.HostIPs {
			keep = append(keep, addrOf{h.Unmap(), n.Name, true})
		}
	}
	for _, k := range keep {
		if !usable(k.a) {
			continue
		}
		for _, a := range allowed {
			// A peer's own host IP is allowed as a single address even if
			// it is an endpoint or keep-outside address too: only
			// pod-sourced packets are routed to it (host routes).
			if a.p.Contains(k.a) && !(a.p.IsSingleIP() && hostOf(a.node, k.a)) {
				t.Errorf("address %s of %q is inside allowed IP %s of %s", k.a, k.node, a.p, a.node)
			}
		}
		// Host traffic to endpoints and keep-outside addresses never
		// enters the tunnel.
		if !k.host && k.node != self.Name {
			for _, r := range d.Routes {
				if r.Kind == ViaTunnel && r.Dst.Contains(k.a) {
					t.Errorf("address %s of %q is inside tunnel route %s of %s", k.a, k.node, r.Dst, r.Node)
				}
			}
		}
		for _, s := range d.StrictSources {
			if s.Contains(k.a) {
				t.Errorf("address %s of %q is inside strict source %s", k.a, k.node, s)
			}
		}
	}

	// Every pod CIDR of a peer is a strict source; no strict source belongs
	// to a Throw route's node.
	strict := map[netip.Prefix]bool{}
	for _, s := range d.StrictSources {
		strict[s] = true
	}
	for _, r := range d.Routes {
		isCluster := slices.Contains(d.ClusterCIDRs, r.Dst)
		if r.Kind == Unreachable && !strict[r.Dst] && !isCluster {
			// Only a prefix holding own or outside addresses may not be.
			holds := slices.ContainsFunc(own, r.Dst.Overlaps) ||
				slices.ContainsFunc(keep, func(k addrOf) bool { return usable(k.a) && r.Dst.Contains(k.a) })
			if !holds {
				t.Errorf("unreachable %s is not a strict source", r.Dst)
			}
		}
		if r.Kind == Unreachable {
			// Addresses of other nodes and the API server inside a
			// blocked prefix stay reachable through their own Throw.
			for _, k := range keep {
				if usable(k.a) && k.node != self.Name && r.Dst.Contains(k.a) && famOK(k.a) {
					tr, ok := routeOf[netip.PrefixFrom(k.a, k.a.BitLen())]
					// In a cluster range a peer's host IP may be a tunnel
					// route (host encryption): not dropped either.
					if !ok || (tr.Kind != Throw && !(isCluster && k.host && tr.Kind == ViaTunnel)) {
						t.Errorf("address %s of %q is inside unreachable %s without a throw route", k.a, k.node, r.Dst)
					}
				}
			}
		}
		if r.Kind == Throw && strict[r.Dst] {
			t.Errorf("throw %s is a strict source", r.Dst)
		}
	}
	for _, s := range d.StrictSources {
		if r, ok := routeOf[s]; !ok || r.Kind == Throw {
			t.Errorf("strict source %s has route %+v", s, r)
		}
	}

	// The egress guard drops packets to EncryptOnly prefixes outside the
	// tunnel: none may be a Throw destination, overlap an own CIDR or hold
	// an endpoint or keep-outside address (the device's encrypted UDP and
	// the way to the API server must never be dropped), and every peer's
	// pod CIDR is one.
	isSortedPrefixes("encrypt-only prefixes", d.EncryptOnly)
	encryptOnly := map[netip.Prefix]bool{}
	for _, e := range d.EncryptOnly {
		encryptOnly[e] = true
		// A piece of a cluster range has no route of its own: the range's
		// route covers it, and no Throw route may lie inside it.
		inCluster := slices.ContainsFunc(d.ClusterCIDRs, func(c netip.Prefix) bool { return c.Bits() <= e.Bits() && c.Contains(e.Addr()) })
		if r, ok := routeOf[e]; (!ok && !inCluster) || (ok && r.Kind == Throw) {
			t.Errorf("encrypt-only %s has route %+v", e, r)
		}
		for _, r := range d.Routes {
			if r.Kind == Throw && r.Dst.Bits() >= e.Bits() && e.Contains(r.Dst.Addr()) {
				t.Errorf("throw %s is inside encrypt-only %s", r.Dst, e)
			}
		}
		for _, p := range own {
			if overlaps(p, e) {
				t.Errorf("own CIDR %s overlaps encrypt-only %s", p, e)
			}
		}
		for _, k := range keep {
			if usable(k.a) && e.Contains(k.a) {
				t.Errorf("address %s of %q is inside encrypt-only %s", k.a, k.node, e)
			}
		}
	}
	for _, a := range allowed {
		covered := slices.ContainsFunc(d.EncryptOnly, func(e netip.Prefix) bool { return e.Bits() <= a.p.Bits() && e.Contains(a.p.Addr()) })
		if !a.p.IsSingleIP() && !covered {
			t.Errorf("pod CIDR %s of peer %s is not encrypt-only", a.p, a.node)
		}
	}

	// Every cluster range in force was asked for and has the fallback
	// route, owned by no node; none is inside another.
	for i, c := range d.ClusterCIDRs {
		if !slices.ContainsFunc(o.ClusterCIDRs, func(p netip.Prefix) bool { return p.IsValid() && p.Masked() == c }) {
			t.Errorf("cluster range %s was not asked for", c)
		}
		want := Unreachable
		if o.AllowUnencrypted {
			want = Throw
		}
		if r, ok := routeOf[c]; !ok || r.Kind != want || r.Node != "" {
			t.Errorf("cluster range %s has route %+v, want %s", c, r, want)
		}
		if i > 0 && d.ClusterCIDRs[i-1].Overlaps(c) {
			t.Errorf("cluster ranges %s and %s overlap", d.ClusterCIDRs[i-1], c)
		}
	}
	isSortedPrefixes("cluster ranges", d.ClusterCIDRs)

	// Every other node is a peer, reported, or listed as unencrypted.
	peerNames := map[string]bool{}
	for _, p := range d.Peers {
		peerNames[p.Node] = true
	}
	reported := map[string]bool{}
	for _, p := range d.Problems {
		reported[p.Node] = true
	}
	selfTaken := slices.ContainsFunc(d.Problems, func(p Problem) bool { return p.Node == self.Name && p.Reason == ReasonDuplicateKey })
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		// A local node whose key an older node keeps has no peers; its
		// problem says why.
		if selfTaken && (o.Unmanaged == nil || !o.Unmanaged(n.Labels)) {
			continue
		}
		if !peerNames[n.Name] && !reported[n.Name] && !slices.Contains(d.Unencrypted, n.Name) {
			t.Errorf("node %q is neither a peer, nor reported, nor unencrypted", n.Name)
		}
	}
	checkDuplicateKeys(t, self, nodes, o, d)
	if selfTaken && len(d.Peers) > 0 {
		t.Errorf("the local key is kept by an older node, yet there are peers: %v", d.Peers)
	}
	if !reported[self.Name] && !slices.ContainsFunc(nodes, func(n Node) bool { return n.Name == self.Name }) {
		t.Errorf("self %q is missing from the nodes but not reported", self.Name)
	}
}

// checkDuplicateKeys asserts the seniority rule naively: of the managed
// nodes publishing one usable key, the local node included, only the senior
// one may be a peer and every other one is reported with DuplicateKey; the
// local node reports itself when it is not the senior one.
func checkDuplicateKeys(t *testing.T, self Node, nodes []Node, o DeriveOptions, d Desired) {
	t.Helper()
	type holder struct {
		name    string
		created time.Time
		isSelf  bool
	}
	selfCreated := self.Created
	for _, n := range nodes {
		if n.Name == self.Name && !n.Created.IsZero() && (selfCreated.IsZero() || n.Created.Before(selfCreated)) {
			selfCreated = n.Created
		}
	}
	byKey := map[Key][]holder{}
	if !self.PublicKey.IsZero() {
		byKey[self.PublicKey] = append(byKey[self.PublicKey], holder{self.Name, selfCreated, true})
	}
	for _, n := range nodes {
		invalid := slices.ContainsFunc(n.Problems, func(p Problem) bool { return p.Reason == ReasonInvalidKey })
		if n.Name == self.Name || n.PublicKey.IsZero() || invalid || (o.Unmanaged != nil && o.Unmanaged(n.Labels)) {
			continue
		}
		byKey[n.PublicKey] = append(byKey[n.PublicKey], holder{n.Name, n.Created, false})
	}
	// seniorTo reports whether a precedes b: known age first, then
	// earlier, then lower name.
	seniorTo := func(a, b holder) bool {
		switch {
		case a.created.IsZero() != b.created.IsZero():
			return b.created.IsZero()
		case !a.created.Equal(b.created):
			return a.created.Before(b.created)
		}
		return a.name < b.name
	}
	reportedDup := map[string]bool{}
	for _, p := range d.Problems {
		if p.Reason == ReasonDuplicateKey {
			reportedDup[p.Node] = true
		}
	}
	for k, hs := range byKey {
		if len(hs) < 2 {
			continue
		}
		senior := hs[0]
		for _, h := range hs[1:] {
			if seniorTo(h, senior) {
				senior = h
			}
		}
		for _, h := range hs {
			if h == senior {
				continue
			}
			if !reportedDup[h.name] {
				t.Errorf("%q publishes key %s of senior %q but is not reported as DuplicateKey", h.name, k, senior.name)
			}
			if !h.isSelf && slices.ContainsFunc(d.Peers, func(p Peer) bool { return p.Node == h.name }) {
				t.Errorf("%q publishes key %s of senior %q but is a peer", h.name, k, senior.name)
			}
		}
		// Names may repeat (DuplicateName), so only an unrepeated
		// senior's innocence is checked.
		if !senior.isSelf && len(slices.DeleteFunc(slices.Clone(nodes), func(n Node) bool { return n.Name != senior.name })) == 1 &&
			slices.ContainsFunc(d.Problems, func(p Problem) bool {
				return p.Node == senior.name && p.Reason == ReasonDuplicateKey
			}) {
			t.Errorf("senior %q of key %s is reported as DuplicateKey", senior.name, k)
		}
	}
}

// shuffled returns a deep copy of nodes in a random order, with each node's
// slices shuffled too.
func shuffled(r *rand.Rand, nodes []Node) []Node {
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		n.PodCIDRs = slices.Clone(n.PodCIDRs)
		n.HostIPs = slices.Clone(n.HostIPs)
		n.Problems = slices.Clone(n.Problems)
		r.Shuffle(len(n.PodCIDRs), func(i, j int) { n.PodCIDRs[i], n.PodCIDRs[j] = n.PodCIDRs[j], n.PodCIDRs[i] })
		r.Shuffle(len(n.HostIPs), func(i, j int) { n.HostIPs[i], n.HostIPs[j] = n.HostIPs[j], n.HostIPs[i] })
		r.Shuffle(len(n.Problems), func(i, j int) { n.Problems[i], n.Problems[j] = n.Problems[j], n.Problems[i] })
		out[i] = n
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// TestDeriveOrderIndependent replays every case with the nodes shuffled.
func TestDeriveOrderIndependent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range deriveCases() {
		o := defaultOptions()
		if tc.opts != nil {
			tc.opts(&o)
		}
		want := Derive(tc.self, tc.nodes, o)
		for range 10 {
			got := Derive(tc.self, shuffled(r, tc.nodes), o)
			if !reflect.DeepEqual(want, got) {
				t.Fatalf("%s: Derive depends on input order:\n%s", tc.name, cmp.Diff(Render(want), Render(got)))
			}
		}
	}
}

// TestDeriveDoesNotModifyInput guards the caller's snapshot, which the
// reconciler reuses across reconciles.
func TestDeriveDoesNotModifyInput(t *testing.T) {
	for _, tc := range deriveCases() {
		o := defaultOptions()
		if tc.opts != nil {
			tc.opts(&o)
		}
		nodes := shuffled(rand.New(rand.NewPCG(3, 4)), tc.nodes)
		before := deepCopyNodes(nodes)
		Derive(tc.self, nodes, o)
		if !reflect.DeepEqual(before, nodes) {
			t.Errorf("%s: Derive modified its input", tc.name)
		}
	}
}

func deepCopyNodes(nodes []Node) []Node {
	if nodes == nil {
		return nil
	}
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		n.PodCIDRs = slices.Clone(n.PodCIDRs)
		n.HostIPs = slices.Clone(n.HostIPs)
		n.Problems = slices.Clone(n.Problems)
		out[i] = n
	}
	return out
}

// bigCluster builds n dual-stack nodes with a few keyless and unmanaged ones.
func bigCluster(n int) (Node, []Node) {
	nodes := make([]Node, n)
	for i := range n {
		hi, lo := byte(i>>8), byte(i)
		var k Key
		k[0], k[1], k[2] = 1, hi, lo
		nodes[i] = Node{
			Name:      fmt.Sprintf("node-%05d", i),
			PublicKey: k,
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, hi, lo}), 51820),
			PodCIDRs: []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + hi, lo, 0}), 24),
				netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x44, hi, lo}), 64),
			},
			HostIPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 18, hi, lo})},
		}
		if i%97 == 5 {
			nodes[i].PublicKey = Key{}
		}
		if i%101 == 7 {
			nodes[i].Labels = map[string]string{"kubernetes.io/os": "windows"}
		}
	}
	return nodes[0], nodes
}

func TestDeriveBigCluster(t *testing.T) {
	self, nodes := bigCluster(2000)
	o := defaultOptions()
	o.Unmanaged = windowsUnmanaged
	o.HostEncryption = true
	d := Derive(self, nodes, o)
	if len(d.Peers) < 1900 {
		t.Fatalf("only %d peers of 2000 nodes", len(d.Peers))
	}
	for _, p := range d.Problems {
		if p.Reason != ReasonNoKey && p.Reason != ReasonUnmanaged {
			t.Errorf("unexpected problem %+v", p)
		}
	}
	checkInvariants(t, self, nodes, o, d)
}

func BenchmarkDerive5000(b *testing.B) {
	self, nodes := bigCluster(5000)
	o := defaultOptions()
	o.Unmanaged = windowsUnmanaged
	b.ReportAllocs()
	for b.Loop() {
		Derive(self, nodes, o)
	}
}

// BenchmarkDerive5000ClusterRange is BenchmarkDerive5000 with cluster
// ranges holding every node's pod CIDRs (collectCluster, guardCluster run
// on every reconcile).
func BenchmarkDerive5000ClusterRange(b *testing.B) {
	self, nodes := bigCluster(5000)
	o := defaultOptions()
	o.Unmanaged = windowsUnmanaged
	o.ClusterCIDRs = []netip.Prefix{pfxT("10.128.0.0/9"), pfxT("fd00:10:244::/48")}
	if d := Derive(self, nodes, o); len(d.ClusterCIDRs) != 2 {
		b.Fatalf("ClusterCIDRs in force %v, want both", d.ClusterCIDRs)
	}
	b.ReportAllocs()
	for b.Loop() {
		Derive(self, nodes, o)
	}
}

// TestDerivePodCIDRs: Desired.PodSources are the local node's own valid pod
// CIDRs of the enabled families, masked and sorted, from the self argument
// and its entry in the list alike; host IPs are not pod CIDRs.
func TestDerivePodCIDRs(t *testing.T) {
	self := withHosts(node("node-1", 1, "198.18.0.1:51820", "fd00:10:244:1::/64", "10.244.1.7/24"), "198.18.0.1")
	self.PodCIDRs = append(self.PodCIDRs, netip.Prefix{})
	entry := node("node-1", 1, "198.18.0.1:51820", "10.245.1.0/24")
	others := []Node{entry, node("node-2", 2, "198.18.0.2:51820", "10.244.2.0/24")}
	for _, c := range []struct {
		name string
		opts func(*DeriveOptions)
		want []netip.Prefix
	}{
		{"dual", nil, []netip.Prefix{pfxT("10.244.1.0/24"), pfxT("10.245.1.0/24"), pfxT("fd00:10:244:1::/64")}},
		{"ipv4-only", func(o *DeriveOptions) { o.IPv6 = false }, []netip.Prefix{pfxT("10.244.1.0/24"), pfxT("10.245.1.0/24")}},
		{"host-encryption", func(o *DeriveOptions) { o.HostEncryption = true }, []netip.Prefix{pfxT("10.244.1.0/24"), pfxT("10.245.1.0/24"), pfxT("fd00:10:244:1::/64")}},
	} {
		o := defaultOptions()
		if c.opts != nil {
			c.opts(&o)
		}
		if got := Derive(self, others, o).PodSources; !slices.Equal(got, c.want) {
			t.Errorf("%s: PodSources = %v, want %v", c.name, got, c.want)
		}
	}
}

func pfxT(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// TestDeriveUnderlay: the router finds the underlay from the local node's
// own addresses, the agent's endpoint first, then its entry's endpoint, then
// its host IPs (the Node's InternalIP), whatever the input order.
func TestDeriveUnderlay(t *testing.T) {
	ep := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	ip := netip.MustParseAddr
	tests := []struct {
		name  string
		self  Node
		nodes []Node
		want  []netip.Addr
	}{
		{"none known", Node{Name: "a"}, []Node{{Name: "a"}, {Name: "b", HostIPs: []netip.Addr{ip("198.18.0.12")}}}, nil},
		{"InternalIP only", Node{Name: "a"}, []Node{{Name: "a", HostIPs: []netip.Addr{ip("198.18.0.11")}}}, []netip.Addr{ip("198.18.0.11")}},
		{"entry endpoint before host IPs", Node{Name: "a"},
			[]Node{{Name: "a", Endpoint: ep("198.18.0.21:51820"), HostIPs: []netip.Addr{ip("198.18.0.11"), ip("198.18.0.21")}}},
			[]netip.Addr{ip("198.18.0.21"), ip("198.18.0.11")}},
		{"agent endpoint first, mapped unmapped", Node{Name: "a", Endpoint: ep("[::ffff:203.0.113.7]:51820")},
			[]Node{{Name: "a", Endpoint: ep("198.18.0.21:51820"), HostIPs: []netip.Addr{ip("2001:2::11")}}},
			[]netip.Addr{ip("203.0.113.7"), ip("198.18.0.21"), ip("2001:2::11")}},
		{"self missing from the list", Node{Name: "a", Endpoint: ep("198.18.0.11:51820")}, nil, []netip.Addr{ip("198.18.0.11")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Derive(tc.self, tc.nodes, DeriveOptions{IPv4: true, IPv6: true})
			if diff := cmp.Diff(tc.want, d.Underlay, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("Underlay (-want +got):\n%s", diff)
			}
		})
	}
}
