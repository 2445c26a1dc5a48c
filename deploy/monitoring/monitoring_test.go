package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// promtool returns the path of Prometheus' promtool. Without it the test is
// skipped on a developer's machine but fails in CI ($CI set, as .ci/run
// does), where a skipped rules test would pass unseen.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("promtool not found but $CI is set: install Debian's prometheus package (.ci/run does): %v", err)
	}
	t.Skipf("promtool not found (Debian: apt-get install --no-install-recommends prometheus): %v", err)
	return ""
}

// TestPromtool checks the shipped rules with promtool and runs their unit
// tests (alerts_test.yaml): every alert fires on the input it is for, at the
// time its `for` says, with the labels and text the file promises, and not
// on the inputs next to it.
func TestPromtool(t *testing.T) {
	pt := promtool(t)
	for _, args := range [][]string{{"check", "rules", RulesFile}, {"test", "rules", RuleTestsFile}} {
		out, err := exec.Command(pt, args...).CombinedOutput()
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
		if err != nil {
			t.Errorf("promtool %s: %v", strings.Join(args, " "), err)
		}
	}
}

// TestRulesWithFor: every `for` becomes the given duration, the alerts and
// their expressions stay, and the result still passes promtool.
func TestRulesWithFor(t *testing.T) {
	orig, err := Alerts()
	if err != nil {
		t.Fatal(err)
	}
	out, err := RulesWithFor(1500 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(out, &f); err != nil {
		t.Fatal(err)
	}
	var got []Alert
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			got = append(got, Alert{Name: r.Alert, Expr: r.Expr, For: r.For})
		}
	}
	if len(got) != len(orig) {
		t.Fatalf("%d alerts after the rewrite, want %d", len(got), len(orig))
	}
	withFor := 0
	for i, a := range got {
		if a.Name != orig[i].Name || a.Expr != orig[i].Expr {
			t.Errorf("alert %d changed: %+v, was %+v", i, a, orig[i])
		}
		switch {
		case orig[i].For == "" && a.For != "":
			t.Errorf("alert %s had no for and got %q", a.Name, a.For)
		case orig[i].For != "" && a.For != "1500ms":
			t.Errorf("alert %s: for %q, want 1500ms", a.Name, a.For)
		case orig[i].For != "":
			withFor++
		}
	}
	if withFor == 0 {
		t.Error("no alert has a for: the rewrite was not exercised")
	}
	if _, err := RulesWithFor(0); err == nil {
		t.Error("RulesWithFor(0) succeeded")
	}
	if _, err := exec.LookPath("promtool"); err == nil {
		p := filepath.Join(t.TempDir(), "rules.yaml")
		if err := os.WriteFile(p, out, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("promtool", "check", "rules", p).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules on the rewritten rules: %v\n%s", err, out)
		}
	}
}

