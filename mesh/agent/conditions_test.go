package agent_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/mesh/agent"
	"github.com/wgmesh/wgmesh/mesh/agent/agenttest"
)

// stateSource is a fakeSource that also reports a SourceState.
type stateSource struct {
	*agenttest.Source
	mu sync.Mutex
	st agent.SourceState
}

func (s *stateSource) State() agent.SourceState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// TestReconcilerConditions: a publish that keeps failing after the sync
// (the peers file still has the old key after rotate-key) is a
// PublishFailed condition until a publish succeeds, which a source change
// triggers at once; a source whose input is not in force adds
// SourceInvalid and SelfMismatch. Before, none of this was visible.
func TestReconcilerConditions(t *testing.T) {
	fs := agenttest.NewSource()
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = errors.New(`peers file p: node "self" has publicKey X, but this agent's public key is Y`)
	}
	fs.FailPublish(errs...)
	src := &stateSource{Source: fs}
	fs.Set(recSelf())
	g := newRig(t, fs, func(o *agent.Options) { o.Nodes = src })
	g.start(t)
	recUntil(t, "a PublishFailed condition", func() bool {
		cs := g.rec.Conditions()
		return len(cs) == 1 && cs[0].Reason == agent.ConditionPublishFailed && strings.Contains(cs[0].Message, "publicKey X") && !cs[0].Since.IsZero()
	})
	if !g.rec.Ready() {
		t.Log("apply readiness is separate from conditions; the agent combines them")
	}

	// The file gets the new key: the next source change publishes at once.
	fs.FailPublish()
	fs.Signal()
	recUntil(t, "no condition after a successful publish", func() bool { return len(g.rec.Conditions()) == 0 })

	since := time.Now().Add(-time.Minute)
	src.mu.Lock()
	src.st = agent.SourceState{Err: errors.New("p:3: bad"), FailingSince: since, SelfErr: errors.New("other key")}
	src.mu.Unlock()
	cs := g.rec.Conditions()
	if len(cs) != 2 || cs[0].Reason != agent.ConditionSelfMismatch || cs[1].Reason != agent.ConditionSourceInvalid || !cs[1].Since.Equal(since) {
		t.Errorf("conditions = %+v, want SelfMismatch and SourceInvalid (since %s), oldest first", cs, since)
	}
}
