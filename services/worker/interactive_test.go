package worker

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// call sends an interactive request the way the gateway does and returns
// every reply message until the last one (a non-stream reply, a stream end
// or error).
func (e *env) call(job *events.JobSubmitted, timeout time.Duration) []lane.Reply {
	e.t.Helper()
	inbox := e.nc.NewInbox()
	ch := make(chan *nats.Msg, 1024)
	sub, err := e.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m, err := lane.NewRequest("/gateway/test", job, inbox)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.nc.PublishMsg(m); err != nil {
		e.t.Fatal(err)
	}
	var out []lane.Reply
	deadline := time.After(timeout)
	for {
		select {
		case m := <-ch:
			r, err := lane.ParseReply(m)
			if err != nil {
				e.t.Fatalf("reply %d: %v", len(out), err)
			}
			out = append(out, r)
			if r.Stream == "" || r.Stream == lane.StreamEnd || r.Stream == lane.StreamError {
				return out
			}
		case <-deadline:
			e.t.Fatalf("no final reply after %s; got %+v", timeout, out)
		}
	}
}

func interactiveJob(t *testing.T, stream bool) *events.JobSubmitted {
	j := newJob(t)
	if stream {
		j.Request = json.RawMessage(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hello there"}]}`)
	}
	dl := time.Now().Add(10 * time.Second)
	j.Deadline = &dl
	return j
}

func TestInteractiveNonStream(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{ErrorRate: 1}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
	e.startWorker(Options{})

	job := interactiveJob(t, false)
	replies := e.call(job, 10*time.Second)
	if len(replies) != 1 {
		t.Fatalf("%d replies, want 1", len(replies))
	}
	r := replies[0]
	if r.Status != http.StatusOK || r.Endpoint != "b" || r.Attempts != 2 || r.ContentType != lane.ContentTypeJSON || r.JobID != job.ID {
		t.Errorf("reply = %+v, want 200 from b after 2 attempts", r)
	}
	if err := checkCompletion(r.Body); err != nil {
		t.Errorf("body %s: %v", r.Body, err)
	}
	// Nothing stored, one outcome per call.
	if _, found := e.record(job.ID); found {
		t.Error("an interactive call left a job record")
	}
	oa, ob := e.outcomes("a", 1), e.outcomes("b", 1)
	if len(oa) != 1 || len(ob) != 1 || oa[0].Lane != events.LaneInteractive || ob[0].JobID != job.ID {
		t.Errorf("outcomes a=%+v b=%+v, want one each, interactive", oa, ob)
	}
}

func TestInteractiveErrors(t *testing.T) {
	tests := []struct {
		name   string
		models []string
		faults mock.Faults
		model  string
		want   int
		code   string
	}{
		{name: "caller error keeps its status and body", models: []string{"other"}, model: "m", want: http.StatusNotFound, code: "model_not_found"},
		{name: "every attempt failed", models: []string{"m"}, faults: mock.Faults{ErrorRate: 1}, model: "m", want: http.StatusBadGateway, code: lane.CodeUpstreamFailed},
		{name: "model served nowhere", models: []string{"m"}, model: "zzz", want: http.StatusNotFound, code: lane.CodeModelNotServed},
		{name: "throttled", models: []string{"m"}, faults: mock.Faults{RateLimitRate: 1, RetryAfter: mock.Duration(30 * time.Second)}, model: "m",
			want: http.StatusServiceUnavailable, code: lane.CodeNoEndpoint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := startMock(t, mock.Config{Name: "a", Models: tc.models, Faults: tc.faults})
			cfg := testConfig(a.endpoint(1))
			cfg.Worker.MaxAttempts = 2
			e := newEnv(t, cfg)
			e.startWorker(Options{})
			job := interactiveJob(t, false)
			job.Request = json.RawMessage(`{"model":"` + tc.model + `","messages":[{"role":"user","content":"x"}]}`)
			r := e.call(job, 10*time.Second)[0]
			var body lane.ErrorJSON
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("error body %s: %v", r.Body, err)
			}
			if r.Status != tc.want || body.Error.Code != tc.code || body.Error.Message == "" {
				t.Errorf("reply %d %s, want %d with code %s", r.Status, r.Body, tc.want, tc.code)
			}
		})
	}
	t.Run("throttled endpoint answers 503 with Retry-After", func(t *testing.T) {
		a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{RateLimitRate: 1, RetryAfter: mock.Duration(30 * time.Second)}})
		e := newEnv(t, testConfig(a.endpoint(1)))
		e.startWorker(Options{})
		e.call(interactiveJob(t, false), 10*time.Second) // takes the 429
		r := e.call(interactiveJob(t, false), 10*time.Second)[0]
		if r.Status != http.StatusServiceUnavailable || r.RetryAfter < 25*time.Second || r.Attempts != 0 {
			t.Errorf("reply = %+v, want 503, Retry-After ~30s, no attempt", r)
		}
	})
}

