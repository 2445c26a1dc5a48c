package agent

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// stateSource is a fakeSource that also reports a SourceState.
type stateSource struct {
	*fakeSource
	st SourceState
}

func (s *stateSource) State() SourceState {
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
	fs := newFakeSource()
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = errors.New(`peers file p: node "self" has publicKey X, but this agent's public key is Y`)
	}
	fs.publishErr = errs
	src := &stateSource{fakeSource: fs}
	fs.set(recSelf())
	g := newRig(t, fs, func(o *Options) { o.Source = src })
	g.start(t)
	recUntil(t, "a PublishFailed condition", func() bool {
		cs := g.rec.Conditions()
		return len(cs) == 1 && cs[0].Reason == ConditionPublishFailed && strings.Contains(cs[0].Message, "publicKey X") && !cs[0].Since.IsZero()
	})
	if !g.rec.Ready() {
		t.Log("apply readiness is separate from conditions; the agent combines them")
	}

	// The file gets the new key: the next source change publishes at once.
	fs.mu.Lock()
	fs.publishErr = nil
	fs.mu.Unlock()
	fs.signal()
	recUntil(t, "no condition after a successful publish", func() bool { return len(g.rec.Conditions()) == 0 })

	since := time.Now().Add(-time.Minute)
	fs.mu.Lock()
	src.st = SourceState{Err: errors.New("p:3: bad"), FailingSince: since, SelfErr: errors.New("other key")}
	fs.mu.Unlock()
	cs := g.rec.Conditions()
	if len(cs) != 2 || cs[0].Reason != ConditionSelfMismatch || cs[1].Reason != ConditionSourceInvalid || !cs[1].Since.Equal(since) {
		t.Errorf("conditions = %+v, want SelfMismatch and SourceInvalid (since %s), oldest first", cs, since)
	}
}
