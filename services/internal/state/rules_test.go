package state_test

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// summary is the part of a record most rules are about.
type summary struct {
	Health          events.Health
	Breaker         events.Breaker
	Override        events.Override
	ConsSuccesses   int
	ConsFailures    int
	BreakerFailures int
	OpenCount       int
}

func summarize(st events.EndpointState) summary {
	return summary{st.Health, st.Breaker, st.Override, st.ConsecutiveSuccesses, st.ConsecutiveFailures, st.BreakerFailures, st.OpenCount}
}

// TestHealthRules: one case per health rule of the seed, as Switchboard
// keeps it.
func TestHealthRules(t *testing.T) {
	tests := []struct {
		name string
		sigs []state.Signal
		want summary
		// transitions are the health transitions, in order, as "from>to".
		transitions []string
	}{
		{
			name: "unknown stays unknown below healthy_threshold",
			sigs: repeat(2, pass(100)),
			want: summary{Health: "unknown", Breaker: "closed", Override: "none", ConsSuccesses: 2},
		},
		{
			name:        "healthy_threshold consecutive successes make it healthy",
			sigs:        repeat(3, pass(100)),
			want:        summary{Health: "healthy", Breaker: "closed", Override: "none", ConsSuccesses: 3},
			transitions: []string{"unknown>healthy"},
		},
		{
			name:        "healthy_threshold successes with EWMA above degraded_threshold_ms make it degraded",
			sigs:        repeat(3, pass(3500)),
			want:        summary{Health: "degraded", Breaker: "closed", Override: "none", ConsSuccesses: 3},
			transitions: []string{"unknown>degraded"},
		},
		{
			name: "a failure resets the success streak",
			sigs: concat(repeat(2, pass(100)), []state.Signal{fail(events.ClassHTTP5xx)}, repeat(2, pass(100))),
			want: summary{Health: "unknown", Breaker: "closed", Override: "none", ConsSuccesses: 2},
		},
		{
			name: "unhealthy_threshold-1 failures are not enough",
			sigs: repeat(2, fail(events.ClassConnect)),
			want: summary{Health: "unknown", Breaker: "closed", Override: "none", ConsFailures: 2, BreakerFailures: 2},
		},
		{
			name:        "unhealthy_threshold consecutive failures make it unhealthy",
			sigs:        repeat(3, fail(events.ClassTimeout)),
			want:        summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 3, BreakerFailures: 3},
			transitions: []string{"unknown>unhealthy"},
		},
		{
			name:        "an unhealthy endpoint recovers after healthy_threshold successes",
			sigs:        concat(repeat(3, fail(events.ClassDNS)), repeat(3, pass(100))),
			want:        summary{Health: "healthy", Breaker: "closed", Override: "none", ConsSuccesses: 3},
			transitions: []string{"unknown>unhealthy", "unhealthy>healthy"},
		},
		{
			name: "healthy flips to degraded as soon as the EWMA passes degraded_threshold_ms",
			// EWMA: 100, then 1540, 2548 and 3254 > 3000.
			sigs:        concat(repeat(3, pass(100)), repeat(3, pass(4900))),
			want:        summary{Health: "degraded", Breaker: "closed", Override: "none", ConsSuccesses: 6},
			transitions: []string{"unknown>healthy", "healthy>degraded"},
		},
		{
			name:        "degraded flips back to healthy as soon as the EWMA falls under it",
			sigs:        concat(repeat(3, pass(3500)), repeat(3, pass(10))),
			want:        summary{Health: "healthy", Breaker: "closed", Override: "none", ConsSuccesses: 6},
			transitions: []string{"unknown>degraded", "degraded>healthy"},
		},
		{
			name:        "a success slower than latency_threshold_ms is a failure",
			sigs:        repeat(3, pass(5001)),
			want:        summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 3, BreakerFailures: 3},
			transitions: []string{"unknown>unhealthy"},
		},
		{
			name:        "a failure does not take a healthy endpoint below healthy until the threshold",
			sigs:        concat(repeat(3, pass(100)), repeat(2, fail(events.ClassHTTP5xx))),
			want:        summary{Health: "healthy", Breaker: "closed", Override: "none", ConsFailures: 2, BreakerFailures: 2},
			transitions: []string{"unknown>healthy"},
		},
		{
			name:        "request outcomes drive health like probes",
			sigs:        concat(repeat(3, ok(200)), repeat(3, outcome(events.ClassStreamBroken, 50))),
			want:        summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 3, BreakerFailures: 3},
			transitions: []string{"unknown>healthy", "healthy>unhealthy"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t, seedSettings())
			c.apply(tc.sigs...)
			if diff := cmp.Diff(tc.want, summarize(c.st)); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
			var got []string
			for _, ch := range c.changes {
				if ch.Health != nil {
					got = append(got, ch.Health.From+">"+ch.Health.To)
				}
			}
			if diff := cmp.Diff(tc.transitions, got); diff != "" {
				t.Errorf("health transitions (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEWMA(t *testing.T) {
	tests := []struct {
		name    string
		samples []float64
		want    float64
	}{
		{"the first sample sets it", []float64{400}, 400},
		{"then alpha 0.3 weighs each new sample", []float64{400, 1400}, 0.3*1400 + 0.7*400},
		{"failures do not move it", nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t, seedSettings())
			for _, l := range tc.samples {
				c.apply(pass(l))
			}
			c.apply(fail(events.ClassTimeout))
			if got := c.st.LatencyEWMAMS; got != tc.want {
				t.Errorf("latency EWMA = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSlowSuccessIsRecordedAsTimeout(t *testing.T) {
	c := newClock(t, seedSettings())
	c.apply(ok(6000))
	if c.st.LastError == nil || c.st.LastError.Class != events.ClassTimeout || !strings.Contains(c.st.LastError.Message, "latency_threshold_ms 5000") {
		t.Errorf("last_error = %+v, want class timeout naming latency_threshold_ms", c.st.LastError)
	}
	if c.st.Failures != 1 || c.st.Requests != 1 {
		t.Errorf("requests/failures = %d/%d, want 1/1", c.st.Requests, c.st.Failures)
	}
	if c.st.LastSuccessAt != nil {
		t.Errorf("last_success_at = %v, want unset for a slow success", c.st.LastSuccessAt)
	}
}

// TestBreakerRules: one case per breaker rule.
func TestBreakerRules(t *testing.T) {
	type step struct {
		sigs []state.Signal
		// after advances the clock (and ticks) after the signals.
		after time.Duration
	}
	tests := []struct {
		name  string
		edit  func(*state.Settings)
		steps []step
		want  summary
		// breaker is the expected sequence of breaker transitions.
		breaker []string
		check   func(t *testing.T, st events.EndpointState)
	}{
		{
			name:  "failure_threshold-1 consecutive failures keep it closed",
			steps: []step{{sigs: repeat(4, outcome(events.ClassHTTP5xx, 10))}},
			want:  summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 4, BreakerFailures: 4},
		},
		{
			name:    "failure_threshold consecutive failures open it",
			steps:   []step{{sigs: repeat(5, outcome(events.ClassHTTP5xx, 10))}},
			want:    summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 5, OpenCount: 1},
			breaker: []string{"closed>open"},
			check: func(t *testing.T, st events.EndpointState) {
				if got := st.OpenUntil.Sub(*st.OpenedAt); got != time.Minute {
					t.Errorf("open for %s, want recovery_timeout 1m", got)
				}
			},
		},
		{
			name:  "a success resets the consecutive count (the seed only decremented it)",
			steps: []step{{sigs: concat(repeat(4, fail(events.ClassTimeout)), []state.Signal{pass(10)}, repeat(4, fail(events.ClassTimeout)))}},
			want:  summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 4, BreakerFailures: 4},
		},
		{
			name: "windowed error rate at the threshold with min_requests opens it",
			// 20 requests alternating: rate 50% = threshold, no 5 in a row.
			steps:   []step{{sigs: cycle(10, ok(10), outcome(events.ClassHTTP5xx, 10))}},
			breaker: []string{"closed>open"},
			want:    summary{Health: "unknown", Breaker: "open", Override: "none", ConsFailures: 1, OpenCount: 1},
			check: func(t *testing.T, st events.EndpointState) {
				if st.ErrorRate != 0.5 {
					t.Errorf("error_rate = %v, want 0.5", st.ErrorRate)
				}
			},
		},
		{
			name:  "an error rate over the threshold with fewer than min_requests does not",
			steps: []step{{sigs: cycle(9, ok(10), outcome(events.ClassHTTP5xx, 10))}},
			want:  summary{Health: "unknown", Breaker: "closed", Override: "none", ConsFailures: 1, BreakerFailures: 1},
		},
		{
			name: "requests that left the window do not count",
			edit: func(s *state.Settings) { s.Breaker.ErrorRateWindow = 10 * time.Second },
			// 1 s apart: at most 10 requests are ever in a 10 s window.
			steps: []step{{sigs: cycle(15, ok(10), outcome(events.ClassHTTP5xx, 10))}},
			want:  summary{Health: "unknown", Breaker: "closed", Override: "none", ConsFailures: 1, BreakerFailures: 1},
		},
		{
			name:  "probes are not in the error-rate window",
			edit:  func(s *state.Settings) { s.Breaker.MinRequests = 2 },
			steps: []step{{sigs: []state.Signal{ok(10), fail(events.ClassHTTP5xx), fail(events.ClassHTTP5xx), ok(10)}}},
			want:  summary{Health: "unknown", Breaker: "closed", Override: "none", ConsSuccesses: 1},
		},
		{
			name:    "open becomes half_open when open_until passes (Tick), not before",
			steps:   []step{{sigs: repeat(5, fail(events.ClassConnect)), after: 59 * time.Second}},
			breaker: []string{"closed>open"},
			want:    summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 5, OpenCount: 1},
		},
		{
			name:    "open becomes half_open at open_until",
			steps:   []step{{sigs: repeat(5, fail(events.ClassConnect)), after: 60 * time.Second}},
			breaker: []string{"closed>open", "open>half_open"},
			want:    summary{Health: "unhealthy", Breaker: "half_open", Override: "none", ConsFailures: 5, OpenCount: 1},
			check: func(t *testing.T, st events.EndpointState) {
				if st.HalfOpen == nil || st.HalfOpen.Period != 1 {
					t.Errorf("half_open = %+v, want period 1", st.HalfOpen)
				}
			},
		},
		{
			name: "half_open_requests trial successes close it and reset open_count",
			steps: []step{
				{sigs: repeat(5, fail(events.ClassConnect)), after: time.Minute},
				{sigs: repeat(3, pass(10))},
			},
			breaker: []string{"closed>open", "open>half_open", "half_open>closed"},
			want:    summary{Health: "healthy", Breaker: "closed", Override: "none", ConsSuccesses: 3},
			check: func(t *testing.T, st events.EndpointState) {
				if st.OpenedAt != nil || st.OpenUntil != nil || st.HalfOpen != nil || st.Window != nil {
					t.Errorf("closed breaker keeps open bookkeeping: %+v", st)
				}
			},
		},
		{
			name: "any failure in half_open re-opens it with a doubled timeout",
			steps: []step{
				{sigs: repeat(5, fail(events.ClassConnect)), after: time.Minute},
				{sigs: []state.Signal{pass(10), outcome(events.ClassHTTP5xx, 10)}},
			},
			breaker: []string{"closed>open", "open>half_open", "half_open>open"},
			want:    summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 1, OpenCount: 2},
			check: func(t *testing.T, st events.EndpointState) {
				if got := st.OpenUntil.Sub(*st.OpenedAt); got != 2*time.Minute {
					t.Errorf("re-opened for %s, want 2m", got)
				}
			},
		},
		{
			name: "the recovery timeout doubles with each re-open up to max_recovery_timeout",
			steps: []step{
				{sigs: repeat(5, fail(events.ClassConnect)), after: time.Minute},          // open 1: 1m
				{sigs: []state.Signal{fail(events.ClassConnect)}, after: 2 * time.Minute}, // open 2: 2m
				{sigs: []state.Signal{fail(events.ClassConnect)}, after: 4 * time.Minute}, // open 3: 4m
				{sigs: []state.Signal{fail(events.ClassConnect)}, after: 8 * time.Minute}, // open 4: 8m
				{sigs: []state.Signal{fail(events.ClassConnect)}},                         // open 5: 16m capped to 10m
			},
			breaker: []string{"closed>open", "open>half_open", "half_open>open", "open>half_open", "half_open>open",
				"open>half_open", "half_open>open", "open>half_open", "half_open>open"},
			want: summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 9, OpenCount: 5},
			check: func(t *testing.T, st events.EndpointState) {
				if got := st.OpenUntil.Sub(*st.OpenedAt); got != 10*time.Minute {
					t.Errorf("fifth open lasts %s, want the 10m cap", got)
				}
			},
		},
		{
			name: "a failure while open changes nothing of the breaker",
			steps: []step{
				{sigs: repeat(5, fail(events.ClassConnect)), after: 10 * time.Second},
				{sigs: repeat(3, fail(events.ClassConnect))},
			},
			breaker: []string{"closed>open"},
			want:    summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 8, OpenCount: 1},
		},
		{
			name: "a straggler outcome that started before the half-open period does not count",
			steps: []step{
				{sigs: repeat(5, fail(events.ClassConnect)), after: time.Minute},
				// started 2 minutes ago, before the breaker even opened
				{sigs: []state.Signal{outcome(events.ClassHTTP5xx, 120000)}},
			},
			breaker: []string{"closed>open", "open>half_open"},
			want:    summary{Health: "unhealthy", Breaker: "half_open", Override: "none", ConsFailures: 6, OpenCount: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := seedSettings()
			if tc.edit != nil {
				tc.edit(&s)
			}
			c := newClock(t, s)
			for _, st := range tc.steps {
				c.apply(st.sigs...)
				if st.after > 0 {
					c.advance(st.after)
					c.tick()
				}
			}
			if diff := cmp.Diff(tc.want, summarize(c.st)); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
			var got []string
			for _, ch := range c.changes {
				if ch.Breaker != nil {
					got = append(got, ch.Breaker.From+">"+ch.Breaker.To)
				}
			}
			if diff := cmp.Diff(tc.breaker, got); diff != "" {
				t.Errorf("breaker transitions (-want +got):\n%s", diff)
			}
			if tc.check != nil {
				tc.check(t, c.st)
			}
		})
	}
}

