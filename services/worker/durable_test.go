package worker

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// attemptsSummary is what a test compares of a record's attempts.
type attemptSummary struct {
	Endpoint string
	Outcome  events.RequestResult
	Class    events.ErrorClass
}

func summarize(as []events.Attempt) []attemptSummary {
	var out []attemptSummary
	for _, a := range as {
		out = append(out, attemptSummary{a.Endpoint, a.Outcome, a.ErrorClass})
	}
	return out
}

func TestDurableJobSucceeds(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	job := newJob(t)
	job.Metadata = map[string]string{"team": "x"}
	e.submit(job)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobSucceeded || rec.Endpoint != "a" || rec.Lane != events.LaneDurable {
		t.Fatalf("record = %+v, want succeeded on a (durable)", rec)
	}
	var resp struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(rec.Response, &resp); err != nil || len(resp.Choices) != 1 {
		t.Fatalf("response %s: %v", rec.Response, err)
	}
	if want := mock.ReplyContent("a", "hello"); resp.Choices[0].Message.Content != want {
		t.Errorf("content = %q, want %q", resp.Choices[0].Message.Content, want)
	}
	kv, _ := e.record(job.ID)
	if diff := cmp.Diff(rec, kv); diff != "" {
		t.Errorf("KV record differs from the finished event (-event +kv):\n%s", diff)
	}
	if rec.Metadata["team"] != "x" || rec.Model != "m" || rec.Deliveries != 1 || rec.FinishedAt == nil {
		t.Errorf("record fields: %+v", rec)
	}
	if got := e.finishedCount(job.ID); got != 1 {
		t.Errorf("%d finished events, want 1", got)
	}
}

// TestFailoverOnEndpointFailures: the primary fails in each way an endpoint
// can; the job fails over to the secondary at once and succeeds there.
func TestFailoverOnEndpointFailures(t *testing.T) {
	tests := []struct {
		name   string
		faults mock.Faults
		apiKey string // the primary wants a key the worker does not have
		want   events.ErrorClass
	}{
		{name: "5xx", faults: mock.Faults{ErrorRate: 1, ErrorStatus: 503}, want: events.ClassHTTP5xx},
		{name: "connection reset", faults: mock.Faults{Down: true, OutageMode: mock.OutageReset}, want: events.ClassConnect},
		{name: "timeout", faults: mock.Faults{HangRate: 1}, want: events.ClassTimeout},
		{name: "malformed 200", faults: mock.Faults{MalformedRate: 1}, want: events.ClassBadBody},
		{name: "truncated body", faults: mock.Faults{TruncateRate: 1}, want: events.ClassConnect},
		{name: "bad key", apiKey: "sk-right", want: events.ClassAuth},
		{name: "other 4xx", faults: mock.Faults{ErrorRate: 1, ErrorStatus: 409}, want: events.ClassHTTP4xx},
	}
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: tc.faults, APIKey: tc.apiKey})
			cfg := testConfig(a.endpoint(1), b.endpoint(2))
			cfg.Worker.RequestTimeout = 500 * time.Millisecond
			e := newEnv(t, cfg)
			e.startWorker(Options{})
			job := newJob(t)
			e.submit(job)
			rec := e.finished(job.ID, 10*time.Second)
			want := []attemptSummary{{"a", events.RequestError, tc.want}, {"b", events.RequestSuccess, ""}}
			if diff := cmp.Diff(want, summarize(rec.Attempts)); diff != "" {
				t.Errorf("attempts (-want +got):\n%s", diff)
			}
			if rec.Status != events.JobSucceeded || rec.Endpoint != "b" {
				t.Errorf("status %s on %s, want succeeded on b", rec.Status, rec.Endpoint)
			}
			if tc.apiKey != "" && strings.Contains(string(mustJSON(t, rec)), "sk-right") {
				t.Error("the record holds the API key")
			}
			// One outcome event per call, with the class the record has.
			oa, ob := e.outcomes("a", 1), e.outcomes("b", 1)
			if len(oa) != 1 || len(ob) != 1 || oa[0].ErrorClass != tc.want || ob[0].Outcome != events.RequestSuccess {
				t.Errorf("outcomes a=%+v b=%+v", oa, ob)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCallerErrorEndsJob: a 404 for the model (a caller error) ends the job
// at once with that error, although another endpoint could be tried.
func TestCallerErrorEndsJob(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"other"}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
	e.startWorker(Options{})
	job := newJob(t)
	e.submit(job)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobFailed || rec.Error == nil || rec.Error.StatusCode != http.StatusNotFound ||
		rec.Error.Class != events.ClassClientError || !strings.Contains(rec.Error.Message, "does not exist") {
		t.Fatalf("record = %+v / %+v, want failed with the upstream's 404", rec, rec.Error)
	}
	if len(rec.Attempts) != 1 || b.chatCalls() != 0 {
		t.Errorf("%d attempts and %d calls to b, want 1 and 0 (no retry of a caller error)", len(rec.Attempts), b.chatCalls())
	}
}

