package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

func decodeRecord(t testing.TB, r response) submitResponse {
	t.Helper()
	var rec submitResponse
	if err := json.Unmarshal(r.body, &rec); err != nil {
		t.Fatalf("decode record: %v: %s", err, r)
	}
	if err := schemas.Validate(schemas.JobRecord, r.body); err != nil {
		t.Errorf("record does not match its schema: %v", err)
	}
	return rec
}

// queuedJobs returns the JobSubmitted events in SWITCHBOARD_JOBS.
func queuedJobs(t testing.TB, js jetstream.JetStream) []*events.JobSubmitted {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*events.JobSubmitted
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		env, err := events.Decoder{Schema: schemas.Validate}.Decode(m.Data)
		if err != nil {
			t.Fatalf("queued message %d: %v", seq, err)
		}
		if got, want := m.Header.Get(jetstream.MsgIDHeader), env.ID; got != want {
			t.Errorf("Nats-Msg-Id %q, want the event id %q", got, want)
		}
		out = append(out, env.Data.(*events.JobSubmitted))
	}
	return out
}

// writeRecord stands in for a worker: it moves job id to status by
// compare-and-set.
func writeRecord(t testing.TB, jobs *Jobs, id string, status events.JobStatus) {
	t.Helper()
	ctx := context.Background()
	rec, rev, err := jobs.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rec.Status, rec.UpdatedAt = status, now
	if status.Terminal() {
		rec.FinishedAt = &now
		rec.Endpoint = "alpha"
		rec.Response = json.RawMessage(`{"id":"chatcmpl-1","object":"chat.completion","choices":[]}`)
	}
	b, _ := json.Marshal(rec)
	if _, err := jobs.KV.Update(ctx, id, b, rev); err != nil {
		t.Fatalf("update record %s: %v", id, err)
	}
}

