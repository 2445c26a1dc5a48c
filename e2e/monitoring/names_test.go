// Package monitoring_test checks deploy/monitoring's PromQL against the
// agent. It lives in the e2e module because Prometheus' own PromQL parser
// (github.com/prometheus/prometheus/promql/parser) comes with the whole
// Prometheus module, which the product's go.mod should not carry.
package monitoring_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/wgmesh/wgmesh/deploy/monitoring"
	"github.com/wgmesh/wgmesh/device"
	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/metrics"
	"github.com/wgmesh/wgmesh/routing"
)

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// exported gathers the agent's registry — metrics.New, the constructor
// cmd/wgmesh's agent uses, with every optional source wired so that the
// scrape-time series (per-peer, drops, stale, source) are present too — and
// returns each series name a query may use with the labels it carries.
// Histograms and summaries expand into their _bucket/_sum/_count series.
func exported(t *testing.T) map[string][]string {
	t.Helper()
	var k mesh.Key
	k[0] = 1
	m := metrics.New(metrics.Options{
		NodeName: "node1", Interface: "wgmesh0", Backend: mesh.Backend("userspace"), ListenPort: 51820,
		Version: "v0", Commit: "c0",
		Stats: func(context.Context) ([]device.PeerStats, error) {
			return []device.PeerStats{{PublicKey: k, ReceiveBytes: 1, TransmitBytes: 2, LastHandshake: time.Unix(1, 0)}}, nil
		},
		Router: func() routing.Status { return routing.Status{IngressDropped: 1, EgressDropped: 1} },
		Inflight: func() []device.InflightState {
			return []device.InflightState{{Direction: "tx", Limit: 128}, {Direction: "rx", Limit: 128}}
		},
		PublicKey:  func() (mesh.Key, error) { return k, nil },
		Ready:      func() bool { return true },
		Conditions: func() []agent.Condition { return nil },
		SourceState: func() (agent.SourceState, bool) {
			return agent.SourceState{LastSuccess: time.Unix(1, 0)}, true
		},
	})
	m.Observe(agent.Result{Time: time.Now(), Duration: time.Millisecond, Desired: mesh.Desired{
		Peers: []mesh.Peer{{Node: "node2", PublicKey: k, Endpoint: netip.MustParseAddrPort("198.18.0.12:51820")}},
	}})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather the agent's registry: %v", err)
	}
	out := map[string][]string{}
	for _, f := range fams {
		seen := map[string]bool{}
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				seen[l.GetName()] = true
			}
		}
		lbls := append([]string{"__name__"}, targetLabels...)
		for l := range seen {
			lbls = append(lbls, l)
		}
		sort.Strings(lbls)
		name := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"] = append(slices.Clone(lbls), "le")
			out[name+"_sum"], out[name+"_count"] = lbls, lbls
		case dto.MetricType_SUMMARY:
			out[name] = append(slices.Clone(lbls), "quantile")
			out[name+"_sum"], out[name+"_count"] = lbls, lbls
		default:
			out[name] = lbls
		}
	}
	return out
}

// check parses expr with Prometheus' parser and returns what is wrong with
// it: a parse error, a selector without a metric name, a metric the agent
// does not export, or a label matcher on a label the metric does not carry.
func check(expr string, names map[string][]string) []string {
	e, err := parser.ParseExpr(expr)
	if err != nil {
		return []string{"does not parse: " + err.Error()}
	}
	var bad []string
	selectors := 0
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		selectors++
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			bad = append(bad, fmt.Sprintf("selector %s names no metric", vs))
			return nil
		}
		lbls, ok := names[name]
		if !ok {
			bad = append(bad, fmt.Sprintf("metric %s is not exported by the agent", name))
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if !slices.Contains(lbls, m.Name) {
				bad = append(bad, fmt.Sprintf("metric %s has no label %q (it has %s)", name, m.Name, strings.Join(lbls, ", ")))
			}
		}
		return nil
	})
	if selectors == 0 {
		bad = append(bad, "selects no metric")
	}
	return bad
}

// TestQueriesUseExportedMetrics: every alert expression, dashboard panel
// query and dashboard variable parses with Prometheus' PromQL parser and
// names only metrics (and labels) the agent's registry exports, so a
// renamed metric fails here instead of silencing an alert.
func TestQueriesUseExportedMetrics(t *testing.T) {
	names := exported(t)
	qs, err := monitoring.Queries()
	if err != nil {
		t.Fatal(err)
	}
	alerts, panels := 0, 0
	for _, q := range qs {
		if strings.HasPrefix(q.Where, monitoring.RulesFile) {
			alerts++
		} else {
			panels++
		}
		for _, b := range check(q.Expr, names) {
			t.Errorf("%s: %s\n\tquery: %s", q.Where, b, q.Expr)
		}
	}
	t.Logf("measured: %d alert expressions and %d dashboard queries checked against %d exported series names", alerts, panels, len(names))
	if alerts == 0 || panels == 0 {
		t.Errorf("%d alert and %d dashboard queries: the check ran on nothing", alerts, panels)
	}
}

// TestCheckCatches: the checker itself rejects what it must, so the test
// above cannot pass by accepting everything.
func TestCheckCatches(t *testing.T) {
	names := exported(t)
	for _, name := range []string{"wgmesh_nodes_unencrypted", "wgmesh_reconcile_duration_seconds_bucket", "wgmesh_peer_last_handshake_timestamp_seconds", "wgmesh_stale", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes"} {
		if _, ok := names[name]; !ok {
			t.Errorf("exported() lacks %s: the registry was not gathered completely", name)
		}
	}
	for expr, want := range map[string]string{
		`wgmesh_nodes_unencrypted > 0`:                          "",
		`max by (reason) (wgmesh_problems{reason="NoKey"}) > 0`: "",
		`wgmesh_node_unencrypted > 0`:                           "not exported",
		`rate(wgmesh_reconcile_total{outcome="error"}[5m])`:     `no label "outcome"`,
		`{reason="NoKey"}`:                                      "names no metric",
		`sum(rate(wgmesh_reconcile_total[5m]`:                   "does not parse",
		`vector(1)`:                                             "selects no metric",
		`histogram_quantile(0.9, rate(wgmesh_reconcile_duration_seconds_bucket{le="1"}[5m]))`: "",
	} {
		got := strings.Join(check(expr, names), "; ")
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("check(%q) = %q, want %q", expr, got, want)
		}
	}
}
