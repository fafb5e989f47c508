package evaluator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// TestEndToEnd: probe events in; the KV record and status-change events
// out, each with its cause and the id <endpoint>@<revision>.
func TestEndToEnd(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, nil, "flaky", "steady")
	startEvaluator(t, js, cfg)

	// Every configured endpoint has a record before any probe.
	natstest.WaitFor(t, 10*time.Second, "records of both endpoints", func() bool {
		all, err := store(t, js).List(context.Background())
		return err == nil && len(all) == 2
	})
	if st := record(t, js, "steady"); st.Health != events.HealthUnknown || st.Breaker != events.BreakerClosed {
		t.Errorf("initial record %+v, want unknown/closed", st)
	}

	now := time.Now()
	var ids []string
	var seq uint64
	for i := range 5 {
		id, s := publish(t, js, probeEvent("flaky", events.ProbeFail, events.ClassHTTP5xx, "HTTP 503", now.Add(time.Duration(i)*time.Millisecond)))
		ids, seq = append(ids, id), s
	}
	st := waitApplied(t, js, "flaky", seq)
	if st.Health != events.HealthUnhealthy || st.Breaker != events.BreakerOpen || st.OpenCount != 1 {
		t.Fatalf("after 5 failing probes: %s/%s open_count %d, want unhealthy/open 1", st.Health, st.Breaker, st.OpenCount)
	}
	if st.LastError == nil || st.LastError.Class != events.ClassHTTP5xx || st.LastError.Message != "HTTP 503" || st.LastError.Source != "/prober/v1" {
		t.Errorf("last_error = %+v", st.LastError)
	}
	// The change is written pending, published, then cleared.
	natstest.WaitFor(t, 5*time.Second, "pending changes cleared", func() bool { return len(record(t, js, "flaky").Pending) == 0 })

	var got []statusMsg
	natstest.WaitFor(t, 10*time.Second, "two status changes", func() bool {
		got = changesOf(statusEvents(t, js), "flaky")
		return len(got) >= 2
	})
	if len(got) != 2 {
		t.Fatalf("%d status changes, want 2: %s", len(got), mustJSON(got))
	}
	health, breaker := got[0].Change, got[1].Change
	if diff := cmp.Diff(&events.Transition{From: "unknown", To: "unhealthy"}, health.Health); diff != "" || health.Breaker != nil {
		t.Errorf("first change: health (-want +got):\n%s breaker %+v", diff, health.Breaker)
	}
	if diff := cmp.Diff(&events.Transition{From: "closed", To: "open"}, breaker.Breaker); diff != "" || breaker.Health != nil {
		t.Errorf("second change: breaker (-want +got):\n%s health %+v", diff, breaker.Health)
	}
	wantCause := events.Cause{Kind: events.CauseProbe, Reason: "5 consecutive failures (failure_threshold 5)", EventID: ids[4],
		EventType: events.TypeProbeResult, Source: "/prober/v1", ProbeKind: events.ProbeModels, Outcome: "fail",
		ErrorClass: events.ClassHTTP5xx, Error: "HTTP 503"}
	if diff := cmp.Diff(wantCause, breaker.Cause); diff != "" {
		t.Errorf("breaker cause (-want +got):\n%s", diff)
	}
	if health.Cause.EventID != ids[2] {
		t.Errorf("health change caused by %s, want the third probe %s", health.Cause.EventID, ids[2])
	}
	for _, m := range got {
		want := fmt.Sprintf("flaky@%d", m.Change.Revision)
		if m.ID != want || m.MsgID != want || m.Change.State.Revision != m.Change.Revision {
			t.Errorf("status change id %q, Nats-Msg-Id %q, state revision %d, want %s", m.ID, m.MsgID, m.Change.State.Revision, want)
		}
		if m.Source != "/evaluator/test" {
			t.Errorf("source %q, want /evaluator/test", m.Source)
		}
	}
	if breaker.State.Breaker != events.BreakerOpen || breaker.State.AppliedSeq != seq {
		t.Errorf("state after: breaker %s applied_seq %d, want open %d", breaker.State.Breaker, breaker.State.AppliedSeq, seq)
	}
	if got[0].Change.Revision >= got[1].Change.Revision {
		t.Errorf("revisions %d then %d, want increasing", got[0].Change.Revision, got[1].Change.Revision)
	}
}