// TestThrottledEndpointIsSkipped: a 429 carries throttled_until in its
// outcome; the job fails over, and the next job does not try the throttled
// endpoint at all.
func TestThrottledEndpointIsSkipped(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"},
		Faults: mock.Faults{RateLimitRate: 1, RetryAfter: mock.Duration(30 * time.Second)}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
	e.startWorker(Options{})
	j1 := newJob(t)
	before := time.Now()
	e.submit(j1)
	r1 := e.finished(j1.ID, 10*time.Second)
	want := []attemptSummary{{"a", events.RequestError, events.ClassHTTP429}, {"b", events.RequestSuccess, ""}}
	if diff := cmp.Diff(want, summarize(r1.Attempts)); diff != "" {
		t.Errorf("first job attempts (-want +got):\n%s", diff)
	}
	oa := e.outcomes("a", 1)
	if len(oa) != 1 || oa[0].ThrottledUntil == nil || oa[0].ThrottledUntil.Before(before.Add(29*time.Second)) {
		t.Fatalf("outcome of the 429 = %+v, want throttled_until about 30s ahead", oa)
	}
	j2 := newJob(t)
	e.submit(j2)
	r2 := e.finished(j2.ID, 10*time.Second)
	if diff := cmp.Diff([]attemptSummary{{"b", events.RequestSuccess, ""}}, summarize(r2.Attempts)); diff != "" {
		t.Errorf("second job attempts (-want +got):\n%s", diff)
	}
	if got := a.chatCalls(); got != 1 {
		t.Errorf("a got %d calls, want 1", got)
	}
}

func TestDeadlineExpiresJob(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(3 * time.Second)}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})

	t.Run("during the call", func(t *testing.T) {
		job := newJob(t)
		dl := time.Now().Add(300 * time.Millisecond)
		job.Deadline = &dl
		e.submit(job)
		rec := e.finished(job.ID, 10*time.Second)
		if rec.Status != events.JobExpired || rec.Error == nil || len(rec.Attempts) != 1 {
			t.Fatalf("record = %+v, want expired with its one attempt", rec)
		}
		if c := rec.Attempts[0].ErrorClass; c != events.ClassCallerCanceled {
			t.Errorf("attempt class = %q, want caller_canceled (the deadline is not the endpoint's fault)", c)
		}
	})
	t.Run("before it was taken", func(t *testing.T) {
		job := newJob(t)
		job.SubmittedAt = time.Now().Add(-time.Hour)
		dl := time.Now().Add(-time.Minute)
		job.Deadline = &dl
		e.submit(job)
		rec := e.finished(job.ID, 10*time.Second)
		if rec.Status != events.JobExpired || len(rec.Attempts) != 0 {
			t.Fatalf("record = %+v, want expired without attempts", rec)
		}
	})
}

