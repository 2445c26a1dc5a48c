package file

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/wgmesh/wgmesh/mesh"
)

// Two fixed public keys (any 32 bytes are a syntactically valid key).
const (
	keyA = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
	keyB = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
)

func mustKey(t *testing.T, s string) mesh.Key {
	t.Helper()
	k, err := mesh.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestParseValid(t *testing.T) {
	data := `# the lab
nodes:
  - name: host-a
    publicKey: "` + keyA + `"
    endpoint: "198.18.0.1:51820"
    podCIDRs: ["10.244.1.0/24", "fd00:10:244:1::/64"]
    hostIPs: ["198.18.0.1"]
    labels: {role: edge}
  - name: host-b
    endpoint: "[fd00:198:18::2]:51821"
    podCIDRs:
      - 10.244.2.0/24
  - name: host-c
    publicKey: ` + keyB + `
    podCIDRs: []
    hostIPs:
`
	got, err := Parse("peers.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []mesh.Node{
		{
			Name:      "host-a",
			PublicKey: mustKey(t, keyA),
			Endpoint:  netip.MustParseAddrPort("198.18.0.1:51820"),
			PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")},
			HostIPs:   []netip.Addr{netip.MustParseAddr("198.18.0.1")},
			Labels:    map[string]string{"role": "edge"},
			Created:   time.Unix(0, 0).UTC(),
		},
		{
			Name:     "host-b",
			Endpoint: netip.MustParseAddrPort("[fd00:198:18::2]:51821"),
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
			Created:  time.Unix(1, 0).UTC(),
		},
		// Entries are ordered by position: the earlier is the senior.
		{Name: "host-c", PublicKey: mustKey(t, keyB), Created: time.Unix(2, 0).UTC()},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
}

func TestParseEmptyList(t *testing.T) {
	for _, data := range []string{"nodes: []\n", "nodes:\n", "nodes: # none\n"} {
		got, err := Parse("p.yaml", []byte(data))
		if err != nil {
			t.Errorf("Parse(%q): %v", data, err)
		}
		if got == nil || len(got) != 0 {
			t.Errorf("Parse(%q) = %v, want an empty non-nil list", data, got)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		// want are substrings of the error, each "path:line: field: reason"
		// prefix as an operator would see it.
		want []string
	}{
		{"empty file", "", []string{"p.yaml: file: the file is empty"}},
		{"comments only", "# nothing\n", []string{"p.yaml: file: the file is empty"}},
		{"null document", "~\n", []string{"p.yaml:1: file: the file is empty"}},
		{"syntax", "nodes:\n  - name: a\n   bad: [\n", []string{"p.yaml:3: yaml: "}},
		{"syntax deep in the file", "nodes:\n  - name: a\n    podCIDRs: [\"10.244.1.0/24\",\n      \"10.244.2.0/24\"]\n  - name: b\n    hostIPs: [\"198.18.0.2\"]\n  - name: c\n    endpoint: \"198.18.0.3:1\n", []string{"p.yaml:8: yaml: "}},
		{"tab indentation", "nodes:\n  - name: a\n\t- name: b\n", []string{"p.yaml:3: yaml: "}},
		{"bad indentation", "nodes:\n  - name: a\n  endpoint: \"198.18.0.1:1\"\n  - name: b\n", []string{"p.yaml:3: yaml: did not find expected '-' indicator"}},
		{"top-level list", "- name: a\n", []string{"p.yaml:1: file: want a mapping of fields, got a list"}},
		{"missing nodes", "peers: []\n", []string{"p.yaml:1: peers: unknown field", "p.yaml:1: nodes: required field missing"}},
		{"nodes not a list", "nodes: host-a\n", []string{"p.yaml:1: nodes: want a list of nodes, got the string \"host-a\""}},
		{"two documents", "nodes: []\n---\nnodes: []\n", []string{"p.yaml:2: file: more than one YAML document"}},
		{"unknown field", "nodes:\n  - name: a\n    pubkey: x\n", []string{"p.yaml:3: nodes[0].pubkey: unknown field"}},
		{"duplicate field", "nodes:\n  - name: a\n    name: b\n", []string{"p.yaml:3: nodes[0].name: duplicate field (first at line 2)"}},
		{"missing name", "nodes:\n  - endpoint: \"198.18.0.1:1\"\n", []string{"p.yaml:2: nodes[0].name: required field missing"}},
		{"empty name", "nodes:\n  - name: \"\"\n", []string{"p.yaml:2: nodes[0].name: must not be empty"}},
		{"name with space", "nodes:\n  - name: \"a b\"\n", []string{"p.yaml:2: nodes[0].name: \"a b\" contains white space"}},
		{"name is a number", "nodes:\n  - name: 12\n", []string{"p.yaml:2: nodes[0].name: want a string, got the number 12; put the value in double quotes"}},
		{"duplicate name", "nodes:\n  - name: a\n  - name: b\n  - name: a\n", []string{"p.yaml:4: nodes[2].name: duplicate node name \"a\", first used at line 2"}},
		{"bad key", "nodes:\n  - name: a\n    publicKey: nope\n", []string{"p.yaml:3: nodes[0].publicKey: invalid WireGuard key"}},
		{"zero key", "nodes:\n  - name: a\n    publicKey: \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n", []string{"p.yaml:3: nodes[0].publicKey: the all-zero key"}},
		{"endpoint without port", "nodes:\n  - name: a\n    endpoint: 198.18.0.1\n", []string{"p.yaml:3: nodes[0].endpoint: \"198.18.0.1\" is not IP:port"}},
		{"endpoint host name", "nodes:\n  - name: a\n    endpoint: \"host-a:51820\"\n", []string{"host names are not resolved"}},
		{"endpoint port 0", "nodes:\n  - name: a\n    endpoint: \"198.18.0.1:0\"\n", []string{"p.yaml:3: nodes[0].endpoint: \"198.18.0.1:0\" has port 0"}},
		{"endpoint unspecified", "nodes:\n  - name: a\n    endpoint: \"0.0.0.0:51820\"\n", []string{"p.yaml:3: nodes[0].endpoint: \"0.0.0.0:51820\" is not a unicast address"}},
		{"unquoted v6 endpoint", "nodes:\n  - name: a\n    endpoint: [fd00::1]:51820\n", []string{"p.yaml:3: "}},
		{"cidr host bits", "nodes:\n  - name: a\n    podCIDRs:\n      - 10.244.1.0/24\n      - 10.244.2.1/24\n", []string{"p.yaml:5: nodes[0].podCIDRs[1]: \"10.244.2.1/24\" has host bits set; did you mean 10.244.2.0/24?"}},
		{"cidr garbage", "nodes:\n  - name: a\n    podCIDRs: [\"10.244.1.0\"]\n", []string{"p.yaml:3: nodes[0].podCIDRs[0]: \"10.244.1.0\" is not a CIDR prefix"}},
		{"cidr twice", "nodes:\n  - name: a\n    podCIDRs: [\"10.244.1.0/24\", \"10.244.1.0/24\"]\n", []string{"p.yaml:3: nodes[0].podCIDRs[1]: 10.244.1.0/24 is listed twice (first at line 3)"}},
		{"cidr not a list", "nodes:\n  - name: a\n    podCIDRs: 10.244.1.0/24\n", []string{"p.yaml:3: nodes[0].podCIDRs: want a list, got the string"}},
		{"cidr mapped", "nodes:\n  - name: a\n    podCIDRs: [\"::ffff:10.244.1.0/120\"]\n", []string{"IPv4-mapped"}},
		{"host ip garbage", "nodes:\n  - name: a\n    hostIPs:\n      - 198.18.0.300\n", []string{"p.yaml:4: nodes[0].hostIPs[0]: \"198.18.0.300\" is not an IP address"}},
		{"host ip zone", "nodes:\n  - name: a\n    hostIPs: [\"fe80::1%eth0\"]\n", []string{"has an IPv6 zone"}},
		{"host ip multicast", "nodes:\n  - name: a\n    hostIPs: [\"224.0.0.1\"]\n", []string{"is not a unicast host address"}},
		{"labels not a map", "nodes:\n  - name: a\n    labels: [x]\n", []string{"p.yaml:3: nodes[0].labels: want a mapping of fields, got a list"}},
		{"label value bool", "nodes:\n  - name: a\n    labels: {edge: true}\n", []string{"p.yaml:3: nodes[0].labels.edge: want a string, got the boolean true"}},
		{"alias", "nodes:\n  - name: &n a\n  - name: *n\n", []string{"p.yaml:3: nodes[1].name: YAML aliases are not supported"}},
		{"alias list item", "nodes:\n  - &x {name: a}\n  - *x\n", []string{"p.yaml:3: nodes[1]: YAML aliases are not supported"}},
		{"non-string key", "nodes:\n  - name: a\n    1: b\n", []string{"p.yaml:3: nodes[0]: field names must be plain strings, got the number 1"}},
		{"cluster cidr host bits", "clusterCIDRs: [\"10.244.0.1/16\"]\nnodes: []\n", []string{"p.yaml:1: clusterCIDRs[0]: \"10.244.0.1/16\" has host bits set; did you mean 10.244.0.0/16?"}},
		{"cluster cidr whole family", "clusterCIDRs:\n  - \"0.0.0.0/0\"\nnodes: []\n", []string{"p.yaml:2: clusterCIDRs[0]: \"0.0.0.0/0\" covers a whole address family"}},
		{"cluster cidr twice", "clusterCIDRs: [\"10.244.0.0/16\", \"10.244.0.0/16\"]\nnodes: []\n", []string{"p.yaml:1: clusterCIDRs[1]: 10.244.0.0/16 is listed twice (first at line 1)"}},
		{"cluster cidr not a list", "clusterCIDRs: 10.244.0.0/16\nnodes: []\n", []string{"p.yaml:1: clusterCIDRs: want a list, got the string"}},
		{"cluster cidr garbage", "clusterCIDRs: [\"\", 7]\nnodes: []\n", []string{"p.yaml:1: clusterCIDRs[0]: \"\" is not a CIDR prefix", "p.yaml:1: clusterCIDRs[1]: want a string"}},
		{"cluster cidrs after nodes", "nodes: []\nclusterCIDRs: [\"10.244.0.0/16\"]\n", []string{"p.yaml:2: clusterCIDRs: must come before \"nodes\""}},
		{"cluster cidrs without nodes", "clusterCIDRs: [\"10.244.0.0/16\"]\n", []string{"p.yaml:1: nodes: required field missing"}},
		{"several errors sorted by line", "nodes:\n  - name: a\n    endpoint: x\n  - name: b\n    podCIDRs: [y]\n",
			[]string{"p.yaml:3: nodes[0].endpoint", "p.yaml:5: nodes[1].podCIDRs[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, err := Parse("p.yaml", []byte(tt.data))
			if err == nil {
				t.Fatalf("Parse succeeded with %v, want an error", nodes)
			}
			if nodes != nil {
				t.Errorf("Parse returned nodes %v with an error", nodes)
			}
			msg := err.Error()
			last := -1
			for _, w := range tt.want {
				i := strings.Index(msg, w)
				if i < 0 {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
					continue
				}
				if i < last {
					t.Errorf("error %q: %q is out of line order", msg, w)
				}
				last = i
			}
			var fe *Error
			if !errors.As(err, &fe) && !strings.Contains(msg, ": yaml: ") {
				t.Errorf("error %q wraps no *Error", msg)
			}
		})
	}
}

func TestParseErrorCap(t *testing.T) {
	var b strings.Builder
	b.WriteString("nodes:\n")
	for range 50 {
		b.WriteString("  - name: \"\"\n")
	}
	_, err := Parse("p.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("want an error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != maxErrors+1 || !strings.Contains(lines[maxErrors], "30 more errors not shown") {
		t.Errorf("got %d lines, last %q; want %d errors and a summary", len(lines), lines[len(lines)-1], maxErrors)
	}
}

func TestParseTooLarge(t *testing.T) {
	_, err := Parse("p.yaml", make([]byte, MaxFileSize+1))
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("got %v, want a size error", err)
	}
}

// TestParseMappedEndpoint checks that an IPv4-mapped endpoint is stored as
// plain IPv4, so it compares equal to the agent's own IPv4 endpoint.
func TestParseMappedEndpoint(t *testing.T) {
	nodes, err := Parse("p.yaml", []byte("nodes:\n  - name: a\n    endpoint: \"[::ffff:198.18.0.1]:51820\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParseAddrPort("198.18.0.1:51820"); nodes[0].Endpoint != want {
		t.Errorf("endpoint %v, want %v", nodes[0].Endpoint, want)
	}
}

func TestParseFileClusterCIDRs(t *testing.T) {
	f, err := ParseFile("p.yaml", []byte("clusterCIDRs:\n  - \"10.244.0.0/16\"\n  - fd00:10:244::/48\nnodes:\n  - name: a\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
	if !slices.Equal(f.ClusterCIDRs, want) || len(f.Nodes) != 1 {
		t.Errorf("ParseFile = %+v, want cluster CIDRs %v and one node", f, want)
	}
	for _, data := range []string{"nodes: []\n", "clusterCIDRs: []\nnodes: []\n", "clusterCIDRs:\nnodes: []\n"} {
		f, err := ParseFile("p.yaml", []byte(data))
		if err != nil || len(f.ClusterCIDRs) != 0 {
			t.Errorf("ParseFile(%q) = %+v, %v; want no cluster CIDRs", data, f, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("nodes:\n  - name: host-a\n    publicKey: \"" + keyA + "\"\n    endpoint: \"198.18.0.1:51820\"\n    podCIDRs: [\"10.244.1.0/24\", \"fd00:10:244:1::/64\"]\n    hostIPs: [\"198.18.0.1\"]\n    labels: {a: b}\n"))
	f.Add([]byte("nodes: []\n"))
	f.Add([]byte(""))
	f.Add([]byte("nodes:\n  - &a {name: x}\n  - *a\n"))
	f.Add([]byte("nodes:\n  - name: a\n    name: a\n---\n"))
	f.Add([]byte("nodes: [{name: a, podCIDRs: [10.244.1.1/24]}, {name: a}]"))
	f.Add([]byte("{nodes: [[[]]], 1: 2, ? [x] : y}"))
	f.Add([]byte("clusterCIDRs: [\"10.244.0.0/16\", \"fd00:10:244::/48\"]\nnodes:\n  - name: host-a\n    podCIDRs: [\"10.244.1.0/24\"]\n"))
	f.Add([]byte("clusterCIDRs: [\"0.0.0.0/0\", \"10.244.0.1/16\", \"::ffff:10.0.0.0/104\", 10.244.0.0/16, 10.244.0.0/16, ~, [x]]\nnodes: []\n"))
	f.Add([]byte("clusterCIDRs: &c [\"10.244.0.0/16\"]\nclusterCIDRs: *c\nnodes: []\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseFile("f.yaml", data)
		nodes := file.Nodes
		if err == nil {
			seen := map[netip.Prefix]bool{}
			for _, p := range file.ClusterCIDRs {
				if !p.IsValid() || p != p.Masked() || p.Bits() == 0 || p.Addr().Is4In6() || seen[p] {
					t.Fatalf("cluster CIDR %v accepted", p)
				}
				seen[p] = true
			}
		} else if file.ClusterCIDRs != nil {
			t.Fatalf("cluster CIDRs %v returned with error %v", file.ClusterCIDRs, err)
		}
		if err != nil {
			if nodes != nil {
				t.Fatalf("nodes %v returned with error %v", nodes, err)
			}
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error %q does not start with the path", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, n := range nodes {
			if n.Name == "" || seen[n.Name] {
				t.Fatalf("empty or duplicate name %q accepted", n.Name)
			}
			seen[n.Name] = true
			for _, p := range n.PodCIDRs {
				if !p.IsValid() || p != p.Masked() {
					t.Fatalf("node %s: non-canonical prefix %v accepted", n.Name, p)
				}
			}
			if n.Endpoint.IsValid() && n.Endpoint.Port() == 0 {
				t.Fatalf("node %s: endpoint %v without port accepted", n.Name, n.Endpoint)
			}
		}
	})
}

// TestParseEarlierEntryKeepsSharedKey: the entry order is the seniority
// Derive uses, so of two entries publishing one key the earlier keeps it,
// whatever the names.
func TestParseEarlierEntryKeepsSharedKey(t *testing.T) {
	data := "nodes:\n" +
		"  - {name: self, publicKey: \"" + keyB + "\", endpoint: \"198.18.0.9:51820\", podCIDRs: [10.244.9.0/24]}\n" +
		"  - {name: zz-first, publicKey: \"" + keyA + "\", endpoint: \"198.18.0.1:51820\", podCIDRs: [10.244.1.0/24]}\n" +
		"  - {name: aa-second, publicKey: \"" + keyA + "\", endpoint: \"198.18.0.2:51820\", podCIDRs: [10.244.2.0/24]}\n"
	nodes, err := Parse("p.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	d := mesh.Derive(mesh.Node{Name: "self", PublicKey: mustKey(t, keyB)}, nodes, mesh.DeriveOptions{IPv4: true})
	if len(d.Peers) != 1 || d.Peers[0].Node != "zz-first" {
		t.Errorf("peers = %+v, want only zz-first", d.Peers)
	}
	if len(d.Problems) != 1 || d.Problems[0].Node != "aa-second" || d.Problems[0].Reason != mesh.ReasonDuplicateKey {
		t.Errorf("problems = %+v, want DuplicateKey on aa-second", d.Problems)
	}
}
