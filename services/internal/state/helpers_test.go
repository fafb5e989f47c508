package state_test

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the start of every scenario's clock.
var t0 = time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)

// seedSettings are the defaults: the seed's thresholds plus Switchboard's.
func seedSettings() state.Settings {
	c := config.Default()
	c.Endpoints = []config.Endpoint{{Name: "ep"}, {Name: "ep2", QuotaGroup: "g"}, {Name: "ep3", QuotaGroup: "g"}}
	return state.SettingsFrom(c)
}

func probe(outcome events.ProbeOutcome, class events.ErrorClass, latencyMS float64) state.Signal {
	return probeFrom("v1", outcome, class, latencyMS)
}

func probeFrom(vantage string, outcome events.ProbeOutcome, class events.ErrorClass, latencyMS float64) state.Signal {
	return state.Signal{Kind: state.SignalProbe, Source: "/prober/" + vantage, EventID: "p", EventType: events.TypeProbeResult,
		Probe: &events.ProbeResult{Endpoint: "ep", Vantage: vantage, Kind: events.ProbeModels, Outcome: outcome,
			ErrorClass: class, LatencyMS: latencyMS, IntervalMS: 30000}}
}

func pass(latencyMS float64) state.Signal { return probe(events.ProbePass, "", latencyMS) }
func fail(class events.ErrorClass) state.Signal {
	return probe(events.ProbeFail, class, 10)
}

func outcome(class events.ErrorClass, latencyMS float64) state.Signal {
	o := &events.RequestOutcome{Endpoint: "ep", Model: "m", Lane: events.LaneDurable, Attempt: 1,
		Outcome: events.RequestSuccess, LatencyMS: latencyMS}
	if class != "" {
		o.Outcome, o.ErrorClass, o.Error = events.RequestError, class, "upstream said no"
	}
	return state.Signal{Kind: state.SignalOutcome, Source: "/worker/w1", EventID: "o", EventType: events.TypeRequestOutcome, Outcome: o}
}

func ok(latencyMS float64) state.Signal { return outcome("", latencyMS) }

func operator(cmd state.Command) state.Signal {
	return state.Signal{Kind: state.SignalOperator, Operator: cmd, Source: "/operator/alice", Reason: "maintenance"}
}

// clock drives a scenario: every step is 1 s after the previous one, and
// every signal's start is set to the step's time (minus its latency).
type clock struct {
	t   *testing.T
	s   state.Settings
	st  events.EndpointState
	now time.Time
	// changes are the status changes seen, in order.
	changes []state.Change
}

func newClock(t *testing.T, s state.Settings) *clock {
	return &clock{t: t, s: s, st: state.New("ep", t0), now: t0}
}

func (c *clock) advance(d time.Duration) { c.now = c.now.Add(d) }

// apply ticks, then applies each signal one second apart.
func (c *clock) apply(sigs ...state.Signal) state.Change {
	c.t.Helper()
	var last state.Change
	for _, sig := range sigs {
		c.advance(time.Second)
		c.tick()
		stamp(&sig, c.now)
		next, ch := state.Apply(c.s, c.st, sig, c.now)
		c.check(next)
		if ch.Changed() {
			c.changes = append(c.changes, ch)
		}
		c.st, last = next, ch
	}
	return last
}

// tick runs the time-driven transitions due now.
func (c *clock) tick() state.Change {
	c.t.Helper()
	next, ch := state.Tick(c.s, c.st, c.now)
	c.check(next)
	if ch.Changed() {
		c.changes = append(c.changes, ch)
	}
	c.st = next
	return ch
}

func (c *clock) check(st events.EndpointState) {
	c.t.Helper()
	if err := st.Validate(); err != nil {
		c.t.Fatalf("invalid record after a step: %v\n%+v", err, st)
	}
}

func stamp(sig *state.Signal, now time.Time) {
	switch {
	case sig.Probe != nil:
		p := *sig.Probe
		p.StartedAt = now.Add(-time.Duration(p.LatencyMS * float64(time.Millisecond)))
		sig.Probe = &p
	case sig.Outcome != nil:
		o := *sig.Outcome
		o.StartedAt = now.Add(-time.Duration(o.LatencyMS * float64(time.Millisecond)))
		sig.Outcome = &o
	}
}

func repeat(n int, sig state.Signal) []state.Signal {
	out := make([]state.Signal, n)
	for i := range out {
		out[i] = sig
	}
	return out
}

// cycle repeats the sequence sigs n times.
func cycle(n int, sigs ...state.Signal) []state.Signal {
	var out []state.Signal
	for range n {
		out = append(out, sigs...)
	}
	return out
}

func concat(parts ...[]state.Signal) []state.Signal {
	var out []state.Signal
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
