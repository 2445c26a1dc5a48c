package main

import (
	"io"
	"log/slog"
	"runtime/debug"
	"testing"
)

// TestTuneMemoryGCPercent: the agent runs its collector at agentGCPercent
// unless GOGC is in its environment, which the runtime has applied and
// which must win.
func TestTuneMemoryGCPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	env := map[string]string{"GOMEMLIMIT": "1GiB"} // leaves this process's soft limit alone
	a := &app{getenv: func(k string) string { return env[k] }}

	a.tuneMemory(log)
	if got := debug.SetGCPercent(100); got != agentGCPercent {
		t.Errorf("GC percent without GOGC: %d, want %d", got, agentGCPercent)
	}
	env["GOGC"] = "100"
	a.tuneMemory(log)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent with GOGC=100 in the environment: %d, want 100 (left alone)", got)
	}
}