func TestPoisonJobGoesToDLQ(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	for _, tc := range []struct{ id, body string }{
		{"poison1", "not json"},
		{"poison2", `{"specversion":"1.0","id":"poison2","source":"/x","type":"switchboard.chat.job.submitted.v1","datacontenttype":"application/json","data":{"id":"poison2","request":{"model":""},"submitted_at":"2026-01-01T00:00:00Z"}}`},
	} {
		m := natsx.NewMsg(events.JobSubmitSubject(events.PriorityNormal), tc.id, []byte(tc.body))
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 10*time.Second, "two dead letters", func() bool {
		return e.subjectCount(events.StreamDLQ, events.JobDeadSubject("poison1")) == 1 &&
			e.subjectCount(events.StreamDLQ, events.JobDeadSubject("poison2")) == 1
	})
	s, _ := e.js.Stream(context.Background(), events.StreamDLQ)
	m, err := s.GetLastMsgForSubject(context.Background(), events.JobDeadSubject("poison2"))
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Header.Get(natsx.HeaderDeadReason); !strings.Contains(r, "model is missing") {
		t.Errorf("dead-letter reason %q should say what is wrong", r)
	}
	natstest.WaitFor(t, 5*time.Second, "job stream empty", func() bool {
		js, _ := e.js.Stream(context.Background(), events.StreamJobs)
		info, _ := js.Info(context.Background())
		return info.State.Msgs == 0
	})
	if a.chatCalls() != 0 {
		t.Error("a poison job reached an endpoint")
	}
}

// TestMaxDeliverDeadLetters: a worker that "crashes" on every delivery of a
// job; on the last delivery JetStream will make, the job is dead-lettered
// and its record says so.
func TestMaxDeliverDeadLetters(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.AckWait = 500 * time.Millisecond
	cfg.Worker.MaxDeliver = 3
	e := newEnv(t, cfg)
	var crashes atomic.Int32
	e.startWorker(Options{beforeCall: func(*events.JobSubmitted, int) error { crashes.Add(1); return errCrash }})
	job := newJob(t)
	e.submit(job)
	rec := e.finished(job.ID, 20*time.Second)
	if rec.Status != events.JobFailed || rec.DeadLetter == "" || rec.Deliveries != 3 || !strings.Contains(rec.Error.Message, "dead-lettered") {
		t.Fatalf("record = %+v (error %+v), want failed, dead-lettered on delivery 3", rec, rec.Error)
	}
	if got := crashes.Load(); got != 2 {
		t.Errorf("%d crashes, want 2 (deliveries 1 and 2; the third is dead-lettered without running)", got)
	}
	if n := e.subjectCount(events.StreamDLQ, events.JobDeadSubject(job.ID)); n != 1 {
		t.Errorf("%d dead letters, want 1", n)
	}
	natstest.WaitFor(t, 5*time.Second, "job removed from the work queue", func() bool {
		js, _ := e.js.Stream(context.Background(), events.StreamJobs)
		info, _ := js.Info(context.Background())
		return info.State.Msgs == 0
	})
}

// TestRedeliveryOfFinishedJobIsIdempotent: a job delivered again after it
// finished (its ack was lost, or it was resubmitted past the duplicate
// window) makes no call and no second finished event.
func TestRedeliveryOfFinishedJobIsIdempotent(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	job := newJob(t)
	e.submit(job)
	first := e.finished(job.ID, 10*time.Second)
	// The same job again, under another Nats-Msg-Id so JetStream keeps it.
	m, err := natsx.EncodeMsg("/test", job.ID, job)
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Set("Nats-Msg-Id", job.ID+"-again")
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the redelivered job acked", func() bool {
		js, _ := e.js.Stream(context.Background(), events.StreamJobs)
		info, _ := js.Info(context.Background())
		return info.State.Msgs == 0
	})
	if n := e.finishedCount(job.ID); n != 1 {
		t.Errorf("%d finished events, want 1", n)
	}
	if got := a.chatCalls(); got != 1 {
		t.Errorf("%d upstream calls, want 1", got)
	}
	rec, _ := e.record(job.ID)
	if diff := cmp.Diff(first, rec); diff != "" {
		t.Errorf("record changed (-first +now):\n%s", diff)
	}
}

