package state_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// bytesSource reads a scenario from bytes (fuzz input or random bytes);
// past the end it reads zeros.
type bytesSource struct {
	b []byte
	i int
}

func (s *bytesSource) next() byte {
	if s.i >= len(s.b) {
		s.i++
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

func (s *bytesSource) done() bool { return s.i >= len(s.b) }

func (s *bytesSource) pick(n int) int { return int(s.next()) % n }

var (
	classes = []events.ErrorClass{events.ClassTimeout, events.ClassConnect, events.ClassDNS, events.ClassTLS, events.ClassHTTP5xx,
		events.ClassHTTP4xx, events.ClassHTTP429, events.ClassAuth, events.ClassBadBody, events.ClassStreamBroken,
		events.ClassModelMissing, events.ClassClientError, events.ClassCallerCanceled, events.ClassInternal}
	commands = []state.Command{state.CmdDrain, state.CmdUndrain, state.CmdOpen, state.CmdClose, state.CmdReset}
	latency  = []float64{0, 5, 80, 900, 2999, 3001, 4999, 5001, 20000, 120000}
	steps    = []time.Duration{0, time.Millisecond, 100 * time.Millisecond, time.Second, 7 * time.Second, 30 * time.Second,
		time.Minute, 3 * time.Minute, 11 * time.Minute, -time.Second}
)

// propertySettings are small thresholds so that random sequences reach every
// state often.
func propertySettings(src *bytesSource) state.Settings {
	s := seedSettings()
	s.Health.HealthyThreshold = 1 + src.pick(3)
	s.Health.UnhealthyThreshold = 1 + src.pick(3)
	s.Health.ProbeQuorum = src.pick(3)
	s.Breaker.FailureThreshold = 1 + src.pick(4)
	s.Breaker.HalfOpenRequests = 1 + src.pick(3)
	s.Breaker.MinRequests = 1 + src.pick(5)
	s.Breaker.ErrorRateThreshold = []float64{0.1, 0.5, 1}[src.pick(3)]
	s.Breaker.RecoveryTimeout = []time.Duration{time.Second, 30 * time.Second}[src.pick(2)]
	s.Breaker.MaxRecoveryTimeout = s.Breaker.RecoveryTimeout * 8
	s.Breaker.TrialLeaseTTL = []time.Duration{time.Second, time.Minute}[src.pick(2)]
	return s
}

// runScenario drives the machine with the operations src describes and
// checks every invariant after every step. It returns how many steps ran.
func runScenario(t *testing.T, data []byte) int {
	t.Helper()
	src := &bytesSource{b: data}
	s := propertySettings(src)
	now := t0
	st := state.New("ep", now)
	var leases []events.Lease // every lease ever granted, live or not
	n := 0
	for !src.done() && n < 2000 {
		n++
		now = now.Add(steps[src.pick(len(steps))])
		prev := st
		snapshot := mustJSON(t, st)
		var next events.EndpointState
		var ch state.Change
		var what string
		switch op := src.pick(8); op {
		case 0, 1: // probe
			out := []events.ProbeOutcome{events.ProbePass, events.ProbeFail, events.ProbeInconclusive}[src.pick(3)]
			class := events.ErrorClass("")
			if out != events.ProbePass {
				class = classes[src.pick(len(classes))]
			}
			sig := probeFrom(fmt.Sprintf("v%d", src.pick(3)), out, class, latency[src.pick(len(latency))])
			sig.Probe.StartedAt = now.Add(-time.Duration(src.pick(120)) * time.Second)
			if src.pick(4) == 0 {
				u := now.Add(time.Duration(src.pick(60)-10) * time.Second)
				sig.Probe.ThrottledUntil = &u
			}
			what = fmt.Sprintf("probe %s %s", out, class)
			next, ch = state.Apply(s, st, sig, now)
		case 2, 3: // request outcome, sometimes under a lease
			class := events.ErrorClass("")
			if src.pick(2) == 0 {
				class = classes[src.pick(len(classes))]
			}
			sig := outcome(class, latency[src.pick(len(latency))])
			sig.Outcome.StartedAt = now.Add(-time.Duration(src.pick(120)) * time.Second)
			if len(leases) > 0 && src.pick(2) == 0 {
				sig.Outcome.TrialLease = leases[src.pick(len(leases))].ID
			}
			if src.pick(3) == 0 {
				u := now.Add(time.Duration(src.pick(60)-10) * time.Second)
				sig.Outcome.ThrottledUntil = &u
			}
			what = fmt.Sprintf("outcome %s lease %q", class, sig.Outcome.TrialLease)
			next, ch = state.Apply(s, st, sig, now)
		case 4:
			cmd := commands[src.pick(len(commands))]
			what = "operator " + string(cmd)
			next, ch = state.Apply(s, st, operator(cmd), now)
		case 5:
			what = "quota throttle"
			next, ch = state.Apply(s, st, state.Signal{Kind: state.SignalThrottle, ThrottleFrom: "ep2",
				ThrottleUntil: now.Add(time.Duration(src.pick(60)-10) * time.Second)}, now)
		case 6:
			what = "tick"
			if at, ok := state.NextTick(st); ok && now.Before(at) {
				// Nothing is due before NextTick.
				if _, c := state.Tick(s, st, now); c.Write {
					t.Fatalf("step %d: Tick changed the record before NextTick %v", n, at)
				}
			}
			next, ch = state.Tick(s, st, now)
		case 7:
			if len(leases) > 0 && src.pick(3) == 0 {
				what = "release"
				var ok bool
				next, ok = state.ReleaseLease(st, leases[src.pick(len(leases))].ID, now)
				ch.Write = ok
				break
			}
			what = "acquire"
			a := state.Admit(s, st, now)
			var l events.Lease
			var ok bool
			next, l, ok = state.AcquireLease(s, st, "w", now)
			if ok != (a.OK && a.NeedsLease) {
				t.Fatalf("step %d: AcquireLease ok=%v but Admit said %+v", n, ok, a)
			}
			if ok {
				for _, old := range leases {
					if old.ID == l.ID {
						t.Fatalf("step %d: lease id %s granted twice", n, l.ID)
					}
				}
				leases = append(leases, l)
			}
			ch.Write = ok
		}
		if after := mustJSON(t, prev); !bytes.Equal(snapshot, after) {
			t.Fatalf("step %d (%s) modified its input:\n%s", n, what, cmp.Diff(string(snapshot), string(after)))
		}
		if !ch.Write {
			if a, b := mustJSON(t, prev), mustJSON(t, next); !bytes.Equal(a, b) {
				t.Fatalf("step %d (%s) changed the record without Write:\n%s", n, what, cmp.Diff(string(a), string(b)))
			}
		}
		checkInvariants(t, s, prev, next, ch, now, fmt.Sprintf("step %d (%s)", n, what), n%7 == 0)
		st = next
	}
	return n
}

// mustJSON is the record as stored: equal JSON is an equal record.
func mustJSON(t *testing.T, st events.EndpointState) []byte {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkInvariants holds after every step: the record validates (Go and JSON
// Schema), the breaker's bookkeeping matches its state, the counters agree
// with the health, and the Change describes exactly what changed.
// The JSON Schema check is slow; withSchema says whether to run it.
func checkInvariants(t *testing.T, s state.Settings, prev, st events.EndpointState, ch state.Change, now time.Time, where string, withSchema bool) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s: %s\nrecord: %+v", where, fmt.Sprintf(format, args...), st)
	}
	if err := st.Validate(); err != nil {
		fail("invalid: %v", err)
	}
	if withSchema {
		b, err := json.Marshal(st)
		if err != nil {
			fail("marshal: %v", err)
		}
		if err := schemas.Validate(schemas.EndpointState, b); err != nil {
			fail("schema: %v", err)
		}
	}
	switch st.Breaker {
	case events.BreakerClosed:
		if st.OpenCount != 0 || st.OpenUntil != nil || st.OpenedAt != nil {
			fail("closed breaker with open bookkeeping")
		}
		if st.BreakerFailures >= s.Breaker.FailureThreshold {
			fail("closed breaker with %d consecutive failures", st.BreakerFailures)
		}
	case events.BreakerOpen:
		if st.OpenCount < 1 {
			fail("open breaker with open_count %d", st.OpenCount)
		}
		if got, want := st.OpenUntil.Sub(*st.OpenedAt), state.RecoveryTimeout(s, st.OpenCount); got != want {
			fail("open for %s, want %s", got, want)
		}
	case events.BreakerHalfOpen:
		h := st.HalfOpen
		if st.OpenCount < 1 || h.Period != st.OpenCount {
			fail("half-open period %d with open_count %d", h.Period, st.OpenCount)
		}
		if h.Successes >= s.Breaker.HalfOpenRequests {
			fail("half-open with %d successes did not close", h.Successes)
		}
		if len(h.Leases) > s.Breaker.HalfOpenRequests {
			fail("half-open with %d leases exceeds %d slots", len(h.Leases), s.Breaker.HalfOpenRequests)
		}
		if len(h.Leases) > h.Granted {
			fail("%d leases but only %d granted", len(h.Leases), h.Granted)
		}
	}
	if st.ConsecutiveFailures >= s.Health.UnhealthyThreshold && st.Health != events.HealthUnhealthy {
		fail("%d consecutive failures but health %s", st.ConsecutiveFailures, st.Health)
	}
	if st.ConsecutiveSuccesses >= s.Health.HealthyThreshold && st.Health != events.HealthHealthy && st.Health != events.HealthDegraded {
		fail("%d consecutive successes but health %s", st.ConsecutiveSuccesses, st.Health)
	}
	if st.Failures > st.Requests {
		fail("%d failures of %d requests", st.Failures, st.Requests)
	}
	// Only Tick (once it is due) and reset ever shorten a throttle.
	if prev.ThrottledUntil != nil && (st.ThrottledUntil == nil || st.ThrottledUntil.Before(*prev.ThrottledUntil)) {
		due := now.Compare(*prev.ThrottledUntil) >= 0 && ch.Cause.Kind == events.CauseTimer
		if !due && ch.Cause.Kind != events.CauseOperator {
			fail("throttle shortened from %v to %v by %+v", prev.ThrottledUntil, st.ThrottledUntil, ch.Cause)
		}
	}
	// The Change says exactly what changed.
	if (ch.Health != nil) != (prev.Health != st.Health) || (ch.Breaker != nil) != (prev.Breaker != st.Breaker) ||
		(ch.Override != nil) != (prev.Override != st.Override) {
		fail("change %+v does not match %s/%s/%s -> %s/%s/%s", ch, prev.Health, prev.Breaker, prev.Override, st.Health, st.Breaker, st.Override)
	}
	if ch.Health != nil && (ch.Health.From != string(prev.Health) || ch.Health.To != string(st.Health) || !st.HealthSince.Equal(now)) {
		fail("health change %+v, since %v", ch.Health, st.HealthSince)
	}
	if ch.Breaker != nil && (ch.Breaker.From != string(prev.Breaker) || ch.Breaker.To != string(st.Breaker) || !st.BreakerSince.Equal(now)) {
		fail("breaker change %+v, since %v", ch.Breaker, st.BreakerSince)
	}
	if ch.Changed() {
		if ch.Cause.Kind == "" || ch.Cause.Reason == "" {
			fail("change without a cause: %+v", ch)
		}
		sc := events.StatusChanged{Endpoint: st.Endpoint, Revision: 1, Health: ch.Health, Breaker: ch.Breaker,
			Throttle: ch.Throttle, Override: ch.Override, Cause: ch.Cause, State: st, At: now}
		if err := sc.Validate(); err != nil {
			fail("the status change would not validate: %v", err)
		}
	}
	if st.Breaker == events.BreakerClosed && prev.Breaker != events.BreakerClosed && ch.Cause.Kind != events.CauseOperator {
		if prev.Breaker != events.BreakerHalfOpen {
			fail("breaker closed from %s", prev.Breaker)
		}
	}
	if prev.Breaker == events.BreakerClosed && st.Breaker == events.BreakerHalfOpen {
		fail("breaker went closed -> half_open")
	}
}

// TestPropertyRandomSequences: random sequences of every kind of signal,
// ticks and lease operations never reach an invalid state.
func TestPropertyRandomSequences(t *testing.T) {
	seeds := 100
	if testing.Short() {
		seeds = 30
	}
	total := 0
	for seed := range seeds {
		r := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
		data := make([]byte, 1200)
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			total += runScenario(t, data)
		})
	}
	t.Logf("%d steps checked", total)
}

// FuzzMachine: go test -fuzz FuzzMachine ./services/internal/state
func FuzzMachine(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2, 1, 0, 1, 5, 1, 1, 6, 7, 7, 7, 6, 2})
	f.Add([]byte("a scenario that is just some text, read as operations"))
	f.Fuzz(func(t *testing.T, data []byte) {
		runScenario(t, data)
	})
}
