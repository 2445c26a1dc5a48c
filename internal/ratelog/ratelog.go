// Package ratelog decides when a repeated report deserves another log line
// or Event. Per-packet and per-reconcile paths repeat the same complaint
// many times a minute; these helpers let the first one through and keep the
// rest from drowning everything else, in one place instead of a hand-written
// map of timestamps in every package.
//
// Both types take the current time from the caller, so tests need no clock,
// and both are safe for concurrent use. The zero value is not usable: set
// the exported fields.
package ratelog

import (
	"sync"
	"time"
)

// Limiter lets Burst events per key through in each Window and counts the
// rest. The window of a key starts with its first event after the previous
// window ended, so Burst 1 means "at most once per Window per key".
type Limiter[K comparable] struct {
	// Burst is how many events per key pass in one Window (at least 1).
	Burst int
	// Window is the length of a key's window.
	Window time.Duration

	mu   sync.Mutex
	keys map[K]*window
}

type window struct {
	start      time.Time
	n          int
	suppressed int
}

// Allow reports whether an event for key at now may go out and, if so, how
// many events of key were suppressed since the last one that did (for a
// "suppressed" attribute).
func (l *Limiter[K]) Allow(key K, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = map[K]*window{}
	}
	w := l.keys[key]
	if w == nil {
		w = &window{start: now}
		l.keys[key] = w
	}
	if now.Sub(w.start) >= l.Window {
		w.start, w.n = now, 0
	}
	if w.n >= max(l.Burst, 1) {
		w.suppressed++
		return false, 0
	}
	w.n++
	suppressed, w.suppressed = w.suppressed, 0
	return true, suppressed
}

// Prune forgets the keys whose window ended before now, so a limiter keyed
// by something unbounded (node names, problems) does not grow for ever. A
// pruned key's suppressed count is dropped with it.
func (l *Limiter[K]) Prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, w := range l.keys {
		if now.Sub(w.start) >= l.Window {
			delete(l.keys, k)
		}
	}
}

// Len is the number of keys remembered (for tests of Prune's callers).
func (l *Limiter[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// Changes lets a value through when it differs from the last one seen and,
// unchanged, again once Every has passed since it last went through: for a
// state (a set of warnings, a failure kind) that is re-reported on every
// reconcile until its cause is fixed.
type Changes[V comparable] struct {
	// Every is how often an unchanged value goes through again; 0 never.
	Every time.Duration

	mu   sync.Mutex
	seen bool
	last V
	at   time.Time
}

// Allow reports whether v at now should be reported, and remembers v.
func (c *Changes[V]) Allow(v V, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen && v == c.last && (c.Every <= 0 || now.Sub(c.at) < c.Every) {
		return false
	}
	c.seen, c.last, c.at = true, v, now
	return true
}