// TestCancelledJobIsNotRun: the gateway cancelled the job before a worker
// took it; the worker neither calls upstream nor overwrites the record.
func TestCancelledJobIsNotRun(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	job := newJob(t)
	// What the gateway does on DELETE: a terminal record and its event.
	now := time.Now().UTC()
	rec := events.JobRecord{ID: job.ID, Status: events.JobCancelled, Lane: events.LaneDurable, Model: "m",
		Error: &events.JobError{Message: "cancelled by the client"}, SubmittedAt: job.SubmittedAt, FinishedAt: &now, UpdatedAt: now}
	kv, _ := e.js.KeyValue(context.Background(), events.BucketJobs)
	if _, err := kv.Create(context.Background(), job.ID, mustJSON(t, rec)); err != nil {
		t.Fatal(err)
	}
	if _, err := (natsx.Publisher{JS: e.js, Source: "/gateway/t"}).Publish(context.Background(),
		events.FinishedEventID(job.ID), &events.JobFinished{JobRecord: rec}); err != nil {
		t.Fatal(err)
	}
	e.submit(job)
	e.startWorker(Options{})
	natstest.WaitFor(t, 10*time.Second, "the cancelled job acked", func() bool {
		js, _ := e.js.Stream(context.Background(), events.StreamJobs)
		info, _ := js.Info(context.Background())
		return info.State.Msgs == 0
	})
	got, _ := e.record(job.ID)
	if got.Status != events.JobCancelled || e.finishedCount(job.ID) != 1 || a.chatCalls() != 0 {
		t.Errorf("status %s, %d finished events, %d calls; want cancelled, 1, 0", got.Status, e.finishedCount(job.ID), a.chatCalls())
	}
}

// TestCancelWhileRunning: the record turns cancelled while the call runs;
// the worker stops, keeps the cancelled record and acks.
func TestCancelWhileRunning(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(10 * time.Second)}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.RequestTimeout = 30 * time.Second
	e := newEnv(t, cfg)
	e.startWorker(Options{RunningAfter: -1})
	job := newJob(t)
	e.submit(job)
	var rec events.JobRecord
	var rev uint64
	kv, _ := e.js.KeyValue(context.Background(), events.BucketJobs)
	natstest.WaitFor(t, 10*time.Second, "record running", func() bool {
		en, err := kv.Get(context.Background(), job.ID)
		if err != nil {
			return false
		}
		_ = json.Unmarshal(en.Value(), &rec)
		rev = en.Revision()
		return rec.Status == events.JobRunning
	})
	now := time.Now().UTC()
	rec.Status, rec.FinishedAt, rec.Error = events.JobCancelled, &now, &events.JobError{Message: "cancelled"}
	if _, err := kv.Update(context.Background(), job.ID, mustJSON(t, rec), rev); err != nil {
		t.Fatal(err)
	}
	if _, err := (natsx.Publisher{JS: e.js, Source: "/gateway/t"}).Publish(context.Background(),
		events.FinishedEventID(job.ID), &events.JobFinished{JobRecord: rec}); err != nil {
		t.Fatal(err)
	}
	// The keep-alive notices within AckWait/3.
	natstest.WaitFor(t, 10*time.Second, "the cancelled job acked", func() bool {
		js, _ := e.js.Stream(context.Background(), events.StreamJobs)
		info, _ := js.Info(context.Background())
		return info.State.Msgs == 0
	})
	got, _ := e.record(job.ID)
	if got.Status != events.JobCancelled || e.finishedCount(job.ID) != 1 {
		t.Errorf("status %s with %d finished events, want cancelled with 1", got.Status, e.finishedCount(job.ID))
	}
}