func TestJobLifecycle(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	jobs := e.gw.jobs

	// Submit: 202, queued record, one event on the priority's subject.
	r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, map[string]any{"priority": "high", "timeout": "90s",
		"metadata": map[string]string{"team": "search"}}), "Idempotency-Key", "job-1")
	if r.status != http.StatusAccepted {
		t.Fatalf("submit: %s", r)
	}
	if got := r.header.Get("Location"); got != "/v1/jobs/job-1" {
		t.Errorf("Location %q", got)
	}
	rec := decodeRecord(t, r)
	if rec.ID != "job-1" || rec.Status != events.JobQueued || rec.Lane != events.LaneDurable ||
		rec.Priority != events.PriorityHigh || rec.Model != "mock-small" || !rec.Created || rec.Deadline == nil {
		t.Errorf("submitted record: %+v", rec)
	}
	if d := rec.Deadline.Sub(rec.SubmittedAt); d != 90*time.Second {
		t.Errorf("deadline is %s after submission, want 90s", d)
	}
	q := queuedJobs(t, e.js)
	if len(q) != 1 || q[0].ID != "job-1" || q[0].Priority != events.PriorityHigh || q[0].Subject() != "switchboard.jobs.submit.high" {
		t.Fatalf("queued: %+v", q)
	}
	if diff := cmp.Diff(map[string]string{"team": "search"}, q[0].Metadata); diff != "" {
		t.Errorf("metadata (-want +got):\n%s", diff)
	}

	// Get.
	r = e.do(t, "GET", "/v1/jobs/job-1", "", nil)
	if r.status != http.StatusOK || decodeRecord(t, r).Status != events.JobQueued {
		t.Fatalf("get: %s", r)
	}

	// Long-poll: answered when a worker writes the terminal record.
	got := make(chan response, 1)
	go func() { got <- e.do(t, "GET", "/v1/jobs/job-1?wait=30s", "", nil) }()
	writeRecord(t, jobs, "job-1", events.JobRunning)
	writeRecord(t, jobs, "job-1", events.JobSucceeded)
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll did not return after the job succeeded")
	}
	if rec := decodeRecord(t, r); r.status != http.StatusOK || rec.Status != events.JobSucceeded || len(rec.Response) == 0 {
		t.Fatalf("long-poll: %s", r)
	}

	// A long-poll on an unfinished job returns its record when the wait is over.
	r = e.do(t, "POST", "/v1/jobs", "", jobBody(t, map[string]any{"id": "job-2"}))
	if r.status != http.StatusAccepted {
		t.Fatalf("submit job-2: %s", r)
	}
	start := time.Now()
	r = e.do(t, "GET", "/v1/jobs/job-2?wait=300ms", "", nil)
	if rec := decodeRecord(t, r); rec.Status != events.JobQueued || time.Since(start) < 300*time.Millisecond {
		t.Errorf("long-poll of a queued job: %s after %s", r, time.Since(start))
	}

	// Cancel: 200 cancelled, record final, one finished event.
	r = e.do(t, "DELETE", "/v1/jobs/job-2", "", nil)
	if rec := decodeRecord(t, r); r.status != http.StatusOK || rec.Status != events.JobCancelled || rec.Error == nil || rec.FinishedAt == nil {
		t.Fatalf("cancel: %s", r)
	}
	kvRec, _, err := jobs.Get(context.Background(), "job-2")
	if err != nil || kvRec.Status != events.JobCancelled {
		t.Fatalf("record after cancel: %+v, %v", kvRec, err)
	}
	// A second cancel succeeds again (a cancel may be retried) and
	// publishes nothing new.
	r = e.do(t, "DELETE", "/v1/jobs/job-2", "", nil)
	if rec := decodeRecord(t, r); r.status != http.StatusOK || rec.Status != events.JobCancelled {
		t.Errorf("second cancel: %s", r)
	}
	st := streamState(t, e.js, events.StreamResults)
	if st.Msgs != 1 {
		t.Fatalf("%s holds %d messages, want 1 finished event", events.StreamResults, st.Msgs)
	}
	s, _ := e.js.Stream(context.Background(), events.StreamResults)
	m, err := s.GetLastMsgForSubject(context.Background(), events.JobDoneSubject("job-2"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := events.Decoder{Schema: schemas.Validate}.Decode(m.Data)
	if err != nil {
		t.Fatalf("finished event: %v", err)
	}
	if fin := env.Data.(*events.JobFinished); env.ID != events.FinishedEventID("job-2") || fin.Status != events.JobCancelled {
		t.Errorf("finished event %s: %+v", env.ID, fin)
	}
	// A succeeded job cannot be cancelled.
	r = e.do(t, "DELETE", "/v1/jobs/job-1", "", nil)
	if r.status != http.StatusConflict || apiErr(t, r).Code == nil || *apiErr(t, r).Code != "job_finished" {
		t.Errorf("cancel a succeeded job: %s", r)
	}

	for _, tc := range []struct {
		method, path string
		status       int
		reason       string
	}{
		{"GET", "/v1/jobs/nope", http.StatusNotFound, `no job "nope"`},
		{"DELETE", "/v1/jobs/nope", http.StatusNotFound, `no job "nope"`},
		{"GET", "/v1/jobs/a.b", http.StatusBadRequest, "must match"},
		{"GET", "/v1/jobs/job-1?wait=soon", http.StatusBadRequest, `wait "soon"`},
		{"GET", "/v1/nothing", http.StatusNotFound, "no route"},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			r := e.do(t, tc.method, tc.path, "", nil)
			if r.status != tc.status || !strings.Contains(apiErr(t, r).Message, tc.reason) {
				t.Errorf("got %s, want %d with %q", r, tc.status, tc.reason)
			}
		})
	}
}

