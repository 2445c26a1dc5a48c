package device

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	wgdevice "golang.zx2c4.com/wireguard/device"
)

// Rate limit for wireguard-go's log lines: some are per packet (a failed
// TUN write, an invalid packet from the network), and a flood must not
// drown the agent's other logs.
const (
	logBurst  = 10
	logWindow = time.Minute
)

// newWGLogger adapts wireguard-go's printf logger to slog: Verbosef at Debug,
// Errorf at Warn (wireguard-go reports recoverable per-packet conditions
// there), each format limited to logBurst lines per logWindow. wireguard-go
// prints peers as abbreviated public keys and never prints private keys.
func newWGLogger(l *slog.Logger) *wgdevice.Logger {
	l = l.With("source", "wireguard-go")
	rl := &rateLimiter{seen: map[string]*window{}}
	emit := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if !l.Enabled(context.Background(), level) {
				return
			}
			ok, dropped := rl.allow(format, time.Now())
			if !ok {
				return
			}
			if dropped > 0 {
				l.Log(context.Background(), level, fmt.Sprintf(format, args...), "suppressed", dropped)
				return
			}
			l.Log(context.Background(), level, fmt.Sprintf(format, args...))
		}
	}
	return &wgdevice.Logger{Verbosef: emit(slog.LevelDebug), Errorf: emit(slog.LevelWarn)}
}

// rateLimiter allows logBurst events per key in each logWindow and counts
// the rest.
type rateLimiter struct {
	mu   sync.Mutex
	seen map[string]*window
}

type window struct {
	start   time.Time
	n       int
	dropped int
}

// allow reports whether an event for key may be logged now and how many
// were suppressed since the last logged one.
func (r *rateLimiter) allow(key string, now time.Time) (ok bool, dropped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.seen[key]
	if w == nil {
		// wireguard-go has a few dozen distinct formats; the map stays small.
		w = &window{start: now}
		r.seen[key] = w
	}
	if now.Sub(w.start) >= logWindow {
		w.start, w.n = now, 0
	}
	if w.n >= logBurst {
		w.dropped++
		return false, 0
	}
	w.n++
	dropped, w.dropped = w.dropped, 0
	return true, dropped
}
