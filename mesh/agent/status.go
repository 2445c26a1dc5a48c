package agent

import (
	"time"

	"github.com/wgmesh/wgmesh/mesh"
)

// Result is the outcome of one reconcile, for status and metrics.
type Result struct {
	Time     time.Time
	Duration time.Duration
	Desired  mesh.Desired
	// Err is nil when both device and router applied cleanly.
	Err error
}

// StatusSink receives every reconcile result (metrics, readiness).
type StatusSink interface {
	Observe(Result)
}

// SourceState says whether the nodes a NodeSource delivers are its current
// input. Sources that can tell (mesh/file) implement StateReporter.
type SourceState struct {
	// LastSuccess is when the source last read its whole input validly; the
	// zero Time before the first such read.
	LastSuccess time.Time
	// Err is why the current input is not in force (an unreadable or
	// invalid peers file): the last good configuration stays; nil when the
	// current input is in force.
	Err error
	// FailingSince is when Err began (zero when Err is nil).
	FailingSince time.Time
	// SelfErr is why the input in force disagrees with this agent (the
	// peers file gives this node another public key): other nodes cannot
	// reach it. nil when they agree or it is not known yet.
	SelfErr error
}

// StateReporter is a NodeSource that knows whether the view in force is
// its current input.
type StateReporter interface {
	State() SourceState
}

// ConditionReason names a Condition.
type ConditionReason string

// The reasons of Conditions. Each makes the agent not ready.
const (
	// ConditionSourceInvalid: the source's current input cannot be read or
	// is invalid; the last good configuration stays in force.
	ConditionSourceInvalid ConditionReason = "SourceInvalid"
	// ConditionSelfMismatch: the input in force gives this node another
	// public key than the agent's, so other nodes cannot reach it.
	ConditionSelfMismatch ConditionReason = "SelfMismatch"
	// ConditionPublishFailed: this node's identity (public key, endpoint)
	// could not be published, so other nodes may still use an old one.
	ConditionPublishFailed ConditionReason = "PublishFailed"
)

// Condition is a reason why the configuration in force is stale: it is not
// what the agent's current input (peers file, key file) asks for.
type Condition struct {
	Reason  ConditionReason
	Message string
	// Since is when the condition began.
	Since time.Time
}
