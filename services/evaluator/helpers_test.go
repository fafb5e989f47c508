package evaluator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger {
	if os.Getenv("EVALUATOR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testConfig is a validated config with the given endpoints; edit runs
// before validation.
func testConfig(t testing.TB, edit func(*config.Config), endpoints ...string) *config.Config {
	t.Helper()
	c := &config.Config{}
	for _, name := range endpoints {
		c.Endpoints = append(c.Endpoints, config.Endpoint{Name: name, BaseURL: "http://127.0.0.1:1/v1", Models: []string{"m"}})
	}
	c.Evaluator.Instance = "test"
	c.Evaluator.TickInterval = 20 * time.Millisecond
	if edit != nil {
		edit(c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	return c
}

// startEvaluator runs one evaluator replica until the test ends.
func startEvaluator(t testing.TB, js jetstream.JetStream, cfg *config.Config) *evaluator.Service {
	t.Helper()
	svc, err := evaluator.New(evaluator.Options{Config: cfg, JS: js, Log: discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("evaluator Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("evaluator did not stop within 20s")
		}
	})
	return svc
}

var eventSeq atomic.Int64

// probeEvent is a probe result for ep finishing at `at`.
func probeEvent(ep string, out events.ProbeOutcome, class events.ErrorClass, msg string, at time.Time) *events.ProbeResult {
	return &events.ProbeResult{Endpoint: ep, Vantage: "v1", Kind: events.ProbeModels, Outcome: out, ErrorClass: class,
		Error: msg, LatencyMS: 10, IntervalMS: 30000, StartedAt: at.Add(-10 * time.Millisecond)}
}

// outcomeEvent is a request outcome for ep finishing at `at`.
func outcomeEvent(ep string, class events.ErrorClass, at time.Time) *events.RequestOutcome {
	o := &events.RequestOutcome{Endpoint: ep, Model: "m", Lane: events.LaneDurable, Attempt: 1, Outcome: events.RequestSuccess,
		LatencyMS: 20, StartedAt: at.Add(-20 * time.Millisecond)}
	if class != "" {
		o.Outcome, o.ErrorClass, o.Error = events.RequestError, class, "upstream said "+string(class)
	}
	return o
}

// publish publishes a health event and returns its id and stream sequence.
func publish(t testing.TB, js jetstream.JetStream, p events.Payload) (string, uint64) {
	t.Helper()
	source := "/worker/w1"
	if _, ok := p.(*events.ProbeResult); ok {
		source = "/prober/v1"
	}
	id := fmt.Sprintf("ev-%d", eventSeq.Add(1))
	ack, err := natsx.Publisher{JS: js, Source: source}.Publish(context.Background(), id, p)
	if err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	return id, ack.Sequence
}

func store(t testing.TB, js jetstream.JetStream) *endpointkv.Store {
	t.Helper()
	s, err := endpointkv.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func record(t testing.TB, js jetstream.JetStream, ep string) events.EndpointState {
	t.Helper()
	st, err := store(t, js).Get(context.Background(), ep)
	if err != nil {
		t.Fatalf("record of %s: %v", ep, err)
	}
	return st
}

// waitApplied waits until ep's record has applied the event at seq.
func waitApplied(t testing.TB, js jetstream.JetStream, ep string, seq uint64) events.EndpointState {
	t.Helper()
	s := store(t, js)
	var st events.EndpointState
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		st, err = s.Get(context.Background(), ep)
		if err == nil && st.AppliedSeq >= seq {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %s did not apply event %d within 20s (record %+v, err %v)", ep, seq, st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// statusMsg is one message of SWITCHBOARD_STATUS, decoded.
type statusMsg struct {
	Seq    uint64
	MsgID  string
	ID     string
	Source string
	Change *events.StatusChanged
}

// statusEvents returns every message of SWITCHBOARD_STATUS in stream order.
func statusEvents(t testing.TB, js jetstream.JetStream) []statusMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamStatus)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := info.State.Msgs
	if n == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []statusMsg
	for uint64(len(out)) < n {
		batch, err := c.Fetch(int(min(n-uint64(len(out)), 1000)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, _ := m.Metadata()
			env, err := events.Decode(m.Data())
			if err != nil {
				t.Fatalf("status message %d: %v", md.Sequence.Stream, err)
			}
			out = append(out, statusMsg{Seq: md.Sequence.Stream, MsgID: m.Headers().Get(jetstream.MsgIDHeader), ID: env.ID,
				Source: env.Source, Change: env.Data.(*events.StatusChanged)})
		}
		if got == 0 {
			t.Fatalf("read %d of %d status messages", len(out), n)
		}
	}
	return out
}

// changesOf returns the status changes of one endpoint, in order.
func changesOf(all []statusMsg, ep string) []statusMsg {
	var out []statusMsg
	for _, m := range all {
		if m.Change.Endpoint == ep {
			out = append(out, m)
		}
	}
	return out
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