// TestWaitsForBreaker: the only endpoint's breaker is open; the job waits
// (NAK with delay, record still queued with a note) and runs once the
// breaker closes.
func TestWaitsForBreaker(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	now := time.Now()
	st := state.New("a", now)
	until := now.Add(1500 * time.Millisecond)
	st.Breaker, st.OpenedAt, st.OpenUntil, st.OpenCount = events.BreakerOpen, &now, &until, 1
	e.putState(st)
	e.startWorker(Options{})
	job := newJob(t)
	e.submit(job)
	natstest.WaitFor(t, 5*time.Second, "a waiting record", func() bool {
		rec, ok := e.record(job.ID)
		return ok && rec.Status == events.JobQueued && rec.Error != nil && strings.Contains(rec.Error.Message, "breaker open")
	})
	// The evaluator's part: the breaker closes.
	st.Breaker, st.OpenUntil = events.BreakerClosed, nil
	e.putState(st)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobSucceeded || rec.Deliveries < 2 || len(rec.Attempts) != 1 {
		t.Errorf("record = %+v, want succeeded on a later delivery with one attempt", rec)
	}
}

// TestNoEndpointServesModel fails the job with a 404-like error.
func TestNoEndpointServesModel(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	job := newJob(t)
	job.Request = json.RawMessage(`{"model":"unknown","messages":[{"role":"user","content":"hi"}]}`)
	e.submit(job)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobFailed || rec.Error.StatusCode != http.StatusNotFound || len(rec.Attempts) != 0 {
		t.Errorf("record = %+v, want failed 404 without attempts", rec)
	}
}

// TestAliasAndRouting: the tier strategy picks the primary, which serves
// the asked model under another name; the call carries the upstream name
// and the endpoint's key.
func TestAliasAndRouting(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"up-model"}, APIKey: "sk-a"})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	epA := config.Endpoint{Name: "a", BaseURL: a.url, Models: []string{"up-model"}, Aliases: map[string]string{"m": "up-model"},
		Weight: 1, Tier: 1, APIKey: "sk-a"}
	e := newEnv(t, testConfig(b.endpoint(2), epA))
	e.startWorker(Options{})
	job := newJob(t)
	e.submit(job)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobSucceeded || rec.Endpoint != "a" || rec.Attempts[0].Model != "up-model" || rec.Model != "m" {
		t.Errorf("record = %+v, want succeeded on a as up-model (asked: m)", rec)
	}
	if !strings.Contains(string(rec.Response), `"model":"up-model"`) {
		t.Errorf("response %s should come from up-model", rec.Response)
	}
}

// TestStrategies routes through real endpoints whose records say their
// latency and price.
func TestStrategies(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	c := startMock(t, mock.Config{Name: "c", Models: []string{"m"}})
	epA, epB, epC := a.endpoint(2), b.endpoint(1), c.endpoint(3)
	epA.PricePerMTok, epB.PricePerMTok, epC.PricePerMTok = 3, 9, 1
	lat := map[string]float64{"a": 20, "b": 300, "c": 900}
	tests := []struct{ strategy, want string }{
		{config.StrategyTier, "b"},
		{config.StrategyCheapest, "c"},
		{config.StrategyLowestLatency, "a"},
	}
	for _, tc := range tests {
		t.Run(tc.strategy, func(t *testing.T) {
			cfg := testConfig(epA, epB, epC)
			cfg.Worker.Strategy = tc.strategy
			e := newEnv(t, cfg)
			for n, l := range lat {
				st := state.New(n, time.Now())
				st.Health, st.LatencyEWMAMS = events.HealthHealthy, l
				e.putState(st)
			}
			e.startWorker(Options{})
			for range 3 {
				job := newJob(t)
				e.submit(job)
				if rec := e.finished(job.ID, 10*time.Second); rec.Endpoint != tc.want {
					t.Errorf("served by %s, want %s", rec.Endpoint, tc.want)
				}
			}
		})
	}
}