// TestCancelQueuesCallback: cancelling a job with a callback URL queues
// its callback (a copy of the finished event) for the workers to POST, once
// however often the cancel is retried; a job without one queues nothing.
func TestCancelQueuesCallback(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	for _, body := range []map[string]any{{"id": "cb-1", "callback_url": "https://hooks.example/done"}, {"id": "cb-2"}} {
		if r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, body)); r.status != http.StatusAccepted {
			t.Fatalf("submit: %s", r)
		}
		for range 2 {
			if r := e.do(t, "DELETE", "/v1/jobs/"+body["id"].(string), "", nil); r.status != http.StatusOK {
				t.Fatalf("cancel: %s", r)
			}
		}
	}
	if st := streamState(t, e.js, events.StreamCallbacks); st.Msgs != 1 {
		t.Fatalf("%s holds %d messages, want 1 (the callback of cb-1)", events.StreamCallbacks, st.Msgs)
	}
	ctx := context.Background()
	cbs, _ := e.js.Stream(ctx, events.StreamCallbacks)
	cb, err := cbs.GetLastMsgForSubject(ctx, events.JobCallbackSubject("cb-1"))
	if err != nil {
		t.Fatal(err)
	}
	res, _ := e.js.Stream(ctx, events.StreamResults)
	fin, err := res.GetLastMsgForSubject(ctx, events.JobDoneSubject("cb-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cb.Data, fin.Data) {
		t.Errorf("queued callback differs from the finished event:\n%s\n%s", cb.Data, fin.Data)
	}
	env, err := events.Decoder{Schema: schemas.Validate}.Decode(cb.Data)
	if err != nil {
		t.Fatal(err)
	}
	if rec := env.Data.(*events.JobFinished); rec.Status != events.JobCancelled || rec.CallbackURL != "https://hooks.example/done" {
		t.Errorf("queued callback: %+v", rec)
	}
}

