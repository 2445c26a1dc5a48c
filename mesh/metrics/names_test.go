package metrics

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestMetricNamesAndFamilies: the first scrape of a fresh agent has
// wgmesh_build_info, HELP and TYPE for every vector (no series yet is not
// an excuse), timestamps named _timestamp_seconds, and histogram bounds
// that read as written (no 0.0030000000000000005).
func TestMetricNamesAndFamilies(t *testing.T) {
	m := New(Options{Version: "v1.2.3", Commit: "abc123", Stats: (&fakeDevice{}).Stats})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathMetrics, nil))
	body := rec.Body.String()
	for _, name := range []string{"wgmesh_problems", "wgmesh_warnings", "wgmesh_reconcile_total", "wgmesh_reconcile_duration_seconds", "wgmesh_build_info"} {
		if !strings.Contains(body, "# HELP "+name+" ") || !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("first scrape lacks HELP/TYPE of %s", name)
		}
	}
	if !strings.Contains(body, `wgmesh_build_info{commit="abc123",goversion="go`) || !strings.Contains(body, `version="v1.2.3"} 1`) {
		t.Errorf("wgmesh_build_info missing or mislabelled:\n%s", grepLines(body, "build_info"))
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "wgmesh_") && strings.Contains(line, "handshake") && !strings.Contains(line, "_timestamp_seconds") {
			t.Errorf("timestamp metric not named _timestamp_seconds: %s", line)
		}
		if i := strings.Index(line, `le="`); i >= 0 && strings.HasPrefix(line, "wgmesh_reconcile_duration_seconds_bucket") {
			le := line[i+4 : strings.Index(line[i+4:], `"`)+i+4]
			if le == "+Inf" {
				continue
			}
			if len(le) > 6 {
				t.Errorf("histogram bound %s is not a round number", le)
			}
			if _, err := strconv.ParseFloat(le, 64); err != nil {
				t.Errorf("histogram bound %q: %v", le, err)
			}
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