func TestRecoveryTimeout(t *testing.T) {
	s := seedSettings()
	for n, want := range map[int]time.Duration{1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute, 4: 8 * time.Minute, 5: 10 * time.Minute, 60: 10 * time.Minute} {
		if got := state.RecoveryTimeout(s, n); got != want {
			t.Errorf("RecoveryTimeout(open %d) = %s, want %s", n, got, want)
		}
	}
}

// TestClassRules: what each error class does.
func TestClassRules(t *testing.T) {
	tests := []struct {
		name  string
		sig   state.Signal
		n     int
		want  summary
		check func(t *testing.T, st events.EndpointState)
	}{
		{name: "client_error never counts", sig: outcome(events.ClassClientError, 10), n: 10,
			want: summary{Health: "unknown", Breaker: "closed", Override: "none"}},
		{name: "caller_canceled never counts", sig: outcome(events.ClassCallerCanceled, 10), n: 10,
			want: summary{Health: "unknown", Breaker: "closed", Override: "none"}},
		{name: "internal never counts", sig: outcome(events.ClassInternal, 10), n: 10,
			want: summary{Health: "unknown", Breaker: "closed", Override: "none"}},
		{name: "an inconclusive probe never counts but is the last probe", sig: probe(events.ProbeInconclusive, events.ClassTimeout, 10), n: 10,
			want: summary{Health: "unknown", Breaker: "closed", Override: "none"},
			check: func(t *testing.T, st events.EndpointState) {
				if st.LastProbe == nil || st.LastProbe.Outcome != events.ProbeInconclusive {
					t.Errorf("last_probe = %+v, want the inconclusive probe", st.LastProbe)
				}
				if st.LastError != nil {
					t.Errorf("last_error = %+v, want none", st.LastError)
				}
			}},
		{name: "429 is never a failure", sig: outcome(events.ClassHTTP429, 10), n: 10,
			want: summary{Health: "unknown", Breaker: "closed", Override: "none"},
			check: func(t *testing.T, st events.EndpointState) {
				if st.ThrottledUntil == nil {
					t.Error("429 left throttled_until unset")
				}
				if st.Failures != 0 || len(st.Window) != 0 {
					t.Errorf("429 counted: failures %d window %+v", st.Failures, st.Window)
				}
			}},
		{name: "401/403 makes it unhealthy and opens the breaker at once", sig: outcome(events.ClassAuth, 10), n: 1,
			want: summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 1, OpenCount: 1}},
		{name: "a failing auth probe does the same", sig: fail(events.ClassAuth), n: 1,
			want: summary{Health: "unhealthy", Breaker: "open", Override: "none", ConsFailures: 1, OpenCount: 1}},
	}
	for _, class := range []events.ErrorClass{events.ClassTimeout, events.ClassConnect, events.ClassDNS, events.ClassTLS,
		events.ClassHTTP5xx, events.ClassHTTP4xx, events.ClassBadBody, events.ClassStreamBroken, events.ClassModelMissing} {
		tests = append(tests, struct {
			name  string
			sig   state.Signal
			n     int
			want  summary
			check func(t *testing.T, st events.EndpointState)
		}{name: string(class) + " is an endpoint failure", sig: outcome(class, 10), n: 3,
			want: summary{Health: "unhealthy", Breaker: "closed", Override: "none", ConsFailures: 3, BreakerFailures: 3}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t, seedSettings())
			c.apply(repeat(tc.n, tc.sig)...)
			if diff := cmp.Diff(tc.want, summarize(c.st)); diff != "" {
				t.Errorf("record (-want +got):\n%s", diff)
			}
			if tc.check != nil {
				tc.check(t, c.st)
			}
		})
	}
}