// TestBadInputIsDeadLettered: an undecodable message, a schema-invalid
// event and events that do not belong on their subject are dead-lettered
// with the reason, and the events around them are applied.
func TestBadInputIsDeadLettered(t *testing.T) {
	_, nc, js := natstest.Start(t)
	cfg := testConfig(t, nil, "ep")
	startEvaluator(t, js, cfg)
	ctx := context.Background()
	now := time.Now()

	publish(t, js, probeEvent("ep", events.ProbePass, "", "", now))
	raw := func(subject, body string) {
		m := nats.NewMsg(subject)
		m.Data = []byte(body)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	raw("switchboard.probe.ep", "this is not an event")
	// A well-formed CloudEvent whose data breaks the schema (outcome "maybe").
	raw("switchboard.outcome.ep", `{"specversion":"1.0","id":"x1","source":"/worker/w1","type":"switchboard.request.outcome.v1",`+
		`"datacontenttype":"application/json","data":{"endpoint":"ep","model":"m","lane":"durable","attempt":1,"outcome":"maybe",`+
		`"latency_ms":1,"started_at":"2026-01-01T00:00:00Z"}}`)
	// A valid probe result published on another endpoint's subject.
	other, err := natsx.EncodeMsg("/prober/v1", "x2", probeEvent("elsewhere", events.ProbePass, "", "", now))
	if err != nil {
		t.Fatal(err)
	}
	other.Subject = "switchboard.probe.ep"
	if _, err := js.PublishMsg(ctx, other); err != nil {
		t.Fatal(err)
	}
	raw("switchboard.probe.ep.extra", "{}")
	_, last := publish(t, js, probeEvent("ep", events.ProbePass, "", "", now.Add(time.Millisecond)))

	st := waitApplied(t, js, "ep", last)
	if st.ConsecutiveSuccesses != 2 {
		t.Errorf("consecutive successes %d, want the 2 valid probes", st.ConsecutiveSuccesses)
	}
	dlq, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "4 dead letters", func() bool {
		info, err := dlq.Info(ctx)
		return err == nil && info.State.Msgs == 4
	})
	type dead struct{ Subject, Origin, Reason string }
	var got []dead
	for seq := uint64(1); seq <= 4; seq++ {
		m, err := dlq.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, dead{m.Subject, m.Header.Get(natsx.HeaderDeadSubject), m.Header.Get(natsx.HeaderDeadReason)})
	}
	want := []struct{ subject, origin, reason string }{
		{"switchboard.dead.health.ep", "switchboard.probe.ep", "not a structured-mode CloudEvent"},
		{"switchboard.dead.health.ep", "switchboard.outcome.ep", "/outcome"},
		{"switchboard.dead.health.ep", "switchboard.probe.ep", `endpoint "elsewhere" does not belong on switchboard.probe.ep`},
		{"switchboard.dead.health.unknown", "switchboard.probe.ep.extra", "is not switchboard.probe.<endpoint>"},
	}
	// Endpoints are processed in parallel shards: match regardless of order.
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g.Subject == w.subject && g.Origin == w.origin && strings.Contains(g.Reason, w.reason)
		}
		if !found {
			t.Errorf("no dead letter on %s from %s with a reason containing %q in %+v", w.subject, w.origin, w.reason, got)
		}
	}
	_ = nc
}

