package state_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// halfOpen returns a clock whose endpoint just went half-open.
func halfOpen(t *testing.T) *clock {
	t.Helper()
	c := newClock(t, seedSettings())
	c.apply(repeat(5, fail(events.ClassConnect))...)
	c.advance(time.Minute)
	c.tick()
	if c.st.Breaker != events.BreakerHalfOpen {
		t.Fatalf("breaker = %s, want half_open", c.st.Breaker)
	}
	return c
}

func (c *clock) acquire(holder string) (events.Lease, bool) {
	c.t.Helper()
	next, l, ok := state.AcquireLease(c.s, c.st, holder, c.now)
	if ok {
		c.check(next)
		c.st = next
	} else if diff := cmp.Diff(c.st, next); diff != "" {
		c.t.Errorf("a refused AcquireLease changed the record:\n%s", diff)
	}
	return l, ok
}

func trial(l events.Lease, class events.ErrorClass) state.Signal {
	sig := outcome(class, 10)
	sig.Outcome.TrialLease = l.ID
	return sig
}

func TestLeases(t *testing.T) {
	t.Run("exactly half_open_requests leases per period", func(t *testing.T) {
		c := halfOpen(t)
		ids := map[string]bool{}
		for i := range 3 {
			l, ok := c.acquire("w")
			if !ok {
				t.Fatalf("lease %d refused", i+1)
			}
			if ids[l.ID] {
				t.Errorf("lease id %s granted twice", l.ID)
			}
			ids[l.ID] = true
			if want := c.now.Add(c.s.Breaker.TrialLeaseTTL); !l.ExpiresAt.Equal(want) {
				t.Errorf("lease expires %v, want now + trial_lease_ttl", l.ExpiresAt)
			}
		}
		if _, ok := c.acquire("w"); ok {
			t.Fatal("a fourth lease was granted")
		}
		a := state.Admit(c.s, c.st, c.now)
		if a.OK || !a.NeedsLease || !a.RetryAt.Equal(c.now.Add(c.s.Breaker.TrialLeaseTTL)) {
			t.Errorf("Admit with every slot taken = %+v, want NeedsLease, not OK, RetryAt the first expiry", a)
		}
		if c.st.HalfOpen.Granted != 3 {
			t.Errorf("granted = %d, want 3", c.st.HalfOpen.Granted)
		}
	})
	t.Run("trials that succeed close the breaker; a used slot is not given again", func(t *testing.T) {
		c := halfOpen(t)
		l1, _ := c.acquire("a")
		c.apply(trial(l1, ""))
		if got := c.st.HalfOpen; got.Successes != 1 || len(got.Leases) != 0 {
			t.Fatalf("after one trial success: %+v", got)
		}
		l2, _ := c.acquire("b")
		l3, _ := c.acquire("c")
		if _, ok := c.acquire("d"); ok {
			t.Fatal("a slot used by a finished trial was granted again")
		}
		c.apply(trial(l2, ""), trial(l3, ""))
		if c.st.Breaker != events.BreakerClosed || c.st.OpenCount != 0 {
			t.Errorf("after 3 trial successes: breaker %s open_count %d, want closed 0", c.st.Breaker, c.st.OpenCount)
		}
		if _, ok := c.acquire("e"); ok {
			t.Error("a lease was granted on a closed breaker")
		}
	})
	t.Run("a released lease frees its slot", func(t *testing.T) {
		c := halfOpen(t)
		l1, _ := c.acquire("a")
		c.acquire("b")
		c.acquire("c")
		next, ok := state.ReleaseLease(c.st, l1.ID, c.now)
		if !ok {
			t.Fatal("release refused")
		}
		c.st = next
		if _, ok := state.ReleaseLease(c.st, l1.ID, c.now); ok {
			t.Error("a lease was released twice")
		}
		if l, ok := c.acquire("d"); !ok || l.ID == l1.ID {
			t.Errorf("after a release: lease %+v ok %v, want a new lease", l, ok)
		}
	})
	t.Run("an expired lease is dropped by Tick and its slot is free again", func(t *testing.T) {
		c := halfOpen(t)
		l1, _ := c.acquire("dies")
		c.advance(time.Minute)
		c.acquire("b")
		c.acquire("c")
		if at, ok := state.NextTick(c.st); !ok || !at.Equal(l1.ExpiresAt) {
			t.Errorf("NextTick = %v %v, want the first lease's expiry %v", at, ok, l1.ExpiresAt)
		}
		c.advance(c.s.Breaker.TrialLeaseTTL - time.Minute) // to the first lease's expiry
		ch := c.tick()
		if !ch.Write || ch.Changed() {
			t.Errorf("Tick at the expiry = %+v, want a write without a status change", ch)
		}
		if n := len(c.st.HalfOpen.Leases); n != 2 {
			t.Errorf("%d leases after the expiry, want 2", n)
		}
		if _, ok := c.acquire("d"); !ok {
			t.Error("the expired lease's slot was not free")
		}
		// The dead holder's late report is not a trial any more: it started
		// during the period, so it still counts as evidence.
		c.apply(trial(l1, ""))
		if c.st.HalfOpen.Successes != 1 {
			t.Errorf("successes = %d, want 1", c.st.HalfOpen.Successes)
		}
	})
	t.Run("a passing probe counts as a trial and takes a slot", func(t *testing.T) {
		c := halfOpen(t)
		c.apply(pass(10))
		c.acquire("a")
		c.acquire("b")
		if _, ok := c.acquire("c"); ok {
			t.Error("3 slots were granted after a probe already proved one")
		}
		c.apply(repeat(2, pass(10))...)
		if c.st.Breaker != events.BreakerClosed {
			t.Errorf("an idle endpoint did not recover by probes: breaker %s", c.st.Breaker)
		}
	})
	t.Run("a failed trial re-opens; the next period's leases are new", func(t *testing.T) {
		c := halfOpen(t)
		l1, _ := c.acquire("a")
		c.acquire("b")
		c.apply(trial(l1, events.ClassHTTP5xx))
		if c.st.Breaker != events.BreakerOpen || c.st.HalfOpen != nil {
			t.Fatalf("after a failed trial: %s %+v", c.st.Breaker, c.st.HalfOpen)
		}
		if _, ok := c.acquire("c"); ok {
			t.Error("a lease was granted on an open breaker")
		}
		c.advance(2 * time.Minute)
		c.tick()
		l2, ok := c.acquire("d")
		if !ok || l2.ID == l1.ID || c.st.HalfOpen.Period != 2 {
			t.Errorf("second period: lease %+v ok %v period %d", l2, ok, c.st.HalfOpen.Period)
		}
	})
	t.Run("a caller error under a lease frees the slot without counting", func(t *testing.T) {
		c := halfOpen(t)
		l1, _ := c.acquire("a")
		c.apply(trial(l1, events.ClassClientError))
		if h := c.st.HalfOpen; c.st.Breaker != events.BreakerHalfOpen || h.Successes != 0 || len(h.Leases) != 0 {
			t.Errorf("after a caller error under a lease: %s %+v", c.st.Breaker, h)
		}
	})
	t.Run("no lease while drained, forced open or throttled", func(t *testing.T) {
		for _, sig := range []state.Signal{operator(state.CmdDrain), operator(state.CmdOpen), func() state.Signal {
			s := outcome(events.ClassHTTP429, 1)
			s.Outcome.ThrottledUntil = func() *time.Time { x := t0.Add(time.Hour); return &x }()
			return s
		}()} {
			c := halfOpen(t)
			c.apply(sig)
			if _, ok := c.acquire("a"); ok {
				t.Errorf("a lease was granted after %+v", sig)
			}
		}
	})
}