func TestThrottle(t *testing.T) {
	s := seedSettings()
	at := func(d time.Duration) *time.Time { x := t0.Add(d); return &x }
	throttled := func(until *time.Time) state.Signal {
		sig := outcome(events.ClassHTTP429, 10)
		sig.Outcome.ThrottledUntil = until
		return sig
	}
	tests := []struct {
		name string
		sigs []state.Signal
		want *time.Time
		// changes is how many throttle changes the signals made.
		changes int
	}{
		{"Retry-After sets throttled_until", []state.Signal{throttled(at(30 * time.Second))}, at(30 * time.Second), 1},
		{"without a hint it throttles for 1s", []state.Signal{throttled(nil)}, at(2 * time.Second), 1},
		{"a later hint extends it", []state.Signal{throttled(at(30 * time.Second)), throttled(at(40 * time.Second))}, at(40 * time.Second), 2},
		{"an earlier hint never shortens it", []state.Signal{throttled(at(30 * time.Second)), throttled(at(10 * time.Second))}, at(30 * time.Second), 1},
		{"a hint already past changes nothing", []state.Signal{throttled(at(-time.Second))}, nil, 0},
		{"a probe that met a 429 throttles too", []state.Signal{func() state.Signal {
			p := probe(events.ProbeInconclusive, events.ClassHTTP429, 5)
			p.Probe.ThrottledUntil = at(20 * time.Second)
			return p
		}()}, at(20 * time.Second), 1},
		{"a quota-group signal throttles", []state.Signal{{Kind: state.SignalThrottle, ThrottleUntil: t0.Add(time.Minute), ThrottleFrom: "ep2"}}, at(time.Minute), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t, s)
			c.apply(tc.sigs...)
			if diff := cmp.Diff(tc.want, c.st.ThrottledUntil); diff != "" {
				t.Errorf("throttled_until (-want +got):\n%s", diff)
			}
			n := 0
			for _, ch := range c.changes {
				if ch.Throttle != nil {
					n++
				}
			}
			if n != tc.changes {
				t.Errorf("%d throttle changes, want %d", n, tc.changes)
			}
		})
	}

	t.Run("Admit refuses until it ends and Tick clears it", func(t *testing.T) {
		c := newClock(t, s)
		c.apply(throttled(at(30 * time.Second)))
		a := state.Admit(s, c.st, c.now)
		if a.OK || !a.RetryAt.Equal(t0.Add(30*time.Second)) {
			t.Errorf("Admit while throttled = %+v, want no with RetryAt = throttled_until", a)
		}
		if at, ok := state.NextTick(c.st); !ok || !at.Equal(t0.Add(30*time.Second)) {
			t.Errorf("NextTick = %v %v, want throttled_until", at, ok)
		}
		c.advance(28 * time.Second)
		if ch := c.tick(); ch.Write {
			t.Errorf("Tick before the throttle ended changed %+v", ch)
		}
		c.advance(time.Second)
		ch := c.tick()
		if ch.Throttle == nil || ch.Throttle.To != nil || ch.Cause.Kind != events.CauseTimer {
			t.Errorf("Tick at the end = %+v, want a timer throttle change to none", ch)
		}
		if a := state.Admit(s, c.st, c.now); !a.OK {
			t.Errorf("Admit after the throttle = %+v", a)
		}
	})
	t.Run("QuotaPeers", func(t *testing.T) {
		if diff := cmp.Diff([]string{"ep3"}, s.QuotaPeers("ep2")); diff != "" {
			t.Errorf("peers of ep2 (-want +got):\n%s", diff)
		}
		if got := s.QuotaPeers("ep"); got != nil {
			t.Errorf("peers of an endpoint without a group = %v", got)
		}
	})
}