func TestIdempotency(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	ctx := context.Background()
	kvKeys := func() []string {
		l, err := e.gw.jobs.KV.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range l.Keys() {
			keys = append(keys, k)
		}
		return keys
	}

	t.Run("header", func(t *testing.T) {
		var statuses []int
		for range 3 {
			r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, nil), "Idempotency-Key", "same-key")
			statuses = append(statuses, r.status)
			if rec := decodeRecord(t, r); rec.ID != "same-key" {
				t.Errorf("id %q", rec.ID)
			}
		}
		if diff := cmp.Diff([]int{202, 200, 200}, statuses); diff != "" {
			t.Errorf("statuses (-want +got):\n%s", diff)
		}
	})
	t.Run("body id", func(t *testing.T) {
		for i := range 3 {
			r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, map[string]any{"id": "body-key"}))
			if want := map[bool]int{true: 202, false: 200}[i == 0]; r.status != want {
				t.Errorf("submit %d: %s, want %d", i, r, want)
			}
		}
	})
	if q := queuedJobs(t, e.js); len(q) != 2 {
		t.Fatalf("%d jobs queued, want 2 (one per key): %+v", len(q), q)
	}
	if diff := cmp.Diff([]string{"body-key", "same-key"}, sortedCopy(kvKeys())); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}

	t.Run("after the stream forgot it", func(t *testing.T) {
		// A worker consumed the job (the work queue deleted it) and the
		// duplicate window passed: the record still makes it one job.
		s, _ := e.js.Stream(ctx, events.StreamJobs)
		if err := s.Purge(ctx); err != nil {
			t.Fatal(err)
		}
		r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, nil), "Idempotency-Key", "same-key")
		if r.status != http.StatusOK || decodeRecord(t, r).Created {
			t.Errorf("resubmit: %s", r)
		}
		if st := streamState(t, e.js, events.StreamJobs); st.Msgs != 0 {
			t.Errorf("resubmission queued %d messages", st.Msgs)
		}
	})

	t.Run("published but no record yet", func(t *testing.T) {
		// A submitter died between the ack and the record: the retry
		// collapses in the stream and creates the record.
		job, err := (&Parser{}).Parse(jobBody(t, map[string]any{"id": "half-done"}), "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (natsx.Publisher{JS: e.js, Source: "/test"}).Publish(ctx, job.ID, job); err != nil {
			t.Fatal(err)
		}
		r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, map[string]any{"id": "half-done"}))
		if rec := decodeRecord(t, r); r.status != http.StatusOK || rec.Status != events.JobQueued || rec.Created {
			t.Errorf("retry: %s", r)
		}
		if st := streamState(t, e.js, events.StreamJobs); st.Msgs != 1 {
			t.Errorf("%d messages queued, want 1", st.Msgs)
		}
	})
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestBadJobRequests(t *testing.T) {
	cfg := testConfig(t, "", false)
	cfg.Gateway.MaxBodyBytes = 4096
	e := startGateway(t, cfg)
	// One good job first, so "unchanged" is not "empty".
	if r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, nil), "Idempotency-Key", "good"); r.status != http.StatusAccepted {
		t.Fatalf("good job: %s", r)
	}
	stream0 := streamState(t, e.js, events.StreamJobs)
	bucket0 := streamState(t, e.js, "KV_"+events.BucketJobs)

	chat := func(fields string) json.RawMessage {
		return json.RawMessage(`{"model":"mock-small","messages":[{"role":"user","content":"hi"}]` + fields + `}`)
	}
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tc := range []struct {
		name   string
		body   []byte
		header []string
		status int
		reason string
	}{
		{"empty body", []byte{}, nil, 400, "request body is empty"},
		{"bad JSON", []byte(`{"request": {"model": "mock-small",`), nil, 400, "not valid JSON"},
		{"not an object", []byte(`["request"]`), nil, 400, "invalid job request: /: got array, want object"},
		{"missing request", []byte(`{"priority":"high"}`), nil, 400, "/: missing property 'request'"},
		{"missing model", jobBody(t, map[string]any{"request": json.RawMessage(`{"messages":[{"role":"user","content":"hi"}]}`)}), nil, 400, "/request: missing property 'model'"},
		{"empty messages", jobBody(t, map[string]any{"request": json.RawMessage(`{"model":"mock-small","messages":[]}`)}), nil, 400, "/request/messages: minItems"},
		{"unknown model", jobBody(t, map[string]any{"request": json.RawMessage(`{"model":"gpt-99","messages":[{"role":"user","content":"hi"}]}`)}), nil, 422, `model "gpt-99" is not served by any configured endpoint`},
		{"negative max_tokens", jobBody(t, map[string]any{"request": chat(`,"max_tokens":-5`)}), nil, 400, "/request/max_tokens: minimum: got -5, want 1"},
		{"oversized body", jobBody(t, map[string]any{"request": chat(`,"user":"` + strings.Repeat("x", 5000) + `"`)}), nil, 413, "larger than the gateway's limit of 4096 bytes"},
		{"deadline in the past", jobBody(t, map[string]any{"deadline": past}), nil, 400, "is in the past"},
		{"deadline not RFC 3339", jobBody(t, map[string]any{"deadline": "tomorrow noon"}), nil, 400, `deadline "tomorrow noon" is not an RFC 3339 time`},
		{"timeout not a duration", jobBody(t, map[string]any{"timeout": "soon"}), nil, 400, `timeout "soon" is not a positive duration`},
		{"deadline and timeout", jobBody(t, map[string]any{"deadline": future, "timeout": "5m"}), nil, 400, "deadline or timeout, not both"},
		{"unknown priority", jobBody(t, map[string]any{"priority": "urgent"}), nil, 400, "/priority: value must be one of"},
		{"max_attempts too high", jobBody(t, map[string]any{"max_attempts": 21}), nil, 400, "/max_attempts: maximum: got 21, want 20"},
		{"unknown field", jobBody(t, map[string]any{"retries": 3}), nil, 400, "additional properties 'retries' not allowed"},
		{"callback not http", jobBody(t, map[string]any{"callback_url": "ftp://example.com/x"}), nil, 400, "/callback_url: 'ftp://example.com/x' does not match"},
		{"bad id", jobBody(t, map[string]any{"id": "has space"}), nil, 400, "/id: 'has space' does not match"},
		{"bad Idempotency-Key", jobBody(t, nil), []string{"Idempotency-Key", "a/b"}, 400, `Idempotency-Key "a/b" must match`},
		{"key and id differ", jobBody(t, map[string]any{"id": "one"}), []string{"Idempotency-Key", "two"}, 400, `differs from the body's id "one"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(t, "POST", "/v1/jobs", "", tc.body, tc.header...)
			if r.status != tc.status {
				t.Errorf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if msg := apiErr(t, r).Message; !strings.Contains(msg, tc.reason) {
				t.Errorf("reason %q does not say %q", msg, tc.reason)
			}
		})
	}
	if diff := cmp.Diff(stream0, streamState(t, e.js, events.StreamJobs)); diff != "" {
		t.Errorf("%s changed (-before +after):\n%s", events.StreamJobs, diff)
	}
	if diff := cmp.Diff(bucket0, streamState(t, e.js, "KV_"+events.BucketJobs)); diff != "" {
		t.Errorf("bucket %s changed (-before +after):\n%s", events.BucketJobs, diff)
	}
}

// TestParserMessages pins a few refusals' exact wording, which clients see.
func TestParserMessages(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	p := &Parser{Models: ModelSet{"m": {}}, Now: func() time.Time { return now }}
	for _, tc := range []struct {
		body, want string
	}{
		{`{"request":{"model":"m","messages":[{"role":"user"}]},"deadline":"2030-01-02T03:04:04Z"}`,
			"deadline 2030-01-02T03:04:04Z is in the past (now 2030-01-02T03:04:05Z)"},
		{`{"request":{"model":"m","messages":[{"role":"user"}]},"timeout":"0s"}`,
			`timeout "0s" is not a positive duration such as 90s or 5m`},
		{`{"request":{"model":"x","messages":[{"role":"user"}]}}`,
			`model "x" is not served by any configured endpoint (see GET /v1/models)`},
	} {
		_, err := p.Parse([]byte(tc.body), "")
		if err == nil || err.Error() != tc.want {
			t.Errorf("Parse(%s) = %v, want %q", tc.body, err, tc.want)
		}
	}
	job, err := p.Parse([]byte(`{"request":{"model":"m","messages":[{"role":"user"}]},"timeout":"1m"}`), "k-1")
	if err != nil {
		t.Fatal(err)
	}
	want := now.Add(time.Minute)
	if job.ID != "k-1" || job.Priority != events.PriorityNormal || !job.SubmittedAt.Equal(now) || !job.Deadline.Equal(want) {
		t.Errorf("job %+v", job)
	}
	if id := NewID(); !events.ValidName(id) || id == NewID() {
		t.Errorf("NewID %q", id)
	}
}

// TestCancelRetryAfterFailedPublish: a cancel whose record write succeeded
// but whose finished event was not published (the client got a 503 and
// retries) succeeds on the retry, which publishes the event.
func TestCancelRetryAfterFailedPublish(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	if r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, map[string]any{"id": "job-c"})); r.status != http.StatusAccepted {
		t.Fatalf("submit: %s", r)
	}
	// What the failed cancel left: a cancelled record, no finished event.
	jobs := e.gw.jobs
	rec, rev, err := jobs.Get(context.Background(), "job-c")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rec.Status, rec.FinishedAt, rec.UpdatedAt = events.JobCancelled, &now, now
	rec.Error = &events.JobError{Class: events.ClassCallerCanceled, Message: "cancelled by the client"}
	b, _ := json.Marshal(rec)
	if _, err := jobs.KV.Update(context.Background(), "job-c", b, rev); err != nil {
		t.Fatal(err)
	}

	r := e.do(t, "DELETE", "/v1/jobs/job-c", "", nil)
	if got := decodeRecord(t, r); r.status != http.StatusOK || got.Status != events.JobCancelled {
		t.Errorf("retried cancel: %s, want 200 with the cancelled record", r)
	}
	s, _ := e.js.Stream(context.Background(), events.StreamResults)
	if _, err := s.GetLastMsgForSubject(context.Background(), events.JobDoneSubject("job-c")); err != nil {
		t.Errorf("finished event after the retried cancel: %v", err)
	}
}
