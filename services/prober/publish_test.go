package prober

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// failingJS refuses every publish, as JetStream does when no stream takes
// the subject.
type failingJS struct{ jetstream.JetStream }

func (failingJS) PublishMsg(context.Context, *nats.Msg, ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return nil, nats.ErrNoResponders
}

// stalledJS never acknowledges: every publish waits until its context ends.
type stalledJS struct{ jetstream.JetStream }

func (stalledJS) PublishMsg(ctx context.Context, _ *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// fastEndpoints are n health-probed endpoints on one mock with a 100 ms interval.
func fastEndpoints(t *testing.T, prefix string, n int) []config.Endpoint {
	t.Helper()
	_, base := newMock(t, mock.Config{APIKey: testKey})
	var eps []config.Endpoint
	for i := range n {
		ep := testEndpoint(fmt.Sprintf("%s%d", prefix, i), base, events.ProbeHealth)
		ep.CheckInterval, ep.Timeout = 100*time.Millisecond, 100*time.Millisecond
		eps = append(eps, ep)
	}
	return eps
}

// TestPublishErrors: a JetStream that refuses results costs results, never
// probes: they are counted and logged (throttled), and probing goes on.
func TestPublishErrors(t *testing.T) {
	var logs logBuffer
	p, err := New(Options{Config: testConfig(t, fastEndpoints(t, "pe", 3)...), JS: failingJS{}, Log: logs.logger(), Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	stop := startProber(t, p)
	natstest.WaitFor(t, 20*time.Second, "20 probes", func() bool { return p.completed.Load() >= 20 })
	stop()
	errs := counterValue(p.m.publishErrors.WithLabelValues(reasonPublish))
	if errs < 20 || p.published.Load() != 0 {
		t.Errorf("publish errors %v and %d published after %d probes, want every result failed", errs, p.published.Load(), p.completed.Load())
	}
	l := logs.String()
	if n := strings.Count(l, "probe result not published"); n != 1 {
		t.Errorf("publish error logged %d times in a burst, want once (throttled):\n%s", n, l)
	}
	if !strings.Contains(l, "no responders") {
		t.Errorf("the log does not say why publishing failed:\n%s", l)
	}
}

// TestStalledNATSNeverStallsProbes: with JetStream not acknowledging,
// each pair has one result in flight and one pending, newer results replace
// the pending one (counted), and probes go on at their interval; Run still
// returns after the drain timeout.
func TestStalledNATSNeverStallsProbes(t *testing.T) {
	const pairs = 5
	p, err := New(Options{Config: testConfig(t, fastEndpoints(t, "st", pairs)...), JS: stalledJS{}, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	p.drainTimeout = 100 * time.Millisecond
	stop := startProber(t, p)
	natstest.WaitFor(t, 20*time.Second, "40 probes", func() bool { return p.completed.Load() >= 40 })
	if got := counterValue(p.m.publishErrors.WithLabelValues(reasonSuperseded)); got < 40-2*pairs {
		t.Errorf("%v results superseded, want at least %d", got, 40-2*pairs)
	}
	stop()
	if p.published.Load() != 0 {
		t.Errorf("%d results published to a stalled JetStream", p.published.Load())
	}
}

// TestMetrics checks the metric names and labels after a few probes, and
// that no metric carries the key.
func TestMetrics(t *testing.T) {
	_, _, js := natstest.Start(t)
	_, base := newMock(t, mock.Config{APIKey: testKey})
	ep := testEndpoint("met", base, events.ProbeHealth, events.ProbeModels, events.ProbeCompletion)
	ep.CheckInterval, ep.Timeout = 100*time.Millisecond, 100*time.Millisecond
	reg := prometheus.NewRegistry()
	p, err := New(Options{Config: testConfig(t, ep), JS: js, Registerer: reg, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	stop := startProber(t, p)
	natstest.WaitFor(t, 20*time.Second, "6 published results", func() bool { return p.published.Load() >= 6 })
	stop()

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
		if _, err := expfmt.MetricFamilyToText(&text, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"switchboard_probes_total", "switchboard_probe_latency_seconds", "switchboard_probe_ttft_seconds",
		"switchboard_probe_publish_errors_total", "switchboard_probes_inflight", "switchboard_probe_results_published_total"} {
		if !found[name] {
			t.Errorf("metric %s is missing", name)
		}
	}
	out := text.String()
	for _, want := range []string{
		`switchboard_probes_total{class="none",endpoint="met",kind="health",outcome="pass"}`,
		`switchboard_probes_total{class="none",endpoint="met",kind="completion",outcome="pass"}`,
		`switchboard_probe_latency_seconds_count{endpoint="met",kind="models",outcome="pass"}`,
		`switchboard_probe_ttft_seconds_count{endpoint="met"}`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, testKey) {
		t.Error("the metrics contain the API key")
	}
}

func TestNewValidates(t *testing.T) {
	_, base := newMock(t, mock.Config{})
	good := func() *config.Config { return testConfig(t, testEndpoint("ok", base, events.ProbeModels)) }
	tests := []struct {
		name    string
		opts    func() Options
		wantErr string
	}{
		{"no JS", func() Options { return Options{Config: good()} }, "JS is required"},
		{"no config", func() Options { return Options{JS: failingJS{}} }, "Config is required"},
		{"no endpoints", func() Options {
			c := good()
			c.Endpoints = nil
			return Options{Config: c, JS: failingJS{}}
		}, "no endpoints"},
		// The rest of the config is config.Validate's to check.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts())
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New: %v, want ErrInvalidOptions saying %q", err, tt.wantErr)
			}
		})
	}
}

// TestOutbox: at most one pending result and one publish in flight per
// pair; a newer result replaces the pending one; pairs go out oldest first.
func TestOutbox(t *testing.T) {
	superseded := 0
	o := newOutbox(2, func() { superseded++ })
	a, b := &task{}, &task{}
	res := func(n int64) *events.ProbeResult { return &events.ProbeResult{IntervalMS: n} }
	take := func() (*task, int64) {
		t.Helper()
		tk, r, ok := o.take()
		if !ok {
			t.Fatal("take: outbox closed")
		}
		return tk, r.IntervalMS
	}

	o.put(a, res(1))
	o.put(b, res(2))
	o.put(a, res(3)) // replaces 1, a stays first in line
	if tk, n := take(); tk != a || n != 3 {
		t.Fatalf("took %v, want a's result 3", n)
	}
	o.put(a, res(4)) // a is in flight: 4 waits, b goes first
	if tk, n := take(); tk != b || n != 2 {
		t.Fatalf("took %v, want b's result 2", n)
	}
	if o.n != 0 {
		t.Fatalf("%d pairs ready while a's publish is in flight, want 0", o.n)
	}
	o.put(a, res(5)) // replaces 4
	o.finish(a)
	if tk, n := take(); tk != a || n != 5 {
		t.Fatalf("took %v, want a's result 5", n)
	}
	o.finish(a)
	o.finish(b)
	if superseded != 2 {
		t.Errorf("%d results superseded, want 2", superseded)
	}
	o.close()
	if _, _, ok := o.take(); ok {
		t.Error("take on a closed, empty outbox succeeded")
	}
}