func TestProbeQuorum(t *testing.T) {
	tests := []struct {
		name   string
		quorum int
		// sigs go to a record where vantages a, b, c all passed just before.
		sigs []state.Signal
		// counted is how many of the failures counted.
		counted int
	}{
		{name: "one of three failing does not count", sigs: []state.Signal{probeFrom("a", events.ProbeFail, events.ClassConnect, 10)}},
		{name: "two of three failing is a majority", counted: 1, sigs: []state.Signal{
			probeFrom("a", events.ProbeFail, events.ClassConnect, 10), probeFrom("b", events.ProbeFail, events.ClassConnect, 10)}},
		{name: "then every further failure counts", counted: 2, sigs: []state.Signal{
			probeFrom("a", events.ProbeFail, events.ClassConnect, 10), probeFrom("b", events.ProbeFail, events.ClassConnect, 10),
			probeFrom("c", events.ProbeFail, events.ClassConnect, 10)}},
		{name: "probe_quorum 3 needs all three", quorum: 3, counted: 1, sigs: []state.Signal{
			probeFrom("a", events.ProbeFail, events.ClassConnect, 10), probeFrom("b", events.ProbeFail, events.ClassConnect, 10),
			probeFrom("c", events.ProbeFail, events.ClassConnect, 10)}},
		{name: "probe_quorum 1 counts any", quorum: 1, counted: 1, sigs: []state.Signal{probeFrom("a", events.ProbeFail, events.ClassConnect, 10)}},
		{name: "an inconclusive vantage is not failing", sigs: []state.Signal{
			probeFrom("a", events.ProbeFail, events.ClassConnect, 10), probeFrom("b", events.ProbeInconclusive, events.ClassTimeout, 10)}},
		{name: "an auth failure needs no quorum", counted: 1, sigs: []state.Signal{probeFrom("a", events.ProbeFail, events.ClassAuth, 10)}},
		{name: "inconclusive vantages abstain", counted: 1, sigs: []state.Signal{
			probeFrom("b", events.ProbeInconclusive, events.ClassHTTP429, 10), probeFrom("c", events.ProbeInconclusive, events.ClassInternal, 10),
			probeFrom("a", events.ProbeFail, events.ClassHTTP5xx, 10)}},
		{name: "a failure that does not count abstains", counted: 1, sigs: []state.Signal{
			probeFrom("b", events.ProbeFail, events.ClassClientError, 10), probeFrom("c", events.ProbeFail, events.ClassClientError, 10),
			probeFrom("a", events.ProbeFail, events.ClassHTTP5xx, 10)}},
		{name: "probe_quorum is capped at the vantages taking part", quorum: 3, counted: 1, sigs: []state.Signal{
			probeFrom("c", events.ProbeInconclusive, events.ClassTimeout, 10),
			probeFrom("a", events.ProbeFail, events.ClassHTTP5xx, 10), probeFrom("b", events.ProbeFail, events.ClassHTTP5xx, 10)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := seedSettings()
			s.Health.ProbeQuorum = tc.quorum
			c := newClock(t, s)
			c.apply(probeFrom("a", events.ProbePass, "", 10), probeFrom("b", events.ProbePass, "", 10), probeFrom("c", events.ProbePass, "", 10))
			c.apply(tc.sigs...)
			if got := c.st.ConsecutiveFailures; got != tc.counted {
				t.Errorf("%d failures counted, want %d", got, tc.counted)
			}
			if len(c.st.Vantages) != 3 {
				t.Errorf("vantages = %v, want a, b, c", c.st.Vantages)
			}
		})
	}
	t.Run("stale vantages leave the quorum", func(t *testing.T) {
		c := newClock(t, seedSettings())
		c.apply(probeFrom("a", events.ProbePass, "", 10), probeFrom("b", events.ProbePass, "", 10))
		c.advance(91 * time.Second) // > 3 x 30 s
		c.apply(probeFrom("c", events.ProbeFail, events.ClassConnect, 10))
		if c.st.ConsecutiveFailures != 1 {
			t.Errorf("the only fresh vantage's failure did not count: %+v", summarize(c.st))
		}
		c.advance(10 * 30 * time.Second)
		c.apply(probeFrom("c", events.ProbeFail, events.ClassConnect, 10))
		if _, ok := c.st.Vantages["a/models"]; ok || len(c.st.Vantages) != 1 {
			t.Errorf("vantages silent for 10 intervals were kept: %v", c.st.Vantages)
		}
	})
	t.Run("a vantage that only sees inconclusive probes does not veto", func(t *testing.T) {
		c := newClock(t, seedSettings())
		for range 10 {
			c.apply(probeFrom("v2", events.ProbeInconclusive, events.ClassInternal, 10),
				probeFrom("v1", events.ProbeFail, events.ClassHTTP5xx, 10))
		}
		if c.st.Health != events.HealthUnhealthy || c.st.Breaker != events.BreakerOpen {
			t.Errorf("v1 failed 10 times, v2 was inconclusive: %+v, want unhealthy and open", summarize(c.st))
		}
	})
	t.Run("each probe kind has its own quorum", func(t *testing.T) {
		// Every vantage's models probe fails and its health probe passes
		// just after: the health pass must not hide the models failure
		// from the next vantage's quorum.
		c := newClock(t, seedSettings())
		counted := 0
		for _, v := range []string{"v1", "v2", "v3"} {
			c.apply(probeFrom(v, events.ProbeFail, events.ClassModelMissing, 10))
			if c.st.ConsecutiveFailures > 0 {
				counted++
			}
			health := probeFrom(v, events.ProbePass, "", 10)
			health.Probe.Kind = events.ProbeHealth
			c.apply(health)
		}
		if counted != 3 {
			t.Errorf("%d models failures counted, want 3 (1 of 1, 2 of 2, 3 of 3 vantages)", counted)
		}
		want := []string{"v1/health", "v1/models", "v2/health", "v2/models", "v3/health", "v3/models"}
		if diff := cmp.Diff(want, slices.Sorted(maps.Keys(c.st.Vantages))); diff != "" {
			t.Errorf("vantage keys (-want +got):\n%s", diff)
		}
	})
	t.Run("a passing kind does not reset another kind's failures", func(t *testing.T) {
		// The models probe fails at every vantage and the health probe
		// passes: the endpoint does not serve its models, whatever /health
		// says. Once the models probe passes again, it recovers.
		c := newClock(t, seedSettings())
		health := func(v string) state.Signal {
			sig := probeFrom(v, events.ProbePass, "", 10)
			sig.Probe.Kind = events.ProbeHealth
			return sig
		}
		for range 5 {
			for _, v := range []string{"v1", "v2", "v3"} {
				c.apply(probeFrom(v, events.ProbeFail, events.ClassModelMissing, 10), health(v))
			}
		}
		if c.st.Health != events.HealthUnhealthy || c.st.Breaker != events.BreakerOpen {
			t.Fatalf("after 15 rounds of failing models and passing health probes: %+v, want unhealthy and open", summarize(c.st))
		}
		c.advance(time.Minute)
		for range 3 {
			for _, v := range []string{"v1", "v2", "v3"} {
				c.apply(probeFrom(v, events.ProbePass, "", 10), health(v))
			}
		}
		if c.st.Health != events.HealthHealthy || c.st.Breaker != events.BreakerClosed {
			t.Errorf("after the models probes pass again: %+v, want healthy and closed", summarize(c.st))
		}
	})
	t.Run("records keyed by vantage alone are re-keyed", func(t *testing.T) {
		c := newClock(t, seedSettings())
		c.st.Vantages = map[string]events.ProbeView{
			"old": {At: t0, Vantage: "old", Kind: events.ProbeModels, Outcome: events.ProbeFail, ErrorClass: events.ClassHTTP5xx, IntervalMS: 30000},
		}
		c.apply(probeFrom("new", events.ProbeFail, events.ClassHTTP5xx, 10))
		if diff := cmp.Diff([]string{"new/models", "old/models"}, slices.Sorted(maps.Keys(c.st.Vantages))); diff != "" {
			t.Errorf("vantage keys (-want +got):\n%s", diff)
		}
		if c.st.ConsecutiveFailures != 1 {
			t.Errorf("2 of 2 vantages failing did not count: %+v", summarize(c.st))
		}
	})
}