func TestInteractiveRejectsBadRequest(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	inbox := e.nc.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.nc.PublishRequest(events.SubjectJobInteractive, inbox, []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r, err := lane.ParseReply(m)
	if err != nil || r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), lane.CodeInvalidRequest) {
		t.Errorf("reply %+v (%v), want 400 invalid_request", r, err)
	}
}

// streamOf joins the data messages of a streamed reply.
func streamOf(rs []lane.Reply) []byte {
	var b bytes.Buffer
	for _, r := range rs {
		if r.Stream == lane.StreamData {
			b.Write(r.Body)
		}
	}
	return b.Bytes()
}

func phases(rs []lane.Reply) []string {
	var out []string
	for _, r := range rs {
		if len(out) > 0 && out[len(out)-1] == r.Stream && r.Stream == lane.StreamData {
			continue
		}
		out = append(out, r.Stream)
	}
	return out
}

func TestInteractiveStream(t *testing.T) {
	t.Run("relays the stream after failing over before the first token", func(t *testing.T) {
		a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{ErrorRate: 1}})
		b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}, StreamChunks: 5})
		e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
		e.startWorker(Options{})
		rs := e.call(interactiveJob(t, true), 10*time.Second)
		if diff := cmp.Diff([]string{lane.StreamStart, lane.StreamData, lane.StreamEnd}, phases(rs)); diff != "" {
			t.Fatalf("phases (-want +got):\n%s", diff)
		}
		if rs[0].Status != http.StatusOK || rs[0].Endpoint != "b" || rs[0].Attempts != 2 || rs[0].ContentType != lane.ContentTypeSSE {
			t.Errorf("start = %+v, want 200 from b after 2 attempts, SSE", rs[0])
		}
		body := string(streamOf(rs))
		if !strings.HasSuffix(body, "data: [DONE]\n\n") || strings.Count(body, "data: ") != 5+3 {
			t.Errorf("stream = %q, want role + 5 content + stop chunks and [DONE]", body)
		}
		var content strings.Builder
		for _, ev := range strings.Split(strings.TrimSpace(body), "\n\n") {
			d := strings.TrimPrefix(ev, "data: ")
			if d == "[DONE]" {
				continue
			}
			var c struct {
				Choices []struct{ Delta struct{ Content string } } `json:"choices"`
			}
			if err := json.Unmarshal([]byte(d), &c); err != nil {
				t.Fatalf("event %q: %v", d, err)
			}
			content.WriteString(c.Choices[0].Delta.Content)
		}
		if want := mock.ReplyContent("b", "hello there"); content.String() != want {
			t.Errorf("content = %q, want %q", content.String(), want)
		}
		ob := e.outcomes("b", 1)
		if len(ob) != 1 || ob[0].Outcome != events.RequestSuccess || ob[0].TTFTMS <= 0 {
			t.Errorf("outcome of b = %+v, want a success with a TTFT", ob)
		}
	})
	t.Run("a stream cut after the first token ends in an error, not an end", func(t *testing.T) {
		a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{TruncateRate: 1}})
		b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
		e := newEnv(t, testConfig(a.endpoint(1), b.endpoint(2)))
		e.startWorker(Options{})
		rs := e.call(interactiveJob(t, true), 10*time.Second)
		if diff := cmp.Diff([]string{lane.StreamStart, lane.StreamData, lane.StreamError}, phases(rs)); diff != "" {
			t.Fatalf("phases (-want +got):\n%s", diff)
		}
		last := rs[len(rs)-1]
		var body lane.ErrorJSON
		if err := json.Unmarshal(last.Body, &body); err != nil || body.Error.Code != lane.CodeStreamBroken {
			t.Errorf("error body %s (%v), want code %s", last.Body, err, lane.CodeStreamBroken)
		}
		// Only whole events went out: the cut-off one was dropped, so the
		// gateway's error event starts on an event boundary.
		for i, r := range rs {
			if r.Stream == lane.StreamData && !bytes.HasSuffix(r.Body, []byte("\n\n")) {
				t.Errorf("data message %d does not end with a whole event: %q", i, r.Body)
			}
		}
		if b.chatCalls() != 0 {
			t.Error("failed over after the first token")
		}
		oa := e.outcomes("a", 1)
		if len(oa) != 1 || oa[0].ErrorClass != events.ClassStreamBroken {
			t.Errorf("outcome of a = %+v, want stream_broken", oa)
		}
	})
	t.Run("a malformed chunk after the first token ends in an error", func(t *testing.T) {
		a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{MalformedRate: 1}})
		e := newEnv(t, testConfig(a.endpoint(1)))
		e.startWorker(Options{})
		rs := e.call(interactiveJob(t, true), 10*time.Second)
		// The broken chunk may arrive in the same read as the first event,
		// before anything was relayed: then the call fails before its start.
		got := phases(rs)
		if got[len(got)-1] != lane.StreamError || (len(got) > 1 && got[0] != lane.StreamStart) || slices.Contains(got, lane.StreamEnd) {
			t.Fatalf("phases %v, want [start data error] or [error]", got)
		}
		if last := rs[len(rs)-1]; last.Status != http.StatusBadGateway {
			t.Errorf("error status %d, want 502", last.Status)
		}
	})
	t.Run("every attempt failing before the first token is one error reply", func(t *testing.T) {
		a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{ErrorRate: 1, ErrorStatus: 502}})
		e := newEnv(t, testConfig(a.endpoint(1)))
		e.startWorker(Options{})
		rs := e.call(interactiveJob(t, true), 10*time.Second)
		if len(rs) != 1 || rs[0].Stream != lane.StreamError || rs[0].Status != http.StatusBadGateway {
			t.Errorf("replies = %+v, want one 502 stream error", rs)
		}
	})
}

