package router

import (
	"sync"
	"time"
)

// DefaultSuspectFor is how long an endpoint whose call just failed in this
// process stays de-prioritised, unless a success clears it sooner.
const DefaultSuspectFor = 5 * time.Second

// Local is one process's own, immediate view of endpoint trouble. It never
// replaces the evaluator's verdict in KV; it bridges the milliseconds until
// that verdict arrives through the watch:
//
//   - an endpoint whose call just failed here is "suspect" for SuspectFor:
//     the router prefers any non-suspect endpoint over it (it is used only
//     when nothing else admits), and a success here clears it;
//   - a 429 seen here throttles the endpoint and its quota group until the
//     reset the upstream announced, exactly as the evaluator will.
//
// It is safe for concurrent use.
type Local struct {
	// SuspectFor overrides DefaultSuspectFor when positive. Set it before use.
	SuspectFor time.Duration

	groups map[string]string // endpoint -> quota group ("" = none)

	mu sync.Mutex
	m  map[string]*localEntry
}

type localEntry struct {
	suspectUntil   time.Time
	throttledUntil time.Time
}

// NewLocal makes an empty Local; groups maps endpoint names to quota groups.
func NewLocal(groups map[string]string) *Local {
	return &Local{groups: groups, m: map[string]*localEntry{}}
}

func (l *Local) entry(name string) *localEntry {
	e := l.m[name]
	if e == nil {
		e = &localEntry{}
		l.m[name] = e
	}
	return e
}

// Failed records that a call to name failed (the endpoint's fault) at now.
func (l *Local) Failed(name string, now time.Time) {
	d := l.SuspectFor
	if d <= 0 {
		d = DefaultSuspectFor
	}
	l.mu.Lock()
	l.entry(name).suspectUntil = now.Add(d)
	l.mu.Unlock()
}

// Succeeded records that a call to name succeeded: it is no longer suspect.
func (l *Local) Succeeded(name string) {
	l.mu.Lock()
	if e := l.m[name]; e != nil {
		e.suspectUntil = time.Time{}
	}
	l.mu.Unlock()
}

// Throttled records a 429 from name that lasts until until; it applies to
// every member of name's quota group. It only ever extends a throttle.
func (l *Local) Throttled(name string, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := func(n string) {
		if e := l.entry(n); until.After(e.throttledUntil) {
			e.throttledUntil = until
		}
	}
	set(name)
	if g := l.groups[name]; g != "" {
		for n, gn := range l.groups {
			if gn == g && n != name {
				set(n)
			}
		}
	}
}

func (l *Local) suspect(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[name]
	return e != nil && now.Before(e.suspectUntil)
}

func (l *Local) throttledUntil(name string, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[name]
	if e == nil || !now.Before(e.throttledUntil) {
		return time.Time{}, false
	}
	return e.throttledUntil, true
}
