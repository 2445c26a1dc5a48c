package file

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/wgmesh/wgmesh/mesh"
)

// MaxFileSize bounds what Parse and the Source accept. A peers file of ten
// thousand nodes is well under 2 MiB; anything far larger is a mistake (the
// wrong file) and must not make the agent allocate without bound.
const MaxFileSize = 16 << 20

// maxErrors bounds how many defects one Parse reports, so a wholly wrong file
// yields a readable log line rather than thousands.
const maxErrors = 20

// maxNameLen is the longest node name accepted: the Kubernetes limit for a
// Node name (a DNS subdomain), so names stay usable as metric labels.
const maxNameLen = 253

// Error is one defect of a peers file. Its text is "path:line: field: reason",
// the form editors and CI annotate.
type Error struct {
	Path string
	// Line is 1-based; 0 when the YAML library could not say where.
	Line int
	// Field locates the value, e.g. "nodes[2].podCIDRs[0]".
	Field  string
	Reason string
}

func (e *Error) Error() string {
	if e.Line <= 0 {
		return fmt.Sprintf("%s: %s: %s", e.Path, e.Field, e.Reason)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.Path, e.Line, e.Field, e.Reason)
}

// File is a parsed peers file.
type File struct {
	// Nodes in file order; each node's Created is its position (see Parse).
	Nodes []mesh.Node
	// ClusterCIDRs are the cluster's pod ranges (the top-level
	// clusterCIDRs field), canonical and unique; nil if the field is absent.
	ClusterCIDRs []netip.Prefix
}

// Parse decodes and validates a peers file and returns its nodes; see
// ParseFile.
func Parse(path string, data []byte) (nodes []mesh.Node, err error) {
	f, err := ParseFile(path, data)
	if err != nil {
		return nil, err
	}
	return f.Nodes, nil
}

// ParseFile decodes and validates a peers file. The path is only used in
// error messages. Every defect makes the whole file invalid (a half-applied
// file would silently drop nodes); the returned error joins up to 20 *Error
// values, sorted by line, so the operator can fix them in one go.
//
// ParseFile is strict: unknown fields, duplicate fields, YAML aliases,
// values of the wrong type, non-canonical prefixes and duplicate names are
// errors, and so are cluster ranges covering a whole address family and a
// clusterCIDRs field after nodes (a truncated file must not keep nodes but
// lose the ranges).
// Duplicate keys and endpoints are not: Derive settles them. Each node's
// Created is its entry's position, entry i (0-based) at i seconds after the
// Unix epoch, so an earlier entry is the senior one.
func ParseFile(path string, data []byte) (File, error) {
	p := &parser{path: path}
	if len(data) > MaxFileSize {
		p.fail(0, "file", fmt.Sprintf("%d bytes is larger than the %d byte limit", len(data), MaxFileSize))
		return File{}, p.err()
	}
	root, ok := p.decode(data)
	if !ok {
		return File{}, p.err()
	}
	f := p.file(root)
	if e := p.err(); e != nil {
		return File{}, e
	}
	return f, nil
}

type parser struct {
	path string
	errs []*Error
}

func (p *parser) fail(line int, field, reason string) {
	p.errs = append(p.errs, &Error{Path: p.path, Line: line, Field: field, Reason: reason})
}