func TestOverrides(t *testing.T) {
	s := seedSettings()
	tests := []struct {
		name     string
		before   []state.Signal
		cmd      state.Command
		want     events.Override
		admit    bool
		override string // "from>to", "" for no change
	}{
		{name: "drain refuses work", cmd: state.CmdDrain, want: events.OverrideDrain, override: "none>drain"},
		{name: "open forces the breaker open", cmd: state.CmdOpen, want: events.OverrideForceOpen, override: "none>force_open"},
		{name: "close admits whatever the breaker", before: repeat(5, fail(events.ClassConnect)), cmd: state.CmdClose,
			want: events.OverrideForceClosed, admit: true, override: "none>force_closed"},
		{name: "undrain returns to automatic", before: []state.Signal{operator(state.CmdDrain)}, cmd: state.CmdUndrain,
			want: events.OverrideNone, admit: true, override: "drain>none"},
		{name: "undrain also lifts force_open", before: []state.Signal{operator(state.CmdOpen)}, cmd: state.CmdUndrain,
			want: events.OverrideNone, admit: true, override: "force_open>none"},
		{name: "draining a drained endpoint changes nothing", before: []state.Signal{operator(state.CmdDrain)}, cmd: state.CmdDrain,
			want: events.OverrideDrain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock(t, s)
			c.apply(tc.before...)
			ch := c.apply(operator(tc.cmd))
			if c.st.Override != tc.want {
				t.Errorf("override = %s, want %s", c.st.Override, tc.want)
			}
			if a := state.Admit(s, c.st, c.now); a.OK != tc.admit {
				t.Errorf("Admit = %+v, want OK %v", a, tc.admit)
			}
			got := ""
			if ch.Override != nil {
				got = ch.Override.From + ">" + ch.Override.To
				if ch.Cause.Kind != events.CauseOperator || ch.Cause.Source != "/operator/alice" || !strings.Contains(ch.Cause.Reason, "maintenance") {
					t.Errorf("cause = %+v, want operator /operator/alice with the reason", ch.Cause)
				}
			}
			if got != tc.override {
				t.Errorf("override change %q, want %q", got, tc.override)
			}
		})
	}
	t.Run("probes go on while drained", func(t *testing.T) {
		c := newClock(t, s)
		c.apply(operator(state.CmdDrain))
		c.apply(repeat(3, pass(10))...)
		if c.st.Health != events.HealthHealthy {
			t.Errorf("health = %s, want healthy", c.st.Health)
		}
	})
	t.Run("force_open keeps the automatic breaker underneath", func(t *testing.T) {
		c := newClock(t, s)
		c.apply(operator(state.CmdOpen))
		c.apply(repeat(5, fail(events.ClassConnect))...)
		if c.st.Breaker != events.BreakerOpen {
			t.Errorf("breaker = %s, want open underneath", c.st.Breaker)
		}
	})
	t.Run("reset makes a fresh record and keeps the stream position", func(t *testing.T) {
		c := newClock(t, s)
		throttle := outcome(events.ClassHTTP429, 1)
		throttle.Outcome.ThrottledUntil = func() *time.Time { x := t0.Add(time.Hour); return &x }()
		c.apply(concat(repeat(5, fail(events.ClassConnect)), []state.Signal{operator(state.CmdDrain), throttle})...)
		c.st.AppliedSeq = 42
		ch := c.apply(operator(state.CmdReset))
		want := state.New("ep", c.now)
		want.AppliedSeq = 42
		if diff := cmp.Diff(want, c.st); diff != "" {
			t.Errorf("after reset (-want +got):\n%s", diff)
		}
		if ch.Health == nil || ch.Breaker == nil || ch.Override == nil || ch.Throttle == nil {
			t.Errorf("reset change = %+v, want health, breaker, override and throttle", ch)
		}
	})
}