// TestCallbackIsSignedAndRetried: the first POST gets a 500, the second
// succeeds; both carry the event id and a valid signature.
func TestCallbackIsSignedAndRetried(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	var col collector
	var n atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		col.add(map[string]string{"sig": r.Header.Get(HeaderSignature), "id": r.Header.Get(HeaderEventID)}, r.Body)
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer hook.Close()
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.CallbackSecret = "whsec"
	e := newEnv(t, cfg)
	e.startWorker(Options{})
	job := newJob(t)
	job.CallbackURL = hook.URL + "/cb"
	e.submit(job)
	e.finished(job.ID, 10*time.Second)
	natstest.WaitFor(t, 10*time.Second, "two callback posts", func() bool { return len(col.all()) >= 2 })
	for i, r := range col.all() {
		if r.header["id"] != job.ID+".finished" {
			t.Errorf("post %d: event id %q", i, r.header["id"])
		}
		var ts int64
		var sig string
		if _, err := fmtSscanf(r.header["sig"], &ts, &sig); err != nil {
			t.Fatalf("post %d: signature %q: %v", i, r.header["sig"], err)
		}
		if want := Sign("whsec", time.Unix(ts, 0), r.body); r.header["sig"] != want {
			t.Errorf("post %d: signature %q, want %q", i, r.header["sig"], want)
		}
		var rec events.JobRecord
		if err := json.Unmarshal(r.body, &rec); err != nil || rec.ID != job.ID || rec.Status != events.JobSucceeded {
			t.Errorf("post %d: body %s (%v)", i, r.body, err)
		}
	}
}

// TestShutdownHandsJobsBack: a worker stopped while a slow job runs NAKs
// it after the grace; another worker finishes it.
func TestShutdownHandsJobsBack(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(2 * time.Second)}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	_, stop := e.runWorker(Options{ShutdownGrace: 100 * time.Millisecond})
	job := newJob(t)
	e.submit(job)
	natstest.WaitFor(t, 5*time.Second, "the call in flight", func() bool { return a.Stats().Hanging > 0 || a.chatCalls() > 0 })
	stop()
	a.SetFaults(mock.Faults{})
	cfg2 := *e.cfg
	cfg2.Worker.Instance = "w2"
	e.startWorker(Options{Config: &cfg2})
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobSucceeded || len(rec.Attempts) != 2 || rec.Attempts[0].ErrorClass != events.ClassCallerCanceled {
		t.Errorf("record = %+v, want succeeded on the second worker after an abandoned attempt", rec)
	}
}

