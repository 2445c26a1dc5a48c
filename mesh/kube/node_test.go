package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/wgmesh/wgmesh/mesh"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// cmpNet lets go-cmp compare the net/netip types, which have unexported
// fields but are comparable.
var cmpNet = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}, netip.AddrPort{})

// testKey returns a distinct, valid, non-zero public key for i.
func testKey(i byte) mesh.Key {
	var k mesh.Key
	for j := range k {
		k[j] = i + byte(j)
	}
	return k
}

// fatNode returns a Node as a kubelet and the controller manager fill it:
// managed fields, images, conditions, capacity, foreign annotations.
func fatNode(name string, ann map[string]string, internal ...string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:            name,
			UID:             types.UID("uid-" + name),
			ResourceVersion: "1",
			Labels:          map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate,
				FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{"f:conditions":{}}}`)}}},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, ProviderID: "kind://x/" + name},
		Status: corev1.NodeStatus{
			Capacity:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Unix(1, 0)}},
			Images:     []corev1.ContainerImage{{Names: []string{"registry.invalid/pause:3.10"}, SizeBytes: 1 << 20}},
			NodeInfo:   corev1.NodeSystemInfo{KernelVersion: "6.18.0", OSImage: "Debian"},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeExternalIP, Address: "198.19.255.1"}},
		},
	}
	for _, a := range internal {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	for k, v := range ann {
		n.Annotations[k] = v
	}
	return n
}

func TestStrip(t *testing.T) {
	in := fatNode("node-a", map[string]string{
		AnnotationPublicKey:     testKey(1).String(),
		AnnotationForceEndpoint: "198.18.9.9:51820",
	}, "198.18.0.1")
	in.CreationTimestamp = metav1.Unix(1700000000, 0)
	before, _ := json.Marshal(in)
	obj, err := Strip(in)
	if err != nil {
		t.Fatal(err)
	}
	got := obj.(*corev1.Node)
	after, _ := json.Marshal(got)
	t.Logf("serialized node: %d bytes before strip, %d after", len(before), len(after))

	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: "node-a", UID: "uid-node-a", ResourceVersion: "1", CreationTimestamp: metav1.Unix(1700000000, 0),
			Labels: map[string]string{"kubernetes.io/hostname": "node-a", "kubernetes.io/os": "linux"},
			Annotations: map[string]string{
				AnnotationPublicKey:     testKey(1).String(),
				AnnotationForceEndpoint: "198.18.9.9:51820",
			},
		},
		Spec:   corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:10:244:1::/64"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.0.1"}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Strip (-want +got):\n%s", diff)
	}
	if len(got.ManagedFields) != 0 || len(got.Status.Images) != 0 || len(got.Status.Conditions) != 0 {
		t.Errorf("stripped node still has managed fields, images or conditions")
	}
	// The informer's objects are shared: the input must be left intact.
	if len(in.Status.Images) != 1 || len(in.ManagedFields) != 1 || len(in.Annotations) != 4 {
		t.Errorf("Strip mutated its input")
	}
	again, _ := Strip(got)
	if diff := cmp.Diff(got, again); diff != "" {
		t.Errorf("Strip is not idempotent (-once +twice):\n%s", diff)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "node-a", Obj: in}
	if out, _ := Strip(tomb); out != any(tomb) {
		t.Errorf("Strip changed a tombstone")
	}
	if diff := cmp.Diff(NodeFromObject(in), NodeFromObject(got), cmpNet); diff != "" {
		t.Errorf("conversion differs after Strip (-full +stripped):\n%s", diff)
	}
}

func TestNodeFromObject(t *testing.T) {
	k1 := testKey(1)
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name     string
		node     *corev1.Node
		want     mesh.Node // Name, Labels filled in by the test
		problems []string  // "Reason: detail substring"
	}{
		{
			name: "complete",
			node: with(fatNode("n", map[string]string{
				AnnotationPublicKey: k1.String(), AnnotationEndpoint: "198.18.0.1:51820", AnnotationBackend: "userspace",
			}, "198.18.0.1", "fd00:198:18::1"), func(n *corev1.Node) {
				n.CreationTimestamp = metav1.NewTime(time.Date(2024, 5, 6, 7, 8, 9, 0, time.FixedZone("CEST", 7200)))
			}),
			want: mesh.Node{Created: time.Date(2024, 5, 6, 5, 8, 9, 0, time.UTC), PublicKey: k1, Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"),
				PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")},
				HostIPs:  []netip.Addr{addr("198.18.0.1"), addr("fd00:198:18::1")}, Backend: mesh.BackendUserspace},
		},
		{
			name: "IPv4 host IPs first",
			node: fatNode("n", nil, "fd00:198:18::1", "198.18.0.1", "fd00:198:18::2", "198.18.0.2"),
			want: mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")},
				HostIPs: []netip.Addr{addr("198.18.0.1"), addr("198.18.0.2"), addr("fd00:198:18::1"), addr("fd00:198:18::2")}},
		},
		{
			name: "force-endpoint wins",
			node: fatNode("n", map[string]string{
				AnnotationPublicKey: k1.String(), AnnotationEndpoint: "198.18.0.1:51820", AnnotationForceEndpoint: "[fd00:198:18::7]:4000",
			}),
			want: mesh.Node{PublicKey: k1, Endpoint: netip.MustParseAddrPort("[fd00:198:18::7]:4000"),
				PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
		},
		{
			name: "malformed force-endpoint does not fall back",
			node: fatNode("n", map[string]string{
				AnnotationPublicKey: k1.String(), AnnotationEndpoint: "198.18.0.1:51820", AnnotationForceEndpoint: "gateway.example:51820",
			}),
			want:     mesh.Node{PublicKey: k1, PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{`InvalidEndpoint: annotation wgmesh.io/force-endpoint: "gateway.example:51820" is not IP:port`},
		},
		{
			name: "no annotations",
			node: fatNode("n", nil, "198.18.0.2"),
			want: mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}, HostIPs: []netip.Addr{addr("198.18.0.2")}},
		},
		{
			name:     "key too short",
			node:     fatNode("n", map[string]string{AnnotationPublicKey: "c2VjcmV0", AnnotationEndpoint: "198.18.0.1:51820"}),
			want:     mesh.Node{Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{"InvalidKey: annotation wgmesh.io/public-key: invalid WireGuard key: want 44 base64 characters, got 8"},
		},
		{
			name:     "key not base64",
			node:     fatNode("n", map[string]string{AnnotationPublicKey: strings.Repeat("!", 44)}),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{"InvalidKey: annotation wgmesh.io/public-key: invalid WireGuard key: not canonical base64"},
		},
		{
			name:     "zero key",
			node:     fatNode("n", map[string]string{AnnotationPublicKey: mesh.Key{}.String()}),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{"InvalidKey: annotation wgmesh.io/public-key: the all-zero key"},
		},
		{
			name: "key with trailing newline (kubectl annotate from $(cat))",
			node: fatNode("n", map[string]string{AnnotationPublicKey: k1.String() + "\n"}),
			want: mesh.Node{PublicKey: k1, PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
		},
		{
			name:     "bad endpoints",
			node:     fatNode("n", map[string]string{AnnotationEndpoint: "198.18.0.1"}),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{`InvalidEndpoint: annotation wgmesh.io/endpoint: "198.18.0.1" is not IP:port`},
		},
		{
			name:     "port zero",
			node:     fatNode("n", map[string]string{AnnotationEndpoint: "198.18.0.1:0"}),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{"InvalidEndpoint: annotation wgmesh.io/endpoint: \"198.18.0.1:0\" has port 0"},
		},
		{
			name:     "zoned endpoint",
			node:     fatNode("n", map[string]string{AnnotationEndpoint: "[fe80::1%eth0]:51820"}),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
			problems: []string{"InvalidEndpoint: annotation wgmesh.io/endpoint: \"[fe80::1%eth0]:51820\" carries an IPv6 zone"},
		},
		{
			name: "mapped endpoint is unmapped",
			node: fatNode("n", map[string]string{AnnotationEndpoint: "[::ffff:198.18.0.1]:51820"}),
			want: mesh.Node{Endpoint: netip.MustParseAddrPort("198.18.0.1:51820"), PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24"), pfx("fd00:10:244:1::/64")}},
		},
		{
			name: "podCIDR fallback and bad CIDRs",
			node: func() *corev1.Node {
				n := fatNode("n", nil, "198.18.0.1", "198.18.0.1", "bogus")
				n.Spec.PodCIDRs = nil
				n.Spec.PodCIDR = "10.244.7.0/24"
				return n
			}(),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.7.0/24")}, HostIPs: []netip.Addr{addr("198.18.0.1")}},
			problems: []string{`InvalidCIDR: status.addresses InternalIP "bogus"`},
		},
		{
			name: "invalid podCIDRs entry",
			node: func() *corev1.Node {
				n := fatNode("n", nil)
				n.Spec.PodCIDRs = []string{"10.244.1.0/24", "10.244.300.0/24"}
				return n
			}(),
			want:     mesh.Node{PodCIDRs: []netip.Prefix{pfx("10.244.1.0/24")}},
			problems: []string{`InvalidCIDR: spec.podCIDRs[1] "10.244.300.0/24"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NodeFromObject(tt.node)
			want := tt.want
			want.Name = tt.node.Name
			want.Labels = tt.node.Labels
			gotProblems := got.Problems
			got.Problems = nil
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpNet); diff != "" {
				t.Errorf("NodeFromObject (-want +got):\n%s", diff)
			}
			if len(gotProblems) != len(tt.problems) {
				t.Fatalf("problems = %v, want %d matching %q", gotProblems, len(tt.problems), tt.problems)
			}
			for i, p := range gotProblems {
				text := fmt.Sprintf("%s: %s", p.Reason, p.Detail)
				if !strings.HasPrefix(text, tt.problems[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, text, tt.problems[i])
				}
				if p.Node != tt.node.Name {
					t.Errorf("problem %d names node %q, want %q", i, p.Node, tt.node.Name)
				}
			}
			// The labels are a copy: the caller may not reach into the
			// informer's cache through them.
			if got.Labels != nil {
				got.Labels["mutated"] = "yes"
				if _, ok := tt.node.Labels["mutated"]; ok {
					t.Errorf("Labels share the object's map")
				}
			}
		})
	}
}