func (p *parser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].Line < p.errs[j].Line })
	errs := make([]error, 0, maxErrors+1)
	for i, e := range p.errs {
		if i == maxErrors {
			errs = append(errs, fmt.Errorf("%s: %d more errors not shown", p.path, len(p.errs)-maxErrors))
			break
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// yamlLine pulls the line out of the YAML library's syntax errors, which read
// "yaml: line 7: did not find expected key".
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// decode parses data into its single document's root node.
func (p *parser) decode(data []byte) (root *yaml.Node, ok bool) {
	// The YAML library is third-party code fed with operator input; a panic in
	// it must become an invalid file (and the last good configuration stays),
	// not a crashed agent.
	defer func() {
		if r := recover(); r != nil {
			p.fail(0, "yaml", fmt.Sprintf("the YAML decoder failed: %v", r))
			root, ok = nil, false
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.fail(0, "file", "the file is empty; write \"nodes: []\" to remove every node on purpose")
			return nil, false
		}
		p.yamlError(data, err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.fail(extra.Line, "file", "more than one YAML document; put every node under the one \"nodes:\" list")
		return nil, false
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(data, err)
		return nil, false
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		p.fail(doc.Line, "file", "the file is empty; write \"nodes: []\" to remove every node on purpose")
		return nil, false
	}
	return doc.Content[0], true
}

// yamlError records a syntax error of data at the line it is on.
func (p *parser) yamlError(data []byte, err error) {
	msg := strings.TrimPrefix(strings.TrimSpace(err.Error()), "yaml: ")
	if m := yamlLine.FindStringSubmatch(strings.TrimSpace(err.Error())); m != nil {
		msg = m[2]
	}
	p.fail(syntaxErrorLine(data), "yaml", msg)
}

// syntaxErrorLine returns the 1-based line a YAML syntax error in data is on.
// The library reports the start of the enclosing block instead (often line 1
// of a peers file, which is one big mapping), so search for the boundary
// between the longest prefix of whole lines that still parses and the first
// that does not: every prefix containing the bad line fails, and block YAML
// is complete at every line end. A flow collection or quoted string spanning
// lines before the error can make the search stop at its first line, which
// still points the operator near the defect. Binary search keeps this to
// log2(lines) parses.
func syntaxErrorLine(data []byte) int {
	ends := []int{0} // ends[k] is the length of the first k lines
	for i, b := range data {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if ends[len(ends)-1] != len(data) {
		ends = append(ends, len(data))
	}
	lo, hi := 0, len(ends)-1 // prefix of lo lines parses, prefix of hi lines does not
	if parses(data[:ends[hi]]) {
		return 0
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if parses(data[:ends[mid]]) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// parses reports whether data is syntactically valid YAML (any number of
// documents).
func parses(data []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

// file walks the root mapping: the fields are "nodes" and "clusterCIDRs".
func (p *parser) file(root *yaml.Node) File {
	var f File
	if isNull(root) {
		p.fail(root.Line, "file", "the file is empty; write \"nodes: []\" to remove every node on purpose")
		return f
	}
	seenNodes := false
	p.fields(root, "file", func(key, v *yaml.Node) {
		switch key.Value {
		case "nodes":
			seenNodes = true
			f.Nodes = p.nodeList(v)
		case "clusterCIDRs":
			if seenNodes {
				// A file read while being written ends early; with the
				// ranges first, no truncated version keeps nodes but
				// loses the ranges.
				p.fail(key.Line, key.Value, "must come before \"nodes\", so that a file read while it is being written never loses it; move it to the top")
				return
			}
			f.ClusterCIDRs = p.clusterCIDRs(v, key.Value)
		default:
			p.fail(key.Line, key.Value, "unknown field; the top-level fields are \"clusterCIDRs\" and \"nodes\"")
		}
	})
	if !seenNodes && root.Kind == yaml.MappingNode {
		p.fail(root.Line, "nodes", "required field missing; write \"nodes: []\" for an empty mesh")
	}
	return f
}

// clusterCIDRs decodes the list of cluster pod ranges.
func (p *parser) clusterCIDRs(v *yaml.Node, field string) []netip.Prefix {
	return uniqueList(p, v, field, func(s string) (netip.Prefix, string) {
		pfx, err := mesh.ParseClusterCIDR(s)
		if err != nil {
			return pfx, err.Error()
		}
		return pfx, ""
	})
}

func (p *parser) nodeList(v *yaml.Node) []mesh.Node {
	if isNull(v) {
		return []mesh.Node{}
	}
	if !p.kind(v, "nodes", yaml.SequenceNode, "a list of nodes") {
		return nil
	}
	nodes := make([]mesh.Node, 0, len(v.Content))
	firstLine := map[string]int{}
	for i, item := range v.Content {
		field := fmt.Sprintf("nodes[%d]", i)
		n, nameLine := p.node(item, field)
		// The entry's position is its seniority (see mesh.Node.Created): of
		// two entries with one key, the earlier keeps it.
		n.Created = time.Unix(int64(i), 0).UTC()
		if n.Name != "" {
			if first, dup := firstLine[n.Name]; dup {
				p.fail(nameLine, field+".name", fmt.Sprintf("duplicate node name %q, first used at line %d; names must be unique", n.Name, first))
			} else {
				firstLine[n.Name] = nameLine
			}
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// node decodes one list entry; nameLine is where its name is (for duplicate
// reports).
func (p *parser) node(v *yaml.Node, field string) (n mesh.Node, nameLine int) {
	nameLine = v.Line
	if !p.kind(v, field, yaml.MappingNode, "a node (name, publicKey, endpoint, podCIDRs, hostIPs, labels)") {
		return n, nameLine
	}
	p.fields(v, field, func(key, val *yaml.Node) {
		f := field + "." + key.Value
		switch key.Value {
		case "name":
			if s, ok := p.str(val, f); ok {
				nameLine = val.Line
				if reason := checkName(s); reason != "" {
					p.fail(val.Line, f, reason)
				} else {
					n.Name = s
				}
			}
		case "publicKey":
			s, ok := p.str(val, f)
			if !ok || s == "" {
				return
			}
			k, err := mesh.ParseKey(s)
			switch {
			case err != nil:
				p.fail(val.Line, f, fmt.Sprintf("%v; use the output of \"wgmesh pubkey\" (or \"wg pubkey\") on that host", err))
			case k.IsZero():
				p.fail(val.Line, f, "the all-zero key is not a public key; leave the field out if the host has no key yet")
			default:
				n.PublicKey = k
			}
		case "endpoint":
			s, ok := p.str(val, f)
			if !ok || s == "" {
				return
			}
			ep, reason := parseEndpoint(s)
			if reason != "" {
				p.fail(val.Line, f, reason)
				return
			}
			n.Endpoint = ep
		case "podCIDRs":
			n.PodCIDRs = p.prefixes(val, f)
		case "hostIPs":
			n.HostIPs = p.addrs(val, f)
		case "labels":
			n.Labels = p.labels(val, f)
		default:
			p.fail(key.Line, f, "unknown field; known fields are name, publicKey, endpoint, podCIDRs, hostIPs, labels")
		}
	})
	if n.Name == "" && !p.hasField(v, "name") {
		p.fail(v.Line, field+".name", "required field missing; every node needs a unique name")
	}
	return n, nameLine
}

func (p *parser) prefixes(v *yaml.Node, field string) []netip.Prefix {
	return uniqueList(p, v, field, func(s string) (netip.Prefix, string) {
		pfx, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			return pfx, fmt.Sprintf("%q is not a CIDR prefix such as 10.244.1.0/24 or fd00:10:244:1::/64", s)
		case pfx.Addr().Is4In6():
			return pfx, fmt.Sprintf("%q is an IPv4-mapped IPv6 prefix; write the IPv4 prefix", s)
		case pfx != pfx.Masked():
			return pfx, fmt.Sprintf("%q has host bits set; did you mean %s?", s, pfx.Masked())
		}
		return pfx, ""
	})
}

func (p *parser) addrs(v *yaml.Node, field string) []netip.Addr {
	return uniqueList(p, v, field, func(s string) (netip.Addr, string) {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			return a, fmt.Sprintf("%q is not an IP address such as 198.18.0.1", s)
		case a.Zone() != "":
			return a, fmt.Sprintf("%q has an IPv6 zone; host IPs must be routable addresses", s)
		case a.Is4In6():
			return a, fmt.Sprintf("%q is an IPv4-mapped IPv6 address; write the IPv4 address", s)
		case a.IsUnspecified() || a.IsMulticast():
			return a, fmt.Sprintf("%q is not a unicast host address", s)
		}
		return a, ""
	})
}

// uniqueList decodes a list of strings with parse, which returns the value
// or the reason it is invalid; every invalid item and every repeated value
// is reported with its line, and the rest is returned in order.
func uniqueList[T interface {
	comparable
	String() string
}](p *parser, v *yaml.Node, field string, parse func(s string) (T, string)) []T {
	var out []T
	first := map[T]int{}
	p.list(v, field, func(i int, item *yaml.Node) {
		f := fmt.Sprintf("%s[%d]", field, i)
		s, ok := p.str(item, f)
		if !ok {
			return
		}
		x, reason := parse(s)
		if reason != "" {
			p.fail(item.Line, f, reason)
			return
		}
		if l, dup := first[x]; dup {
			p.fail(item.Line, f, fmt.Sprintf("%s is listed twice (first at line %d)", x, l))
			return
		}
		first[x] = item.Line
		out = append(out, x)
	})
	return out
}

func (p *parser) labels(v *yaml.Node, field string) map[string]string {
	if isNull(v) {
		return nil
	}
	out := map[string]string{}
	p.fields(v, field, func(key, val *yaml.Node) {
		if s, ok := p.str(val, field+"."+key.Value); ok {
			out[key.Value] = s
		}
	})
	return out
}

// parseEndpoint accepts "ip:port" and "[ipv6]:port" with a non-zero port; it
// returns a reason when the text is not usable.
func parseEndpoint(s string) (netip.AddrPort, string) {
	ep, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Sprintf("%q is not IP:port such as 198.18.0.1:51820 or [fd00::1]:51820 (host names are not resolved)", s)
	}
	a := ep.Addr()
	switch {
	case ep.Port() == 0:
		return netip.AddrPort{}, fmt.Sprintf("%q has port 0; use the port the agent listens on (default 51822)", s)
	case a.Zone() != "":
		return netip.AddrPort{}, fmt.Sprintf("%q has an IPv6 zone; use a routable address", s)
	case a.IsUnspecified() || a.IsMulticast():
		return netip.AddrPort{}, fmt.Sprintf("%q is not a unicast address other hosts can send to", s)
	}
	if a.Is4In6() {
		ep = netip.AddrPortFrom(a.Unmap(), ep.Port())
	}
	return ep, ""
}

// checkName returns why s is not a usable node name, or "".
func checkName(s string) string {
	if s == "" {
		return "must not be empty; every node needs a unique name"
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("longer than %d characters", maxNameLen)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Sprintf("%q contains white space or control characters", s)
		}
	}
	return ""
}

// fields calls fn for each key of mapping v in order, rejecting non-string
// and duplicate keys.
func (p *parser) fields(v *yaml.Node, field string, fn func(key *yaml.Node, val *yaml.Node)) {
	if !p.kind(v, field, yaml.MappingNode, "a mapping of fields") {
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			p.fail(k.Line, field, fmt.Sprintf("field names must be plain strings, got %s", describe(k)))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			p.fail(k.Line, field+"."+k.Value, fmt.Sprintf("duplicate field (first at line %d)", first))
			continue
		}
		seen[k.Value] = k.Line
		if val.Kind == yaml.AliasNode {
			p.fail(val.Line, field+"."+k.Value, "YAML aliases are not supported; write the value out")
			continue
		}
		fn(k, val)
	}
}

func (p *parser) hasField(v *yaml.Node, name string) bool {
	if v.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		if v.Content[i].Kind == yaml.ScalarNode && v.Content[i].Value == name {
			return true
		}
	}
	return false
}

// list calls fn for each item of sequence v; null means an empty list.
func (p *parser) list(v *yaml.Node, field string, fn func(i int, item *yaml.Node)) {
	if isNull(v) {
		return
	}
	if !p.kind(v, field, yaml.SequenceNode, "a list") {
		return
	}
	for i, item := range v.Content {
		if item.Kind == yaml.AliasNode {
			p.fail(item.Line, fmt.Sprintf("%s[%d]", field, i), "YAML aliases are not supported; write the value out")
			continue
		}
		fn(i, item)
	}
}

// str returns the text of a string scalar; null is the empty string. Numbers
// and booleans are rejected rather than silently turned into text, because
// YAML changes them (0755, 1e3, yes).
func (p *parser) str(v *yaml.Node, field string) (string, bool) {
	if isNull(v) {
		return "", true
	}
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
		p.fail(v.Line, field, fmt.Sprintf("want a string, got %s; put the value in double quotes", describe(v)))
		return "", false
	}
	return v.Value, true
}

func (p *parser) kind(v *yaml.Node, field string, want yaml.Kind, what string) bool {
	if v.Kind == want {
		return true
	}
	if v.Kind == yaml.AliasNode {
		p.fail(v.Line, field, "YAML aliases are not supported; write the value out")
		return false
	}
	p.fail(v.Line, field, fmt.Sprintf("want %s, got %s", what, describe(v)))
	return false
}

func isNull(v *yaml.Node) bool {
	return v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null"
}

func describe(v *yaml.Node) string {
	switch v.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		switch v.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!bool":
			return fmt.Sprintf("the boolean %s", v.Value)
		case "!!int", "!!float":
			return fmt.Sprintf("the number %s", v.Value)
		case "!!str":
			return fmt.Sprintf("the string %q", v.Value)
		}
		return fmt.Sprintf("a %s value", v.ShortTag())
	}
	return "a YAML document"
}
