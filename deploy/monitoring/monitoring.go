// Package monitoring ships what an operator loads into Prometheus and
// Grafana to watch wgmesh: the alerting rules (alerts.yaml, unit-tested by
// alerts_test.yaml with promtool) and a dashboard (dashboard.json). The files
// are the product; this package embeds them so tests and tools read the very
// bytes that are shipped, and lists every PromQL query in them so a test can
// check each against the metrics the agent really exports.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// File names, relative to this directory.
const (
	RulesFile     = "alerts.yaml"
	RuleTestsFile = "alerts_test.yaml"
	DashboardFile = "dashboard.json"
)

//go:embed alerts.yaml
var rules []byte

//go:embed dashboard.json
var dashboard []byte

// Rules returns the alerting rules file as shipped.
func Rules() []byte { return append([]byte(nil), rules...) }

// Dashboard returns the Grafana dashboard JSON as shipped.
func Dashboard() []byte { return append([]byte(nil), dashboard...) }

// ruleFile is the part of a Prometheus rule file this package reads.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert string `yaml:"alert"`
			Expr  string `yaml:"expr"`
			For   string `yaml:"for"`
			// Labels.Severity routes the alert (critical, warning, info).
			Labels struct {
				Severity string `yaml:"severity"`
			} `yaml:"labels"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// Alert is one alerting rule: its name, expression, `for` duration ("" when
// the alert fires on the first evaluation that matches) and severity label.
type Alert struct {
	Name, Expr, For, Severity string
}

// Alerts lists the shipped alerting rules in file order. It fails when the
// file does not parse or an alert lacks a name or expression.
func Alerts() ([]Alert, error) {
	var f ruleFile
	if err := yaml.Unmarshal(rules, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", RulesFile, err)
	}
	var out []Alert
	for _, g := range f.Groups {
		for i, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				return nil, fmt.Errorf("%s: group %q rule %d: an alert needs a name and an expr", RulesFile, g.Name, i)
			}
			out = append(out, Alert{Name: r.Alert, Expr: r.Expr, For: r.For, Severity: r.Labels.Severity})
		}
	}
	return out, nil
}

// RulesWithFor returns the rules file with every `for:` present replaced by
// d (rules without one stay immediate), everything else unchanged. Tests use
// it to see an alert fire within seconds instead of minutes; d must be
// positive.
func RulesWithFor(d time.Duration) ([]byte, error) {
	if d <= 0 {
		return nil, fmt.Errorf("rules: for duration %s must be positive", d)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(rules, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", RulesFile, err)
	}
	// Prometheus durations are whole units: 1500ms, not Go's 1.5s.
	val := fmt.Sprintf("%dms", d.Milliseconds())
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "for" && n.Content[i+1].Kind == yaml.ScalarNode {
					n.Content[i+1].Value = val
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	return yaml.Marshal(&doc)
}

// Query is one PromQL expression shipped in the rules or the dashboard.
type Query struct {
	// Where names the query for error messages: "alerts.yaml: alert X" or
	// "dashboard.json: panel "Title" target A".
	Where string
	// Expr is the PromQL text with Grafana's variables replaced (see
	// grafanaVars), so Prometheus' parser accepts it.
	Expr string
}

// grafanaVars are the dashboard's variables and the values they take for
// parsing. Interval variables must become durations; the others only ever
// stand inside label-matcher strings, where any text parses.
var grafanaVars = []struct{ name, value string }{
	{"$__rate_interval", "5m"},
	{"$__interval", "1m"},
	{"$__range", "1h"},
	{"$datasource", "prometheus"},
	{"$instance", ".+"},
	{"$job", ".+"},
}

// dashboardJSON is the part of the Grafana dashboard this package reads.
type dashboardJSON struct {
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

// Queries lists every PromQL expression of the rules and the dashboard:
// alert expressions, panel targets, and the metric selectors inside the
// dashboard's label_values(...) variables. A panel target without an
// expression, or a variable that is neither, is an error.
func Queries() ([]Query, error) {
	alerts, err := Alerts()
	if err != nil {
		return nil, err
	}
	var out []Query
	for _, a := range alerts {
		out = append(out, Query{Where: RulesFile + ": alert " + a.Name, Expr: a.Expr})
	}
	var d dashboardJSON
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", DashboardFile, err)
	}
	if len(d.Panels) == 0 {
		return nil, fmt.Errorf("%s: no panels", DashboardFile)
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("%s: panel %q has no query", DashboardFile, p.Title)
		}
		for _, t := range p.Targets {
			where := fmt.Sprintf("%s: panel %q target %s", DashboardFile, p.Title, t.RefID)
			if strings.TrimSpace(t.Expr) == "" {
				return nil, fmt.Errorf("%s: empty expr", where)
			}
			out = append(out, Query{Where: where, Expr: expandVars(t.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource", "interval", "custom", "constant", "textbox":
			continue
		case "query":
		default:
			return nil, fmt.Errorf("%s: variable %q has unknown type %q", DashboardFile, v.Name, v.Type)
		}
		// label_values(SELECTOR, LABEL): the selector is PromQL.
		def := strings.TrimSpace(v.Definition)
		if !strings.HasPrefix(def, "label_values(") || !strings.HasSuffix(def, ")") {
			return nil, fmt.Errorf("%s: variable %q: want label_values(selector, label), got %q", DashboardFile, v.Name, def)
		}
		args := def[len("label_values(") : len(def)-1]
		i := strings.LastIndex(args, ",")
		if i < 0 {
			return nil, fmt.Errorf("%s: variable %q: label_values needs a selector and a label: %q", DashboardFile, v.Name, def)
		}
		out = append(out, Query{Where: fmt.Sprintf("%s: variable %q", DashboardFile, v.Name), Expr: expandVars(strings.TrimSpace(args[:i]))})
	}
	return out, nil
}

// expandVars replaces Grafana's variables, longest name first so that
// $__rate_interval is not read as $__rate followed by text.
func expandVars(s string) string {
	vars := append(grafanaVars[:0:0], grafanaVars...)
	sort.SliceStable(vars, func(i, j int) bool { return len(vars[i].name) > len(vars[j].name) })
	for _, v := range vars {
		s = strings.ReplaceAll(s, v.name, v.value)
		s = strings.ReplaceAll(s, "${"+v.name[1:]+"}", v.value)
	}
	return s
}