// FuzzNodeFromObject feeds arbitrary annotation, CIDR and address strings
// through the informer's transform and the conversion.
func FuzzNodeFromObject(f *testing.F) {
	f.Add(testKey(1).String(), "198.18.0.1:51820", "", "10.244.1.0/24", "198.18.0.1", "kernel")
	f.Add("", "", "[fd00::1]:51820", "fd00:10:244:1::/64", "fd00::1", "")
	f.Add("c2VjcmV0", "198.18.0.1", "host:1", "10.244.1.0/33", "::ffff:198.18.0.1", "userspace")
	f.Add(strings.Repeat("A", 43)+"=", "[fe80::1%eth0]:1", "198.18.0.1:0", "", "fe80::1%eth0", "x")
	f.Add(strings.Repeat("_", 44), " 198.18.0.1:51820 ", "\x00", "0.0.0.0/0", "", "")
	f.Fuzz(func(t *testing.T, key, endpoint, force, cidr, address, backend string) {
		n := fatNode("fuzz", map[string]string{
			AnnotationPublicKey: key, AnnotationEndpoint: endpoint, AnnotationForceEndpoint: force, AnnotationBackend: backend,
		}, address)
		n.Spec.PodCIDRs = []string{cidr}
		got := NodeFromObject(n)

		stripped, err := Strip(n)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, NodeFromObject(stripped.(*corev1.Node)), cmpNet); diff != "" {
			t.Fatalf("conversion differs after Strip:\n%s", diff)
		}

		reasons := map[mesh.Reason]bool{}
		for _, p := range got.Problems {
			reasons[p.Reason] = true
			// A quoted value is cut to maxShown bytes, each at most four
			// characters once escaped, plus the fixed text.
			if len(p.Detail) > 4*maxShown+100 {
				t.Errorf("detail is %d bytes long", len(p.Detail))
			}
			if p.Node != "fuzz" {
				t.Errorf("problem %+v does not name the node", p)
			}
			switch p.Reason {
			case mesh.ReasonInvalidKey:
				// Only the length may show: the value could be a
				// pasted private key.
				_, perr := mesh.ParseKey(strings.TrimSpace(key))
				want := "annotation " + AnnotationPublicKey + ": the all-zero key is not a public key"
				if perr != nil {
					want = "annotation " + AnnotationPublicKey + ": " + perr.Error()
				}
				if p.Detail != want {
					t.Errorf("InvalidKey detail %q, want %q", p.Detail, want)
				}
			case mesh.ReasonInvalidEndpoint:
				if !strings.Contains(p.Detail, AnnotationEndpoint) && !strings.Contains(p.Detail, AnnotationForceEndpoint) {
					t.Errorf("InvalidEndpoint detail %q names no annotation", p.Detail)
				}
			case mesh.ReasonInvalidCIDR:
			default:
				t.Errorf("unexpected reason %s", p.Reason)
			}
		}
		if !got.PublicKey.IsZero() && reasons[mesh.ReasonInvalidKey] || got.PublicKey.IsZero() && strings.TrimSpace(key) != "" && !reasons[mesh.ReasonInvalidKey] {
			t.Errorf("key %q: PublicKey %v with problems %v", key, got.PublicKey, got.Problems)
		}
		if ep := got.Endpoint; ep.IsValid() {
			if ep.Port() == 0 || ep.Addr().Zone() != "" || ep.Addr().Is4In6() {
				t.Errorf("endpoint %v passed", ep)
			}
		} else if (strings.TrimSpace(endpoint) != "" || strings.TrimSpace(force) != "") && !reasons[mesh.ReasonInvalidEndpoint] {
			t.Errorf("endpoint %q / force %q dropped without a problem", endpoint, force)
		}
		for _, p := range got.PodCIDRs {
			if !p.IsValid() {
				t.Errorf("invalid prefix %v passed", p)
			}
		}
		for _, a := range got.HostIPs {
			if !a.IsValid() || a.Is4In6() || a.Zone() != "" {
				t.Errorf("host IP %v passed", a)
			}
		}
	})
}
