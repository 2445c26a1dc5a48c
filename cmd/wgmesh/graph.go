package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/kube"
	"github.com/wgmesh/wgmesh/mesh/metrics"
)

// nodeState is how a node's pod traffic travels, the fill colour of its box.
type nodeState string

const (
	// stateEncrypted: the node is in the mesh; its pod traffic is tunnelled.
	stateEncrypted nodeState = "encrypted"
	// stateUnencrypted: pod traffic to the node is sent in plaintext
	// (unmanaged, or keyless with --allow-unencrypted).
	stateUnencrypted nodeState = "unencrypted"
	// stateBlocked: the node is left out of the mesh (no key, a duplicate
	// key, ...) and in strict mode unreachable, never plaintext.
	stateBlocked nodeState = "blocked"
)

// edgeKind is what joins two nodes.
type edgeKind string

const (
	// edgeTunnel: a WireGuard peer whose handshake state the local agent
	// reports (Edge.Handshake).
	edgeTunnel edgeKind = "tunnel"
	// edgeExpected: a tunnel the cluster's input calls for; nobody here
	// knows its handshake (the cluster-wide view).
	edgeExpected edgeKind = "expected"
	// edgePlaintext: pod traffic between the two nodes is not encrypted.
	edgePlaintext edgeKind = "plaintext"
)

// graphNode is one box of the picture.
type graphNode struct {
	Name  string
	State nodeState
	// Self marks the node whose agent reported the view.
	Self bool
	// Why are the problem reasons behind an unencrypted or blocked state.
	Why []string
	// Warnings are reasons that leave the node in the mesh
	// (DuplicateEndpoint).
	Warnings []string
}

// graphEdge is one line; A sorts before B unless A is the local node.
type graphEdge struct {
	A, B string
	Kind edgeKind
	// Handshake is the time of the last handshake; the zero time when none
	// has completed. Only for edgeTunnel.
	Handshake time.Time
}

// meshGraph is the picture as data, so it can be built from a cluster or
// from one agent and golden-tested apart from Graphviz.
type meshGraph struct {
	Title string
	Nodes []graphNode
	Edges []graphEdge
}

// clusterGraph draws verify's report: every node, coloured by what the
// agents' rules make of its input, a line for each tunnel the input calls
// for, and a red line from each unencrypted node to every node of the mesh.
func clusterGraph(rep kube.VerifyReport, title string) meshGraph {
	g := meshGraph{Title: title}
	why := map[string][]string{}
	warn := map[string][]string{}
	for _, p := range rep.Problems {
		why[p.Node] = appendUnique(why[p.Node], string(p.Reason))
	}
	for _, p := range rep.Warnings {
		warn[p.Node] = appendUnique(warn[p.Node], string(p.Reason))
	}
	unenc := map[string]bool{}
	for _, n := range rep.Unencrypted {
		unenc[n] = true
	}
	var meshed, plain []string
	for _, name := range rep.NodeNames {
		n := graphNode{Name: name, State: stateEncrypted, Why: why[name], Warnings: warn[name]}
		switch {
		case unenc[name]:
			n.State = stateUnencrypted
			if len(n.Why) == 0 {
				// verify drops Unmanaged problems: the operator chose them.
				n.Why = []string{string(mesh.ReasonUnmanaged)}
			}
			plain = append(plain, name)
		case len(n.Why) > 0:
			n.State = stateBlocked
		default:
			meshed = append(meshed, name)
		}
		g.Nodes = append(g.Nodes, n)
	}
	for i, a := range meshed {
		for _, b := range meshed[i+1:] {
			g.Edges = append(g.Edges, graphEdge{A: a, B: b, Kind: edgeExpected})
		}
	}
	for _, p := range plain {
		for _, m := range meshed {
			a, b := p, m
			if b < a {
				a, b = b, a
			}
			g.Edges = append(g.Edges, graphEdge{A: a, B: b, Kind: edgePlaintext})
		}
	}
	sortEdges(g.Edges)
	return g
}

