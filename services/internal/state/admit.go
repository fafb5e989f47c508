package state

import (
	"fmt"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// Admit says whether a worker may send a call to the endpoint now. In order:
// drain and force_open refuse; a throttle refuses until it ends; force_closed
// admits; an open breaker refuses until open_until; a half-open one admits
// only under a trial lease (NeedsLease), while a slot is free; a closed one
// admits. Health never refuses by itself: routing ranks an unhealthy
// endpoint last (Rank), it does not exclude it.
func Admit(s Settings, st events.EndpointState, now time.Time) Admission {
	switch st.Override {
	case events.OverrideDrain:
		return Admission{Reason: reasonWith("drained by an operator", st.OverrideReason)}
	case events.OverrideForceOpen:
		return Admission{Reason: reasonWith("breaker forced open by an operator", st.OverrideReason)}
	}
	if st.ThrottledUntil != nil && now.Before(*st.ThrottledUntil) {
		return Admission{RetryAt: *st.ThrottledUntil, Reason: "throttled until " + stamp(*st.ThrottledUntil)}
	}
	if st.Override == events.OverrideForceClosed {
		return Admission{OK: true}
	}
	switch st.Breaker {
	case events.BreakerOpen:
		a := Admission{Reason: "breaker open"}
		if st.OpenUntil != nil {
			// May be in the past when the evaluator has not yet moved the
			// breaker to half-open: retry shortly.
			a.RetryAt = *st.OpenUntil
			a.Reason += " until " + stamp(*st.OpenUntil)
		}
		return a
	case events.BreakerHalfOpen:
		free, next := freeSlots(s, st, now)
		if free > 0 {
			return Admission{OK: true, NeedsLease: true}
		}
		return Admission{NeedsLease: true, RetryAt: next,
			Reason: fmt.Sprintf("breaker half-open: all %d trial slots taken", s.Breaker.HalfOpenRequests)}
	}
	return Admission{OK: true}
}

// freeSlots counts the trial slots free in a half-open period at now (live
// leases and trial successes take one each) and, when none is, the first
// lease expiry (the earliest a slot may free up by itself).
func freeSlots(s Settings, st events.EndpointState, now time.Time) (int, time.Time) {
	h := st.HalfOpen
	if h == nil {
		return 0, time.Time{}
	}
	live := 0
	var next time.Time
	for _, l := range h.Leases {
		if now.Before(l.ExpiresAt) {
			live++
			if next.IsZero() || l.ExpiresAt.Before(next) {
				next = l.ExpiresAt
			}
		}
	}
	return s.Breaker.HalfOpenRequests - h.Successes - live, next
}

// AcquireLease takes a half-open trial slot for holder: it returns the next
// record (to be written by compare-and-set, e.g. endpointkv.Store.Update),
// the lease and true, or st and false when Admit would not grant one (the
// breaker is not half-open, an override or throttle refuses, or every slot
// is taken). Expired leases are dropped first, freeing their slots.
func AcquireLease(s Settings, st events.EndpointState, holder string, now time.Time) (events.EndpointState, events.Lease, bool) {
	if st.Breaker != events.BreakerHalfOpen || st.HalfOpen == nil {
		return st, events.Lease{}, false
	}
	if a := Admit(s, st, now); !a.OK || !a.NeedsLease {
		return st, events.Lease{}, false
	}
	next := clone(st)
	h := next.HalfOpen
	expireLeases(h, now)
	h.Granted++
	ttl := s.Breaker.TrialLeaseTTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	l := events.Lease{
		ID:        fmt.Sprintf("%s:%d:%d", st.Endpoint, h.Since.UnixNano(), h.Granted),
		Holder:    holder,
		GrantedAt: now,
		ExpiresAt: now.Add(ttl),
	}
	h.Leases = append(h.Leases, l)
	return next, l, true
}

// ReleaseLease gives back a lease its holder did not use, freeing its slot.
// It returns st and false when the lease is not held (expired, or its
// period ended).
func ReleaseLease(st events.EndpointState, id string, now time.Time) (events.EndpointState, bool) {
	if st.HalfOpen == nil {
		return st, false
	}
	for i, l := range st.HalfOpen.Leases {
		if l.ID == id {
			next := clone(st)
			h := next.HalfOpen
			h.Leases = append(h.Leases[:i:i], h.Leases[i+1:]...)
			return next, true
		}
	}
	return st, false
}

func reasonWith(what, reason string) string {
	if reason == "" {
		return what
	}
	return what + ": " + reason
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