// TestEveryAlertTested: each alert appears in alerts_test.yaml both firing
// (a non-empty exp_alerts) and silent (an empty one), so no rule ships with
// only half its behaviour pinned.
func TestEveryAlertTested(t *testing.T) {
	alerts, err := Alerts()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(RuleTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatalf("%s: %v", RuleTestsFile, err)
	}
	firing, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				firing[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, a := range alerts {
		if !firing[a.Name] {
			t.Errorf("%s: alert %s is never expected to fire", RuleTestsFile, a.Name)
		}
		if !silent[a.Name] {
			t.Errorf("%s: alert %s is never expected to stay silent", RuleTestsFile, a.Name)
		}
	}
}

// TestDashboard: the dashboard is valid JSON whose every panel and target
// uses the datasource variable (so it imports into any Grafana), panel ids
// are unique, and Queries finds a query in every panel.
func TestDashboard(t *testing.T) {
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID         int             `json:"id"`
			Title      string          `json:"title"`
			Datasource json.RawMessage `json:"datasource"`
			Targets    []struct {
				Datasource json.RawMessage `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard(), &d); err != nil {
		t.Fatalf("%s: %v", DashboardFile, err)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid: re-imports would duplicate it")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: duplicate id %d", p.Title, p.ID)
		}
		ids[p.ID] = true
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("panel %q: datasource %s, want the ${datasource} variable", p.Title, p.Datasource)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(string(tg.Datasource), "${datasource}") {
				t.Errorf("panel %q: target datasource %s, want the ${datasource} variable", p.Title, tg.Datasource)
			}
		}
	}
	qs, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Panels {
		if !slices.ContainsFunc(qs, func(q Query) bool { return strings.Contains(q.Where, "panel \""+p.Title+"\"") }) {
			t.Errorf("Queries has nothing for panel %q", p.Title)
		}
	}
	for _, q := range qs {
		if strings.Contains(q.Expr, "$") {
			t.Errorf("%s: unexpanded Grafana variable in %q", q.Where, q.Expr)
		}
	}
}

// TestQueriesErrors: a broken dashboard is reported with the file and the
// panel, not skipped.
func TestQueriesErrors(t *testing.T) {
	saved := dashboard
	t.Cleanup(func() { dashboard = saved })
	for name, tc := range map[string]struct{ json, want string }{
		"no panels": {`{"panels": []}`, "dashboard.json: no panels"},
		"no query":  {`{"panels": [{"title": "Empty", "targets": []}]}`, `panel "Empty" has no query`},
		"empty":     {`{"panels": [{"title": "P", "targets": [{"refId": "A", "expr": " "}]}]}`, `panel "P" target A: empty expr`},
		"variable": {`{"panels": [{"title": "P", "targets": [{"refId": "A", "expr": "up"}]}],
			"templating": {"list": [{"name": "x", "type": "query", "definition": "query_result(up)"}]}}`, `variable "x": want label_values`},
		"not json": {`{`, "dashboard.json: unexpected end"},
	} {
		dashboard = []byte(tc.json)
		_, err := Queries()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one containing %q", name, err, tc.want)
		}
	}
	dashboard = saved
	if _, err := Queries(); err != nil {
		t.Errorf("shipped dashboard: %v", err)
	}
}

// TestREADMEListsAlerts: README's "Monitoring" section names every alert,
// and no alert that does not exist; each alert's table row gives the
// rule's severity and, when it has one, its `for` duration.
func TestREADMEListsAlerts(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n## Monitoring\n")
	if i < 0 {
		t.Fatal(`README.md has no "## Monitoring" section`)
	}
	sec := s[i+1:]
	if j := strings.Index(sec[3:], "\n## "); j >= 0 {
		sec = sec[:j+3]
	}
	alerts, err := Alerts()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range alerts {
		names = append(names, a.Name)
		if !strings.Contains(sec, "`"+a.Name+"`") {
			t.Errorf("README Monitoring does not list alert %s", a.Name)
			continue
		}
		row := regexp.MustCompile("(?m)^\\| `" + a.Name + "` \\| ([a-z]+) \\|(.*)$").FindStringSubmatch(sec)
		switch {
		case row == nil:
			t.Errorf("README Monitoring has no table row | `%s` | severity | ... |", a.Name)
		case row[1] != a.Severity:
			t.Errorf("README Monitoring: %s has severity %s, %s says %q", a.Name, row[1], RulesFile, a.Severity)
		case a.For != "" && !strings.Contains(row[2], "for "+a.For):
			t.Errorf("README Monitoring: %s's row does not say \"for %s\" (%s's for:): %s", a.Name, a.For, RulesFile, row[2])
		}
	}
	for _, m := range regexp.MustCompile("`(Wgmesh[A-Za-z]+)`").FindAllStringSubmatch(sec, -1) {
		if !slices.Contains(names, m[1]) {
			t.Errorf("README Monitoring lists %s, which %s does not define", m[1], RulesFile)
		}
	}
}