func TestAdmit(t *testing.T) {
	s := seedSettings()
	until := t0.Add(time.Minute)
	half := &events.HalfOpen{Period: 1, Since: t0}
	tests := []struct {
		name string
		st   events.EndpointState
		want state.Admission
	}{
		{"closed admits", state.New("ep", t0), state.Admission{OK: true}},
		{"unhealthy alone does not refuse", func() events.EndpointState { st := state.New("ep", t0); st.Health = events.HealthUnhealthy; return st }(),
			state.Admission{OK: true}},
		{"open refuses until open_until", events.EndpointState{Endpoint: "ep", Breaker: events.BreakerOpen, OpenUntil: &until, OpenedAt: &t0, Override: events.OverrideNone},
			state.Admission{RetryAt: until, Reason: "breaker open until 2026-01-02T12:01:00Z"}},
		{"half-open admits under a lease", events.EndpointState{Endpoint: "ep", Breaker: events.BreakerHalfOpen, HalfOpen: half, Override: events.OverrideNone},
			state.Admission{OK: true, NeedsLease: true}},
		{"throttle wins over force_closed", events.EndpointState{Endpoint: "ep", Breaker: events.BreakerClosed, ThrottledUntil: &until, Override: events.OverrideForceClosed},
			state.Admission{RetryAt: until, Reason: "throttled until 2026-01-02T12:01:00Z"}},
		{"drain wins over everything", events.EndpointState{Endpoint: "ep", Breaker: events.BreakerClosed, Override: events.OverrideDrain, OverrideReason: "upgrade"},
			state.Admission{Reason: "drained by an operator: upgrade"}},
		{"force_closed admits an open breaker", events.EndpointState{Endpoint: "ep", Breaker: events.BreakerOpen, OpenUntil: &until, OpenedAt: &t0, Override: events.OverrideForceClosed},
			state.Admission{OK: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, state.Admit(s, tc.st, t0)); diff != "" {
				t.Errorf("Admit (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRank(t *testing.T) {
	got := []int{state.Rank(events.HealthHealthy), state.Rank(events.HealthDegraded), state.Rank(events.HealthUnknown), state.Rank(events.HealthUnhealthy)}
	if diff := cmp.Diff([]int{0, 1, 2, 3}, got); diff != "" {
		t.Errorf("ranks (-want +got):\n%s", diff)
	}
}

func TestCauseNamesTheEvent(t *testing.T) {
	c := newClock(t, seedSettings())
	sig := fail(events.ClassHTTP5xx)
	sig.Probe.Error, sig.Probe.StatusCode = "HTTP 503", 503
	c.apply(repeat(2, sig)...)
	ch := c.apply(sig)
	want := events.Cause{Kind: events.CauseProbe, Reason: "3 consecutive failures (unhealthy_threshold 3)", EventID: "p",
		EventType: events.TypeProbeResult, Source: "/prober/v1", ProbeKind: events.ProbeModels, Outcome: "fail",
		ErrorClass: events.ClassHTTP5xx, Error: "HTTP 503", StatusCode: 503}
	if diff := cmp.Diff(want, ch.Cause); diff != "" {
		t.Errorf("cause (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(&events.Transition{From: "unknown", To: "unhealthy"}, ch.Health); diff != "" {
		t.Errorf("health change (-want +got):\n%s", diff)
	}
}