// TestInteractiveCancel: the gateway's cancel stops a running call.
func TestInteractiveCancel(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{HangRate: 1}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.RequestTimeout = time.Minute
	e := newEnv(t, cfg)
	e.startWorker(Options{})
	inbox := e.nc.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	job := interactiveJob(t, false)
	m, _ := lane.NewRequest("/gateway/test", job, inbox)
	if err := e.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 5*time.Second, "the call hanging at the endpoint", func() bool { return a.Stats().Hanging == 1 })
	if err := lane.PublishCancel(e.nc, inbox); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no reply after the cancel: %v", err)
	}
	r, _ := lane.ParseReply(msg)
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), lane.CodeCancelled) {
		t.Errorf("reply = %d %s, want 503 cancelled", r.Status, r.Body)
	}
	natstest.WaitFor(t, 5*time.Second, "the upstream call released", func() bool { return a.Stats().Hanging == 0 })
	oa := e.outcomes("a", 1)
	if len(oa) != 1 || oa[0].ErrorClass != events.ClassCallerCanceled {
		t.Errorf("outcome = %+v, want caller_canceled", oa)
	}
}

// TestInteractiveDeadline: the job deadline (the gateway's timeout) bounds
// the call: 504.
func TestInteractiveDeadline(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{HangRate: 1}})
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	job := interactiveJob(t, false)
	dl := time.Now().Add(300 * time.Millisecond)
	job.Deadline = &dl
	r := e.call(job, 10*time.Second)[0]
	if r.Status != http.StatusGatewayTimeout || !strings.Contains(string(r.Body), lane.CodeDeadline) {
		t.Errorf("reply = %d %s, want 504 deadline_exceeded", r.Status, r.Body)
	}
}

