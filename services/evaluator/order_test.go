package evaluator

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// TestApplyCatchesUpInStreamOrder: a replica that receives an endpoint's
// event while earlier ones are still in flight elsewhere applies those
// first, in stream order, each once, passing over undecodable messages; the
// replicas that hold the earlier ones then find them applied.
func TestApplyCatchesUpInStreamOrder(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	s := setUp(t, js, "ep", "other")

	now := time.Now()
	var seqs []uint64
	var ids []string
	pub := func(p events.Payload, id string) uint64 {
		ack, err := natsx.Publisher{JS: js, Source: "/prober/v1"}.Publish(ctx, id, p)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	fail := func(ep string, i int) *events.ProbeResult {
		return &events.ProbeResult{Endpoint: ep, Vantage: "v1", Kind: events.ProbeModels, Outcome: events.ProbeFail,
			ErrorClass: events.ClassConnect, LatencyMS: 1, IntervalMS: 30000, StartedAt: now.Add(time.Duration(i) * time.Millisecond)}
	}
	for i := range 3 {
		id := "e" + string(rune('1'+i))
		seqs, ids = append(seqs, pub(fail("ep", i), id)), append(ids, id)
		pub(fail("other", i), "o"+id) // another endpoint's events in between
		m := nats.NewMsg(events.ProbeSubject("ep"))
		m.Data = []byte("garbage between")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	health, _ := js.Stream(ctx, events.StreamHealth)
	parsed := func(seq uint64) event {
		raw, err := health.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := s.parse(raw.Subject, raw.Data, raw.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}

	// The third event arrives first.
	third := parsed(seqs[2])
	applied, err := s.applyUpTo(ctx, "ep", third.seq, newHeldSet(third))
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 3 || !applied[seqs[0]] || !applied[seqs[1]] || !applied[seqs[2]] {
		t.Errorf("applied %v, want the three events %v", applied, seqs)
	}
	st, err := s.store.Get(ctx, "ep")
	if err != nil {
		t.Fatal(err)
	}
	if st.AppliedSeq != seqs[2] || st.ConsecutiveFailures != 3 || st.Health != events.HealthUnhealthy {
		t.Errorf("after the third event: applied_seq %d failures %d health %s, want %d, 3, unhealthy", st.AppliedSeq, st.ConsecutiveFailures, st.Health, seqs[2])
	}
	// The health change was caused by the third event, not an earlier one:
	// the first two were applied before it.
	status, _ := js.Stream(ctx, events.StreamStatus)
	m, err := status.GetLastMsgForSubject(ctx, events.StatusSubject("ep"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := events.Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if got := env.Data.(*events.StatusChanged).Cause.EventID; got != ids[2] {
		t.Errorf("unhealthy caused by %s, want %s", got, ids[2])
	}
	// The first and second, delivered late, are duplicates now.
	for i := range 2 {
		ev := parsed(seqs[i])
		applied, err := s.applyUpTo(ctx, "ep", ev.seq, newHeldSet(ev))
		if err != nil || len(applied) != 0 {
			t.Errorf("late delivery of event %d: applied %v err %v, want a duplicate", i+1, applied, err)
		}
	}
	again, _ := s.store.Get(ctx, "ep")
	if again.Revision != st.Revision || again.ConsecutiveFailures != 3 {
		t.Errorf("a duplicate changed the record: %+v", again)
	}
	if other, _ := s.store.Get(ctx, "other"); other.AppliedSeq != 0 {
		t.Errorf("catching up ep applied other's events: %+v", other)
	}
}

// TestHeldEventIsNeverSkipped: when the stream lookup does not find an
// event this replica holds (a lagging answer; here, the message was deleted
// after its delivery), the held event is applied all the same, not taken
// for a duplicate and acknowledged unapplied.
func TestHeldEventIsNeverSkipped(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	s := setUp(t, js, "ep", "other")
	probe := func(ep string) *events.ProbeResult {
		return &events.ProbeResult{Endpoint: ep, Vantage: "v1", Kind: events.ProbeModels, Outcome: events.ProbeFail,
			ErrorClass: events.ClassConnect, LatencyMS: 1, IntervalMS: 30000, StartedAt: time.Now()}
	}
	// Another endpoint's event first, so that ep's is not the stream's
	// first: the replica, holding it out of a run, looks up what precedes it.
	if _, err := (natsx.Publisher{JS: js, Source: "/prober/v1"}).Publish(ctx, "other-1", probe("other")); err != nil {
		t.Fatal(err)
	}
	ack, err := natsx.Publisher{JS: js, Source: "/prober/v1"}.Publish(ctx, "held-1", probe("ep"))
	if err != nil {
		t.Fatal(err)
	}
	health, _ := js.Stream(ctx, events.StreamHealth)
	raw, err := health.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := s.parse(raw.Subject, raw.Data, raw.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if err := health.DeleteMsg(ctx, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	ev.seq = ack.Sequence
	applied, err := s.applyUpTo(ctx, "ep", ev.seq, newHeldSet(ev))
	if err != nil || !applied[ev.seq] {
		t.Fatalf("applied %v, err %v: want the held event applied", applied, err)
	}
	st, err := s.store.Get(ctx, "ep")
	if err != nil {
		t.Fatal(err)
	}
	if st.AppliedSeq != ev.seq || st.ConsecutiveFailures != 1 || st.LastError == nil {
		t.Errorf("record: applied_seq %d, failures %d, last error %v; want %d, 1, the probe's", st.AppliedSeq, st.ConsecutiveFailures, st.LastError, ev.seq)
	}
}

// setUp makes an evaluator for endpoints eps, set up (streams, bucket,
// records) but not running: tests call its methods directly.
func setUp(t *testing.T, js jetstream.JetStream, eps ...string) *Service {
	t.Helper()
	cfg := &config.Config{}
	for _, ep := range eps {
		cfg.Endpoints = append(cfg.Endpoints, config.Endpoint{Name: ep, BaseURL: "http://127.0.0.1:1/v1", Models: []string{"m"}})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Config: cfg, JS: js, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClock(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := events.EndpointState{UpdatedAt: base}
	tests := []struct {
		name           string
		observed, wall time.Time
		want           time.Time
	}{
		{"the observed time", base.Add(time.Second), base.Add(time.Minute), base.Add(time.Second)},
		{"never after the wall clock", base.Add(time.Hour), base.Add(time.Minute), base.Add(time.Minute)},
		{"never before the record's clock", base.Add(-time.Hour), base.Add(time.Minute), base},
		{"the wall clock when unknown", time.Time{}, base.Add(time.Minute), base.Add(time.Minute)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := clock(rec, tc.observed, tc.wall); !got.Equal(tc.want) {
				t.Errorf("clock = %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeMsg is a delivered message with only metadata.
type fakeMsg struct {
	jetstream.Msg
	md jetstream.MsgMetadata
}

func (m fakeMsg) Metadata() (*jetstream.MsgMetadata, error) { return &m.md, nil }

func delivered(consumer, stream, n uint64) fakeMsg {
	return fakeMsg{md: jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Consumer: consumer, Stream: stream}, NumDelivered: n}}
}

// TestRunTracker: consecutive first deliveries form a run that vouches for
// every stream sequence from its first; a gap, a redelivery or a new epoch
// starts a new run.
func TestRunTracker(t *testing.T) {
	var rt runTracker
	steps := []struct {
		msg   fakeMsg
		epoch uint64
		want  run
	}{
		{delivered(1, 10, 1), 0, run{start: 10}},
		{delivered(2, 11, 1), 0, run{start: 10}},
		{delivered(3, 14, 1), 0, run{start: 10}}, // 12, 13 were deleted: still every message
		{delivered(5, 20, 1), 0, run{start: 20}}, // consumer seq 4 went to another replica
		{delivered(6, 21, 1), 1, run{start: 21, epoch: 1}},
		{delivered(7, 9, 2), 1, run{}}, // a redelivery is in no run
		{delivered(8, 22, 1), 1, run{start: 22, epoch: 1}},
	}
	for i, s := range steps {
		if got := rt.next(s.msg, s.epoch); got != s.want {
			t.Errorf("step %d: run %+v, want %+v", i, got, s.want)
		}
	}
	if (run{start: 5, epoch: 1}).valid(2) || !(run{start: 5, epoch: 2}).valid(2) || (run{}).valid(0) {
		t.Error("run.valid does not follow the epoch")
	}
}
