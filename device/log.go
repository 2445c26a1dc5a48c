package device

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	wgdevice "golang.zx2c4.com/wireguard/device"

	"github.com/wgmesh/wgmesh/internal/ratelog"
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
	// wireguard-go has a few dozen distinct formats; the limiter's map stays
	// small.
	rl := &ratelog.Limiter[string]{Burst: logBurst, Window: logWindow}
	emit := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if !l.Enabled(context.Background(), level) {
				return
			}
			ok, dropped := rl.Allow(format, time.Now())
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