// TestHungEndpointFailsOverBeforeTheDeadline: an endpoint that hangs must
// not take the whole deadline when another endpoint could answer: the
// call is cut after its attempt timeout (class timeout, the endpoint's
// fault) and the job fails over in time. This holds for an interactive
// call whose deadline is request_timeout (what the gateway sets) and for a
// durable job whose deadline is shorter than request_timeout.
func TestHungEndpointFailsOverBeforeTheDeadline(t *testing.T) {
	tests := []struct {
		name           string
		lane           events.Lane
		requestTimeout time.Duration
		deadline       time.Duration
	}{
		{name: "interactive, deadline = request_timeout", lane: events.LaneInteractive, requestTimeout: time.Second, deadline: time.Second},
		{name: "durable, deadline < request_timeout", lane: events.LaneDurable, requestTimeout: 30 * time.Second, deadline: 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{HangRate: 1}})
			b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}})
			cfg := testConfig(a.endpoint(1), b.endpoint(2))
			cfg.Worker.RequestTimeout = tc.requestTimeout
			e := newEnv(t, cfg)
			e.startWorker(Options{})
			job := newJob(t)
			dl := time.Now().Add(tc.deadline)
			job.Deadline = &dl
			var got []attemptSummary
			if tc.lane == events.LaneInteractive {
				r := e.call(job, 10*time.Second)[0]
				if r.Status != http.StatusOK || r.Endpoint != "b" || r.Attempts != 2 {
					t.Errorf("reply %d from %q after %d attempts (%s), want 200 from b after 2", r.Status, r.Endpoint, r.Attempts, r.Body)
				}
			} else {
				e.submit(job)
				rec := e.finished(job.ID, 10*time.Second)
				if rec.Status != events.JobSucceeded || rec.Endpoint != "b" {
					t.Errorf("record %s on %q (%+v), want succeeded on b", rec.Status, rec.Endpoint, rec.Error)
				}
				got = summarize(rec.Attempts)
			}
			oa := e.outcomes("a", 1)
			if oa[0].ErrorClass != events.ClassTimeout {
				t.Errorf("outcome of a: class %s (%s), want timeout", oa[0].ErrorClass, oa[0].Error)
			}
			if tc.lane == events.LaneDurable {
				want := []attemptSummary{{"a", events.RequestError, events.ClassTimeout}, {"b", events.RequestSuccess, ""}}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("attempts (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestBusyWorkerAnswersAtOnce: a worker that runs its limit of interactive
// calls (8 x concurrency) answers the next one at once with 503
// workers_busy and Retry-After, instead of stalling its subscription (and
// every call queued behind it) until a call ends.
func TestBusyWorkerAnswersAtOnce(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{HangRate: 1}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = 1
	cfg.Worker.RequestTimeout = time.Minute
	e := newEnv(t, cfg)
	e.startWorker(Options{ShutdownGrace: 100 * time.Millisecond})
	const limit = 8 // 8 x concurrency
	for range limit {
		m, err := lane.NewRequest("/gateway/test", interactiveJob(t, false), e.nc.NewInbox())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 10*time.Second, "every interactive slot hanging at the endpoint", func() bool { return a.Stats().Hanging == limit })
	start := time.Now()
	r := e.call(interactiveJob(t, false), 5*time.Second)[0]
	var body lane.ErrorJSON
	if err := json.Unmarshal(r.Body, &body); err != nil || r.Status != http.StatusServiceUnavailable ||
		body.Error.Code != lane.CodeWorkerBusy || r.RetryAfter != time.Second || !r.Refused {
		t.Errorf("reply %d %s (Retry-After %s, refused %v), want 503 %s with Retry-After 1s, refused", r.Status, r.Body, r.RetryAfter, r.Refused, lane.CodeWorkerBusy)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("answered after %s, want at once", d)
	}
	if got := a.Stats().Hanging; got != limit {
		t.Errorf("%d calls at the endpoint, want %d", got, limit)
	}
}