// TestOpenBecomesHalfOpenWithoutTraffic: the timer moves an open breaker to
// half-open when the recovery timeout passes, with no event at all.
func TestOpenBecomesHalfOpenWithoutTraffic(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, func(c *config.Config) {
		c.Breaker.FailureThreshold = 1
		c.Breaker.RecoveryTimeout = 200 * time.Millisecond
	}, "ep")
	startEvaluator(t, js, cfg)
	_, seq := publish(t, js, outcomeEvent("ep", events.ClassConnect, time.Now()))
	st := waitApplied(t, js, "ep", seq)
	if st.Breaker != events.BreakerOpen {
		t.Fatalf("breaker %s, want open", st.Breaker)
	}
	natstest.WaitFor(t, 5*time.Second, "half-open", func() bool { return record(t, js, "ep").Breaker == events.BreakerHalfOpen })
	var changes []statusMsg
	natstest.WaitFor(t, 5*time.Second, "the open -> half_open event", func() bool {
		changes = changesOf(statusEvents(t, js), "ep")
		return len(changes) == 2
	})
	ch := changes[1].Change
	if diff := cmp.Diff(&events.Transition{From: "open", To: "half_open"}, ch.Breaker); diff != "" {
		t.Errorf("breaker change (-want +got):\n%s", diff)
	}
	if ch.Cause.Kind != events.CauseTimer || !strings.Contains(ch.Cause.Reason, "recovery timeout 200ms elapsed") {
		t.Errorf("cause %+v, want the timer's recovery timeout", ch.Cause)
	}
	if d := ch.At.Sub(*st.OpenUntil); d < 0 || d > 2*time.Second {
		t.Errorf("half-open at %v, %s after open_until", ch.At, d)
	}
}

// TestPendingPublishRecovery: when the status change cannot be published
// after its write (the STATUS stream is gone), it stays pending in the
// record; once the stream is back, the evaluator publishes it, once, with
// its original id, and clears it.
func TestPendingPublishRecovery(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	cfg := testConfig(t, func(c *config.Config) { c.Breaker.FailureThreshold = 1 }, "ep")
	startEvaluator(t, js, cfg)
	natstest.WaitFor(t, 10*time.Second, "the record", func() bool { _, err := store(t, js).Get(ctx, "ep"); return err == nil })

	if err := js.DeleteStream(ctx, events.StreamStatus); err != nil {
		t.Fatal(err)
	}
	_, seq := publish(t, js, outcomeEvent("ep", events.ClassHTTP5xx, time.Now()))
	st := waitApplied(t, js, "ep", seq)
	if st.Breaker != events.BreakerOpen {
		t.Fatalf("breaker %s, want open", st.Breaker)
	}
	if len(st.Pending) != 1 || st.Pending[0].Breaker == nil || st.Pending[0].Revision == 0 {
		t.Fatalf("pending = %s, want the closed -> open change with its revision", mustJSON(st.Pending))
	}
	pending := st.Pending[0]

	// A second change while the stream is still gone queues behind it.
	_, seq2 := publish(t, js, probeEvent("ep", events.ProbeFail, events.ClassAuth, "HTTP 401", time.Now()))
	st = waitApplied(t, js, "ep", seq2)
	if len(st.Pending) != 2 {
		t.Fatalf("pending = %s, want 2 changes", mustJSON(st.Pending))
	}

	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := natsx.Provision(pctx, js, natstest.NATSConfig(1)); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "pending changes published and cleared", func() bool {
		return len(record(t, js, "ep").Pending) == 0
	})
	got := statusEvents(t, js)
	if len(got) != 2 {
		t.Fatalf("%d status events, want 2: %s", len(got), mustJSON(got))
	}
	if want := fmt.Sprintf("ep@%d", pending.Revision); got[0].ID != want || got[0].MsgID != want {
		t.Errorf("recovered change id %q (msg id %q), want %s", got[0].ID, got[0].MsgID, want)
	}
	if diff := cmp.Diff(pending.Breaker, got[0].Change.Breaker); diff != "" {
		t.Errorf("recovered change (-want +got):\n%s", diff)
	}
	if got[0].Change.Revision >= got[1].Change.Revision {
		t.Errorf("changes out of revision order: %d then %d", got[0].Change.Revision, got[1].Change.Revision)
	}
	if got[1].Change.Health == nil || got[1].Change.Health.To != "unhealthy" {
		t.Errorf("second change %s, want health -> unhealthy", mustJSON(got[1].Change))
	}
}