// TestHalfOpenTrialTakesLease: a half-open endpoint is called only under a
// trial lease taken in KV, and the outcome names the lease; with every slot
// taken, the job goes elsewhere.
func TestHalfOpenTrialTakesLease(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	cfg := testConfig(a.endpoint(1), b.endpoint(2))
	cfg.Breaker.HalfOpenRequests = 1
	e := newEnv(t, cfg)
	now := time.Now()
	st := state.New("a", now)
	st.Health = events.HealthHealthy
	st.Breaker, st.OpenCount = events.BreakerHalfOpen, 1
	st.HalfOpen = &events.HalfOpen{Period: 1, Since: now}
	e.putState(st)
	e.startWorker(Options{})

	j1 := newJob(t)
	e.submit(j1)
	if rec := e.finished(j1.ID, 10*time.Second); rec.Endpoint != "a" {
		t.Fatalf("first job served by %s, want a (the trial)", rec.Endpoint)
	}
	oa := e.outcomes("a", 1)
	if len(oa) != 1 || oa[0].TrialLease == "" {
		t.Fatalf("outcome = %+v, want one carrying its trial lease", oa)
	}
	kv, _ := e.js.KeyValue(context.Background(), events.BucketEndpoints)
	en, err := kv.Get(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	var got events.EndpointState
	_ = json.Unmarshal(en.Value(), &got)
	if got.HalfOpen == nil || len(got.HalfOpen.Leases) != 1 || got.HalfOpen.Leases[0].ID != oa[0].TrialLease || got.HalfOpen.Leases[0].Holder != "w1" {
		t.Fatalf("record = %+v, want the lease of w1 (nobody released it: no evaluator runs)", got.HalfOpen)
	}
	// The only slot is held: the next job goes to b.
	j2 := newJob(t)
	e.submit(j2)
	if rec := e.finished(j2.ID, 10*time.Second); rec.Endpoint != "b" || len(rec.Attempts) != 1 {
		t.Errorf("second job: %s after %d attempts, want b at once", rec.Endpoint, len(rec.Attempts))
	}
}

// TestDurableStreamRequestIsStoredWhole: a durable job asking for a stream
// gets one chat completion in its record.
func TestDurableStreamRequestIsStoredWhole(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	job := newJob(t)
	job.Request = json.RawMessage(`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
	e.submit(job)
	rec := e.finished(job.ID, 10*time.Second)
	if rec.Status != events.JobSucceeded || checkCompletion(rec.Response) != nil {
		t.Errorf("record %+v with response %s, want a stored chat completion", rec, rec.Response)
	}
}

// TestMetrics: the counters and histograms move.
func TestMetrics(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{ErrorRate: 1}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
	reg := prometheus.NewRegistry()
	e.startWorker(Options{Registerer: reg})
	job := newJob(t)
	e.submit(job)
	e.finished(job.ID, 10*time.Second)
	want := map[string]float64{
		`switchboard_jobs_total{lane="durable",status="succeeded"}`:       1,
		`switchboard_job_attempts_total{endpoint="a",outcome="http_5xx"}`: 1,
		`switchboard_job_attempts_total{endpoint="b",outcome="success"}`:  1,
		`switchboard_failovers_total`:                                     1,
		`switchboard_job_duration_seconds_count{lane="durable"}`:          1,
		`switchboard_upstream_latency_seconds_count{endpoint="b"}`:        1,
		`switchboard_jobs_inflight{lane="durable"}`:                       0,
	}
	natstest.WaitFor(t, 10*time.Second, "metrics", func() bool { return cmp.Equal(want, gather(t, reg, want)) })
	if diff := cmp.Diff(want, gather(t, reg, want)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

// gather reads the series named in want from reg.
func gather(t *testing.T, reg *prometheus.Registry, want map[string]float64) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := ""
			for i, l := range m.GetLabel() {
				if i > 0 {
					labels += ","
				}
				labels += l.GetName() + `="` + l.GetValue() + `"`
			}
			name := mf.GetName()
			if labels != "" {
				name += "{" + labels + "}"
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Histogram != nil:
				name = mf.GetName() + "_count"
				if labels != "" {
					name += "{" + labels + "}"
				}
				v = float64(m.Histogram.GetSampleCount())
			}
			if _, ok := want[name]; ok {
				got[name] = v
			}
		}
	}
	return got
}

// TestHealsMissingFinishedEvent: a worker died between the terminal write
// and the finished event; the redelivery publishes the event (and the
// callback) without calling upstream again.
func TestHealsMissingFinishedEvent(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	var col collector
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		col.add(map[string]string{"id": r.Header.Get(HeaderEventID)}, r.Body)
	}))
	defer hook.Close()
	e := newEnv(t, testConfig(a.endpoint(1)))
	job := newJob(t)
	job.CallbackURL = hook.URL
	now := time.Now().UTC()
	rec := events.JobRecord{ID: job.ID, Status: events.JobSucceeded, Lane: events.LaneDurable, Model: "m", Endpoint: "a",
		Response: json.RawMessage(`{"object":"chat.completion","choices":[{"index":0}]}`), CallbackURL: job.CallbackURL,
		SubmittedAt: job.SubmittedAt, FinishedAt: &now, UpdatedAt: now, Deliveries: 1}
	kv, _ := e.js.KeyValue(context.Background(), events.BucketJobs)
	if _, err := kv.Create(context.Background(), job.ID, mustJSON(t, rec)); err != nil {
		t.Fatal(err)
	}
	e.submit(job)
	e.startWorker(Options{})
	got := e.finished(job.ID, 10*time.Second)
	if diff := cmp.Diff(rec, got); diff != "" {
		t.Errorf("healed event differs from the record (-record +event):\n%s", diff)
	}
	natstest.WaitFor(t, 10*time.Second, "the callback", func() bool { return len(col.all()) == 1 })
	if a.chatCalls() != 0 || e.finishedCount(job.ID) != 1 {
		t.Errorf("%d upstream calls and %d finished events, want 0 and 1", a.chatCalls(), e.finishedCount(job.ID))
	}
}
