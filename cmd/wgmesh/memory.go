package main

import (
	"log/slog"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// agentGCPercent is the agent's GOGC unless the environment sets one. Under
// load nearly all of the agent's heap is wireguard-go's packet buffers
// (64 KiB byte arrays the collector does not scan), bounded by
// --inflight-packets; a heap goal of 1.5 times what is live instead of
// twice takes 15-20 % off the peak resident set at no measurable
// throughput cost (bench/README.md, "The window by default").
const agentGCPercent = 50

// memLimitRatio is the share of the container's memory limit (cgroup v1 or
// v2) that becomes the Go runtime's soft memory limit, so the collector
// works harder before the kernel's OOM killer would act; the rest is left
// for what the Go heap does not count (stacks, the binary's pages).
const memLimitRatio = 0.9

// tuneMemory sets the agent's GC percent and its soft memory limit. GOGC
// and GOMEMLIMIT in the environment win: the runtime has applied them
// already and they are left alone. A process without a cgroup memory limit
// (a bare host) keeps no soft limit.
func (a *app) tuneMemory(log *slog.Logger) {
	if a.getenv("GOGC") == "" {
		debug.SetGCPercent(agentGCPercent)
	}
	if a.getenv("GOMEMLIMIT") != "" {
		return
	}
	limit, err := memlimit.Set(
		memlimit.WithRatio(memLimitRatio),
		memlimit.WithProvider(memlimit.FromCgroup),
		memlimit.WithLogger(slog.New(slog.DiscardHandler)),
	)
	switch {
	case err != nil:
		log.Info("no Go memory limit from the cgroup", "err", err)
	case limit > 0 && limit < 1<<62:
		log.Info("Go memory limit set from the cgroup's memory limit", "limit_bytes", limit, "ratio", memLimitRatio)
	}
}