// TestQuotaGroupThrottle: a 429 on one member throttles its whole quota
// group, and only it; the peers' changes name the member.
func TestQuotaGroupThrottle(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, func(c *config.Config) {
		c.Endpoints[0].QuotaGroup = "team"
		c.Endpoints[1].QuotaGroup = "team"
	}, "a", "b", "c")
	startEvaluator(t, js, cfg)
	until := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	o := outcomeEvent("a", events.ClassHTTP429, time.Now())
	o.ThrottledUntil = &until
	id, seq := publish(t, js, o)
	a := waitApplied(t, js, "a", seq)
	if a.ThrottledUntil == nil || !a.ThrottledUntil.Equal(until) || a.Breaker != events.BreakerClosed || a.Failures != 0 {
		t.Fatalf("a: throttled %v breaker %s failures %d, want throttled until %v, closed, no failure", a.ThrottledUntil, a.Breaker, a.Failures, until)
	}
	if b := record(t, js, "b"); b.ThrottledUntil == nil || !b.ThrottledUntil.Equal(until) {
		t.Errorf("b throttled until %v, want %v", b.ThrottledUntil, until)
	}
	if c := record(t, js, "c"); c.ThrottledUntil != nil {
		t.Errorf("c (no group) throttled until %v", c.ThrottledUntil)
	}
	var bs []statusMsg
	natstest.WaitFor(t, 5*time.Second, "b's status change", func() bool {
		bs = changesOf(statusEvents(t, js), "b")
		return len(bs) == 1
	})
	cause := bs[0].Change.Cause
	if cause.Kind != events.CauseQuota || cause.Endpoint != "a" || cause.EventID != id || bs[0].Change.Throttle == nil {
		t.Errorf("b's change %s, want a quota_group throttle caused by a's event %s", mustJSON(bs[0].Change), id)
	}
	if m := record(t, js, "a"); admitted(cfg, m) {
		t.Error("a throttled endpoint was admitted")
	}
}

func admitted(cfg *config.Config, st events.EndpointState) bool {
	return state.Admit(state.SettingsFrom(cfg), st, time.Now()).OK
}

