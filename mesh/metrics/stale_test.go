package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh/agent"
)

// TestStaleConfiguration: a stale condition (the peers file on disk is
// invalid, the agent's key is not the file's) makes /readyz 503 with the
// reason, shows in /status and sets wgmesh_stale; the source's last
// success is exported as a Unix timestamp. Before this, an agent running
// the last good configuration answered ready with no word about it.
func TestStaleConfiguration(t *testing.T) {
	var mu sync.Mutex
	var conds []agent.Condition
	loaded := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := New(Options{
		Ready:       func() bool { return true },
		Conditions:  func() []agent.Condition { mu.Lock(); defer mu.Unlock(); return conds },
		SourceState: func() (agent.SourceState, bool) { return agent.SourceState{LastSuccess: loaded}, true },
	})
	h := m.Handler()
	readyz := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathReadyz, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("without conditions: %s = %d %q, want 200", PathReadyz, code, body)
	}
	fams := scrape(t, h)
	if got := series(fams, "wgmesh_stale"); len(got) != 3 || got["SourceInvalid"] != 0 || got["PublishFailed"] != 0 || got["SelfMismatch"] != 0 {
		t.Errorf("wgmesh_stale without conditions = %v, want three series at 0", got)
	}
	if got := series(fams, "wgmesh_source_last_success_timestamp_seconds")[""]; got != float64(loaded.Unix()) {
		t.Errorf("wgmesh_source_last_success_timestamp_seconds = %v, want %d", got, loaded.Unix())
	}

	since := loaded.Add(time.Minute)
	mu.Lock()
	conds = []agent.Condition{{Reason: agent.ConditionPublishFailed, Message: "peers file /etc/wgmesh/peers.yaml: node \"host-a\" has publicKey X", Since: since}}
	mu.Unlock()
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "stale: PublishFailed: peers file /etc/wgmesh/peers.yaml") {
		t.Errorf("with a condition: %s = %d %q, want 503 naming it", PathReadyz, code, body)
	}
	if got := series(scrape(t, h), "wgmesh_stale"); got["PublishFailed"] != 1 || got["SourceInvalid"] != 0 {
		t.Errorf("wgmesh_stale = %v, want PublishFailed 1", got)
	}
	st, _ := m.Status(context.Background())
	if st.Ready || len(st.Conditions) != 1 || st.Conditions[0].Reason != "PublishFailed" || st.Conditions[0].Since == nil || !st.Conditions[0].Since.Equal(since) {
		t.Errorf("status: ready %v conditions %+v, want not ready with PublishFailed since %s", st.Ready, st.Conditions, since)
	}
}