// localGraph draws one agent's view from its /status document: the local
// node, a line to each peer with the handshake's age, a red line to each
// unencrypted node, and the nodes left out.
func localGraph(st metrics.Status) meshGraph {
	self := st.Node
	if self == "" {
		self = "this host (" + st.Interface + ")"
	}
	g := meshGraph{Title: "seen by " + self}
	nodes := map[string]*graphNode{}
	get := func(name string) *graphNode {
		if n, ok := nodes[name]; ok {
			return n
		}
		n := &graphNode{Name: name, State: stateEncrypted}
		nodes[name] = n
		return n
	}
	get(self).Self = true
	for _, p := range st.Peers {
		name := p.Node
		if name == "" {
			// Without an agent names are unknown; the key's start tells
			// peers apart.
			name = "key " + shortKey(p.PublicKey)
		}
		get(name)
		e := graphEdge{A: self, B: name, Kind: edgeTunnel}
		if p.LastHandshake != nil {
			e.Handshake = *p.LastHandshake
		}
		g.Edges = append(g.Edges, e)
	}
	for _, name := range st.Unencrypted {
		get(name).State = stateUnencrypted
		g.Edges = append(g.Edges, graphEdge{A: self, B: name, Kind: edgePlaintext})
	}
	for _, p := range st.Problems {
		n := get(p.Node)
		if p.Warning {
			n.Warnings = appendUnique(n.Warnings, p.Reason)
			continue
		}
		n.Why = appendUnique(n.Why, p.Reason)
		if n.State == stateEncrypted && !n.Self {
			n.State = stateBlocked
		}
	}
	names := make([]string, 0, len(nodes))
	for name := range nodes {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		g.Nodes = append(g.Nodes, *nodes[name])
	}
	sortEdges(g.Edges)
	return g
}

func appendUnique(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func shortKey(k string) string {
	if len(k) > 8 {
		return k[:8] + "…"
	}
	return k
}

// sortEdges orders edges by their ends so the output is stable.
func sortEdges(es []graphEdge) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].A != es[j].A {
			return es[i].A < es[j].A
		}
		if es[i].B != es[j].B {
			return es[i].B < es[j].B
		}
		return es[i].Kind < es[j].Kind
	})
}

// Colours, colour-blind safe (Okabe–Ito's green, vermillion, orange, grey).
const (
	colourOK    = "#009E73"
	colourBad   = "#D55E00"
	colourWarn  = "#E69F00"
	colourGrey  = "#8C8C8C"
	fillOK      = "#CCEFE5"
	fillBad     = "#F7D9C4"
	fillBlocked = "#E6E6E6"
)

// renderDOT writes g as a Graphviz graph. now dates the handshakes; a
// handshake older than staleHandshake (verify's limit) is drawn orange, a
// missing one dashed vermillion.
func renderDOT(w io.Writer, g meshGraph, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "graph wgmesh {\n")
	fmt.Fprintf(&b, "\tgraph [label=%s, labelloc=t, fontname=\"Helvetica\", fontsize=14, layout=circo, pad=0.3];\n",
		dotQuote("wgmesh — "+g.Title))
	fmt.Fprintf(&b, "\tnode [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=11, penwidth=1.5];\n")
	fmt.Fprintf(&b, "\tedge [fontname=\"Helvetica\", fontsize=9, penwidth=1.5];\n")
	for _, n := range g.Nodes {
		label := n.Name
		var attrs []string
		switch n.State {
		case stateEncrypted:
			attrs = append(attrs, `color="`+colourOK+`"`, `fillcolor="`+fillOK+`"`)
			if len(n.Why) > 0 {
				label += "\n" + strings.Join(n.Why, ", ")
				attrs[0] = `color="` + colourBad + `"`
			}
		case stateUnencrypted:
			label += "\nunencrypted: " + strings.Join(n.Why, ", ")
			attrs = append(attrs, `color="`+colourBad+`"`, `fillcolor="`+fillBad+`"`)
		case stateBlocked:
			label += "\nleft out: " + strings.Join(n.Why, ", ")
			attrs = append(attrs, `color="`+colourGrey+`"`, `fillcolor="`+fillBlocked+`"`, `style="rounded,filled,dashed"`)
		}
		if len(n.Warnings) > 0 {
			label += "\nwarning: " + strings.Join(n.Warnings, ", ")
			attrs[0] = `color="` + colourWarn + `"`
		}
		if n.Self {
			attrs = append(attrs, "peripheries=2")
			label += "\n(this agent)"
		}
		fmt.Fprintf(&b, "\t%s [label=%s, %s];\n", dotQuote(n.Name), dotQuote(label), strings.Join(attrs, ", "))
	}
	for _, e := range g.Edges {
		var attrs []string
		switch e.Kind {
		case edgeExpected:
			attrs = append(attrs, `color="`+colourOK+`"`)
		case edgePlaintext:
			attrs = append(attrs, `color="`+colourBad+`"`, `style=dashed`, `label="plaintext"`, `fontcolor="`+colourBad+`"`)
		case edgeTunnel:
			switch {
			case e.Handshake.IsZero():
				attrs = append(attrs, `color="`+colourBad+`"`, `style=dashed`, `label="no handshake"`, `fontcolor="`+colourBad+`"`)
			case now.Sub(e.Handshake) > staleHandshake:
				attrs = append(attrs, `color="`+colourWarn+`"`, `label=`+dotQuote(age(now.Sub(e.Handshake))+" ago"), `fontcolor="`+colourWarn+`"`)
			default:
				attrs = append(attrs, `color="`+colourOK+`"`, `label=`+dotQuote(age(now.Sub(e.Handshake))+" ago"))
			}
		}
		fmt.Fprintf(&b, "\t%s -- %s [%s];\n", dotQuote(e.A), dotQuote(e.B), strings.Join(attrs, ", "))
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// dotQuote makes s a DOT string: quotes and backslashes escaped, newlines
// as centred line breaks.
func dotQuote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	s = strings.ReplaceAll(s, "\n", `\n`)
	return `"` + s + `"`
}

