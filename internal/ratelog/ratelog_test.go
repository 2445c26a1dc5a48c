package ratelog

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLimiterBurstPerWindowPerKey(t *testing.T) {
	l := &Limiter[string]{Burst: 2, Window: time.Minute}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		key        string
		at         time.Duration
		ok         bool
		suppressed int
	}
	for i, s := range []step{
		{"a", 0, true, 0},
		{"a", time.Second, true, 0},
		{"a", 2 * time.Second, false, 0}, // burst spent
		{"b", 3 * time.Second, true, 0},  // keys are independent
		{"a", 59 * time.Second, false, 0},
		{"a", time.Minute, true, 2}, // new window: reports the two it held back
		{"a", time.Minute + time.Second, true, 0},
		{"a", time.Minute + 2*time.Second, false, 0},
	} {
		ok, sup := l.Allow(s.key, t0.Add(s.at))
		if ok != s.ok || sup != s.suppressed {
			t.Errorf("step %d (%s at %v): Allow = %v, %d; want %v, %d", i, s.key, s.at, ok, sup, s.ok, s.suppressed)
		}
	}
}

// TestLimiterOncePerWindow is Burst 1, the "report each problem at most
// once per interval" use.
func TestLimiterOncePerWindow(t *testing.T) {
	l := &Limiter[int]{Burst: 1, Window: 10 * time.Minute}
	t0 := time.Unix(1000, 0)
	for i, c := range []struct {
		at time.Duration
		ok bool
	}{{0, true}, {time.Minute, false}, {9 * time.Minute, false}, {10 * time.Minute, true}, {11 * time.Minute, false}} {
		if ok, _ := l.Allow(7, t0.Add(c.at)); ok != c.ok {
			t.Errorf("event %d at %v: %v, want %v", i, c.at, ok, c.ok)
		}
	}
}

func TestLimiterPrune(t *testing.T) {
	l := &Limiter[string]{Burst: 1, Window: time.Minute}
	t0 := time.Unix(0, 0)
	l.Allow("old", t0)
	l.Allow("new", t0.Add(50*time.Second))
	l.Prune(t0.Add(time.Minute))
	if _, ok := l.keys["old"]; ok || l.Len() != 1 {
		t.Errorf("an expired key was kept (%d keys)", l.Len())
	}
	if _, ok := l.keys["new"]; !ok {
		t.Error("a key inside its window was pruned")
	}
	// A pruned key starts afresh.
	if ok, _ := l.Allow("old", t0.Add(time.Minute)); !ok {
		t.Error("a pruned key was not allowed")
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := &Limiter[string]{Burst: 5, Window: time.Hour}
	now := time.Unix(0, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	passed := map[string]int{}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				k := fmt.Sprint((g + i) % 3)
				if ok, _ := l.Allow(k, now); ok {
					mu.Lock()
					passed[k]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for k, n := range passed {
		if n != 5 {
			t.Errorf("key %s: %d passed, want the burst of 5", k, n)
		}
	}
}

func TestChanges(t *testing.T) {
	c := &Changes[string]{Every: 10 * time.Minute}
	t0 := time.Unix(0, 0)
	for i, s := range []struct {
		v  string
		at time.Duration
		ok bool
	}{
		{"w1", 0, true},                 // first
		{"w1", time.Minute, false},      // unchanged
		{"w2", 2 * time.Minute, true},   // changed
		{"w1", 3 * time.Minute, true},   // changed back
		{"w1", 12 * time.Minute, false}, // 9 min since it went through
		{"w1", 13 * time.Minute, true},  // Every passed
		{"", 14 * time.Minute, true},    // cleared is a change too
		{"w1", 15 * time.Minute, true},  // and its return
	} {
		if got := c.Allow(s.v, t0.Add(s.at)); got != s.ok {
			t.Errorf("step %d (%q at %v): %v, want %v", i, s.v, s.at, got, s.ok)
		}
	}
	never := &Changes[int]{}
	if !never.Allow(1, t0) || never.Allow(1, t0.Add(1000*time.Hour)) || !never.Allow(2, t0) {
		t.Error("Every 0: want only changes through")
	}
}