// TestUnknownEndpointIsIgnored: events for an endpoint not in the config
// are acknowledged and ignored; nothing else stops.
func TestUnknownEndpointIsIgnored(t *testing.T) {
	_, _, js := natstest.Start(t)
	startEvaluator(t, js, testConfig(t, nil, "ep"))
	publish(t, js, probeEvent("stranger", events.ProbeFail, events.ClassConnect, "", time.Now()))
	_, seq := publish(t, js, probeEvent("ep", events.ProbePass, "", "", time.Now()))
	waitApplied(t, js, "ep", seq)
	if _, err := store(t, js).Get(context.Background(), "stranger"); err == nil {
		t.Error("a record was made for an endpoint not in the config")
	}
	cons, err := js.Consumer(context.Background(), events.StreamHealth, evaluator.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 5*time.Second, "every event acknowledged", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}

// TestOperate: operator commands change the override through KV and publish
// the change with the operator's source; an unknown name is a clear error.
func TestOperate(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, nil, "ep", "other")
	startEvaluator(t, js, cfg)
	ctx := context.Background()
	natstest.WaitFor(t, 10*time.Second, "records", func() bool { all, _ := store(t, js).List(ctx); return len(all) == 2 })
	s := state.SettingsFrom(cfg)

	res, err := evaluator.Operate(ctx, js, s, "ep", state.CmdDrain, "upgrade", "/operator/alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.State.Override != events.OverrideDrain || res.State.OverrideReason != "upgrade" || res.Change.Override == nil {
		t.Errorf("drain: %+v", res)
	}
	again, err := evaluator.Operate(ctx, js, s, "ep", state.CmdDrain, "upgrade", "/operator/alice", nil)
	if err != nil || again.Change.Changed() {
		t.Errorf("second drain: %+v %v, want no change", again.Change, err)
	}
	if _, err := evaluator.Operate(ctx, js, s, "ep", state.CmdUndrain, "", "/operator/alice", nil); err != nil {
		t.Fatal(err)
	}
	got := changesOf(statusEvents(t, js), "ep")
	if len(got) != 2 {
		t.Fatalf("%d status changes, want drain and undrain: %s", len(got), mustJSON(got))
	}
	for i, want := range []events.Transition{{From: "none", To: "drain"}, {From: "drain", To: "none"}} {
		c := got[i]
		if c.Source != "/operator/alice" || c.Change.Cause.Kind != events.CauseOperator || c.Change.Override == nil || *c.Change.Override != want {
			t.Errorf("change %d: source %s %s, want an operator change %v", i, c.Source, mustJSON(c.Change), want)
		}
	}
	_, err = evaluator.Operate(ctx, js, s, "nope", state.CmdDrain, "", "/operator/alice", nil)
	if !errors.Is(err, evaluator.ErrUnknownEndpoint) || !strings.Contains(err.Error(), "ep, other") {
		t.Errorf("unknown endpoint: %v, want ErrUnknownEndpoint listing ep, other", err)
	}
}

// TestNewValidates: New refuses incomplete options.
func TestNewValidates(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, nil, "ep")
	for _, o := range []evaluator.Options{
		{JS: js, Log: discard()},
		{Config: cfg, Log: discard()},
		{Config: cfg, JS: js},
	} {
		if _, err := evaluator.New(o); err == nil {
			t.Errorf("New(%+v) accepted incomplete options", o)
		}
	}
	_ = jetstream.ErrMsgNotFound
}

// TestMetrics: the state gauges follow the records, transitions and events
// are counted, and the lag is observed.
func TestMetrics(t *testing.T) {
	_, _, js := natstest.Start(t)
	cfg := testConfig(t, func(c *config.Config) { c.Breaker.FailureThreshold = 1 }, "ep")
	reg := prometheus.NewRegistry()
	svc, err := evaluator.New(evaluator.Options{Config: cfg, JS: js, Log: discard(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()

	_, seq := publish(t, js, outcomeEvent("ep", events.ClassHTTP5xx, time.Now()))
	waitApplied(t, js, "ep", seq)
	value := func(name string, labels map[string]string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
						continue next
					}
				}
				switch {
				case m.Gauge != nil:
					return m.GetGauge().GetValue()
				case m.Counter != nil:
					return m.GetCounter().GetValue()
				case m.Histogram != nil:
					return float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
		return -1
	}
	natstest.WaitFor(t, 5*time.Second, "the breaker gauge", func() bool {
		return value("switchboard_endpoint_breaker", map[string]string{"endpoint": "ep", "state": "open"}) == 1
	})
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"switchboard_endpoint_breaker", map[string]string{"endpoint": "ep", "state": "closed"}, 0},
		{"switchboard_endpoint_health", map[string]string{"endpoint": "ep", "state": "unknown"}, 1},
		{"switchboard_endpoint_transitions_total", map[string]string{"endpoint": "ep", "kind": "breaker", "from": "closed", "to": "open"}, 1},
		{"switchboard_evaluator_events_total", map[string]string{"type": "outcome", "result": "applied"}, 1},
		{"switchboard_evaluator_lag_seconds", nil, 1},
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range checks {
		for value(c.name, c.labels) != c.want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}