// errNoDot is returned for -o svg without Graphviz.
var errNoDot = errors.New("-o svg needs Graphviz's dot in $PATH (Debian: apt-get install graphviz); -o dot prints the graph for rendering elsewhere")

// renderSVG pipes DOT text through Graphviz's dot.
func renderSVG(ctx context.Context, w io.Writer, dotText []byte) error {
	dot, err := exec.LookPath("dot")
	if err != nil {
		return errNoDot
	}
	cmd := exec.CommandContext(ctx, dot, "-Tsvg")
	cmd.Stdin = bytes.NewReader(dotText)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s -Tsvg: %w: %s", dot, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (a *app) graphCommand() *cobra.Command {
	var (
		cluster     bool
		kubeconfig  string
		unmanaged   string
		allowUnenc  bool
		iface       string
		metricsAddr string
		output      string
	)
	cmd := &cobra.Command{
		Use:   "graph",
		Short: "Draw the mesh as a Graphviz graph (DOT, or SVG with -o svg)",
		Long: `graph draws the mesh: one box per node, green when its pod traffic is
encrypted, vermillion when it is sent in plaintext (and why: unmanaged, no key
with --allow-unencrypted), grey and dashed when the node is left out of the
mesh (no key, a duplicate key, ...: unreachable in strict mode).

Without --cluster it draws the local agent's view (its /status, as 'wgmesh
status'): a line to each peer labelled with the age of the last handshake,
orange when older than 3 minutes, dashed when none completed. With --cluster
(or --kubeconfig) it lists every Node as 'wgmesh verify' does and draws each
tunnel the cluster's input calls for.

The output is Graphviz DOT; -o svg renders it with Graphviz's dot.`,
		Example: `  wgmesh graph | dot -Tpng > mesh.png
  wgmesh graph --cluster -o svg > mesh.svg`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "dot" && output != "svg" {
				return usagef("-o %q: want dot or svg", output)
			}
			if err := checkInterfaceFlag(iface); err != nil {
				return err
			}
			if output == "svg" {
				// Fail before reading anything: the answer would be lost.
				if _, err := exec.LookPath("dot"); err != nil {
					return errNoDot
				}
			}
			var g meshGraph
			if cluster || kubeconfig != "" {
				o, err := clusterOptions(unmanaged, allowUnenc)
				if err != nil {
					return err
				}
				client, rc, err := cliKubeClient(kubeconfig)
				if err != nil {
					return err
				}
				rep, err := kube.Verify(cmd.Context(), client, o)
				if err != nil {
					return fmt.Errorf("read the cluster at %s: %w", rc.Host, err)
				}
				g = clusterGraph(rep, fmt.Sprintf("cluster, %d nodes", rep.Nodes))
			} else {
				base, err := metricsURL(metricsAddr)
				if err != nil {
					return usagef("--metrics-addr %q: %v", metricsAddr, err)
				}
				st, err := a.readStatus(cmd.Context(), base, iface, device.Inspect)
				if err != nil {
					return err
				}
				g = localGraph(st)
			}
			var dotText bytes.Buffer
			if err := renderDOT(&dotText, g, time.Now()); err != nil {
				return err
			}
			if output == "dot" {
				_, err := a.out.Write(dotText.Bytes())
				return err
			}
			return renderSVG(cmd.Context(), a.out, dotText.Bytes())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cluster, "cluster", false, "draw the whole cluster from the API server instead of the local agent's view")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; implies --cluster (default: $KUBECONFIG, then ~/.kube/config, then in-cluster, as kubectl)")
	f.StringVar(&unmanaged, "unmanaged-nodes", "", "with --cluster: the agents' --unmanaged-nodes selector")
	f.BoolVar(&allowUnenc, "allow-unencrypted", false, "with --cluster: the agents' --allow-unencrypted")
	f.StringVar(&iface, "interface", device.DefaultName, "local WireGuard interface")
	f.StringVar(&metricsAddr, "metrics-addr", fmt.Sprintf(":%d", metrics.DefaultPort), "the local agent's --metrics-addr")
	f.StringVarP(&output, "output", "o", "dot", "output format: dot or svg")
	return cmd
}
