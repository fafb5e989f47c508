package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

const completion = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"mock-small","choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}]}`

func chunk(content string) string {
	return `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"mock-small","choices":[{"index":0,"delta":{"content":"` + content + `"},"finish_reason":null}]}` + "\n\n"
}

// script is what the fake worker answers to a prompt.
var script = map[string][]lane.Reply{
	"plain": {{Status: 200, Endpoint: "alpha", Attempts: 2, ContentType: "application/json", Body: []byte(completion)}},
	"throttled": {{Status: 503, Endpoint: "beta", Attempts: 1, ContentType: "application/json", RetryAfter: 3 * time.Second,
		Body: lane.ErrorBody("no endpoint can take the call now", lane.TypeUnavailable, lane.CodeNoEndpoint)}},
	"stream": {
		{Status: 200, Stream: lane.StreamStart, Endpoint: "beta", Attempts: 1, ContentType: "text/event-stream"},
		{Stream: lane.StreamData, Body: []byte(chunk("one ") + chunk("two "))},
		{Stream: lane.StreamData, Body: []byte(chunk("three") + "data: [DONE]\n\n")},
		{Stream: lane.StreamEnd},
	},
	"broken": {
		{Status: 200, Stream: lane.StreamStart, Endpoint: "beta", Attempts: 1, ContentType: "text/event-stream"},
		{Stream: lane.StreamData, Body: []byte(chunk("one "))},
		{Status: 502, Stream: lane.StreamError, Body: lane.ErrorBody("upstream beta: connection reset mid-stream", lane.TypeUpstream, lane.CodeStreamBroken)},
	},
	"failed before start": {{Status: 502, Stream: lane.StreamError, Endpoint: "alpha", Attempts: 3, ContentType: "application/json",
		Body: lane.ErrorBody("every attempt failed", lane.TypeUpstream, lane.CodeUpstreamFailed)}},
	"no status":        {{Endpoint: "alpha", Body: []byte(completion)}},
	"hang":             nil,
	"start, then hang": {{Status: 200, Stream: lane.StreamStart, Endpoint: "beta", Attempts: 1}},
}

// prompt returns the last message's content of a chat request.
func prompt(t testing.TB, req []byte) string {
	var r struct {
		Messages []struct{ Content string } `json:"messages"`
	}
	if err := json.Unmarshal(req, &r); err != nil || len(r.Messages) == 0 {
		t.Errorf("fake worker: request %s: %v", req, err)
		return ""
	}
	return r.Messages[len(r.Messages)-1].Content
}

func startScripted(t testing.TB, e *testEnv) *fakeWorker {
	return startFakeWorker(t, e.nc, func(job *events.JobSubmitted, reply replier) {
		for _, r := range script[prompt(t, job.Request)] {
			if err := reply(r); err != nil {
				t.Errorf("fake worker reply: %v", err)
			}
		}
	})
}

func TestInteractive(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false), func(o *Options) { o.RequestTimeout = 300 * time.Millisecond })
	fw := startScripted(t, e)

	t.Run("reply", func(t *testing.T) {
		body := chatBody("small", "plain", false)
		before := time.Now()
		r := e.do(t, "POST", "/v1/chat/completions", "", body)
		if r.status != 200 || string(r.body) != completion {
			t.Fatalf("got %s", r)
		}
		for h, want := range map[string]string{"X-Switchboard-Endpoint": "alpha", "X-Switchboard-Attempts": "2", "Content-Type": "application/json"} {
			if got := r.header.Get(h); got != want {
				t.Errorf("%s: %q, want %q", h, got, want)
			}
		}
		jobs := fw.received()
		job := jobs[len(jobs)-1]
		if job.ID != r.header.Get("X-Request-Id") || !bytes.Equal(job.Request, body) {
			t.Errorf("worker got job %s with request %s; X-Request-Id %s", job.ID, job.Request, r.header.Get("X-Request-Id"))
		}
		if job.Deadline == nil || job.Deadline.Before(before.Add(300*time.Millisecond)) || job.Deadline.After(time.Now().Add(300*time.Millisecond)) {
			t.Errorf("deadline %v is not the gateway's timeout from submission %v", job.Deadline, job.SubmittedAt)
		}
	})
	t.Run("error reply passes through", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "throttled", false))
		if r.status != 503 || r.header.Get("Retry-After") != "3" || *apiErr(t, r).Code != lane.CodeNoEndpoint {
			t.Errorf("got %s %v", r, r.header)
		}
	})
	t.Run("stream", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "stream", true))
		want := chunk("one ") + chunk("two ") + chunk("three") + "data: [DONE]\n\n"
		if r.status != 200 || string(r.body) != want || r.header.Get("Content-Type") != "text/event-stream" ||
			r.header.Get("X-Switchboard-Endpoint") != "beta" {
			t.Errorf("got %s %v", r, r.header)
		}
	})
	t.Run("broken stream ends with an error event", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "broken", true))
		want := chunk("one ") + "data: " + string(lane.ErrorBody("upstream beta: connection reset mid-stream", lane.TypeUpstream, lane.CodeStreamBroken)) + "\n\n"
		if r.status != 200 || string(r.body) != want {
			t.Errorf("got %s", r)
		}
		if strings.Contains(string(r.body), "[DONE]") {
			t.Error("a broken stream ended like a finished one")
		}
	})
	t.Run("broken stream through the OpenAI SDK", func(t *testing.T) {
		client := openai.NewClient(option.WithBaseURL(e.url+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
		s := client.Chat.Completions.NewStreaming(context.Background(), openai.ChatCompletionNewParams{
			Model: "mock-small", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("broken")},
		})
		var text string
		for s.Next() {
			for _, c := range s.Current().Choices {
				text += c.Delta.Content
			}
		}
		if text != "one " || s.Err() == nil || !strings.Contains(s.Err().Error(), "connection reset mid-stream") {
			t.Errorf("SDK saw %q, err %v; want the first chunk and an error", text, s.Err())
		}
	})
	t.Run("failure before the first token keeps its status", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "failed before start", true))
		if r.status != 502 || *apiErr(t, r).Code != lane.CodeUpstreamFailed || r.header.Get("X-Switchboard-Attempts") != "3" {
			t.Errorf("got %s %v", r, r.header)
		}
	})
	t.Run("malformed reply", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "no status", false))
		if r.status != 502 || !strings.Contains(apiErr(t, r).Message, "Switchboard-Status is missing") {
			t.Errorf("got %s", r)
		}
	})
	t.Run("no reply before the deadline", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "hang", false))
		if r.status != 504 || *apiErr(t, r).Code != lane.CodeDeadline {
			t.Errorf("got %s", r)
		}
	})
	t.Run("stream stalls after its start", func(t *testing.T) {
		r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "start, then hang", true))
		if r.status != 200 || !strings.HasPrefix(string(r.body), `data: {"error":`) || !strings.Contains(string(r.body), lane.CodeDeadline) {
			t.Errorf("got %s", r)
		}
	})
	t.Run("client goes away", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "POST", e.url+"/v1/chat/completions", bytes.NewReader(chatBody("mock-small", "hang", false)))
		n := len(fw.received())
		done := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		natstest.WaitFor(t, 5*time.Second, "the call to reach the worker", func() bool { return len(fw.received()) > n })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("client: %v", err)
		}
		natstest.WaitFor(t, 5*time.Second, "a cancel for the call", func() bool { return len(fw.cancelled()) > 0 })
		if c := fw.cancelled()[0]; !strings.HasPrefix(c, "_INBOX.") {
			t.Errorf("cancel body %q is not the call's inbox", c)
		}
	})
	t.Run("refused at the gateway", func(t *testing.T) {
		n := len(fw.received())
		for _, tc := range []struct {
			body   []byte
			status int
			code   string
		}{
			{chatBody("gpt-99", "plain", false), 404, "model_not_found"},
			{[]byte(`{"model":`), 400, "invalid_request"},
			{[]byte(`{"model":"mock-small","messages":[]}`), 400, "invalid_request"},
			{bytes.Repeat([]byte("x"), 2<<20), 413, "request_too_large"},
		} {
			r := e.do(t, "POST", "/v1/chat/completions", "", tc.body)
			if d := apiErr(t, r); r.status != tc.status || *d.Code != tc.code {
				t.Errorf("got %s, want %d %s", r, tc.status, tc.code)
			}
		}
		if len(fw.received()) != n {
			t.Error("a refused call reached the workers")
		}
	})
}

func TestInteractiveNoWorkers(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "hi", false))
	if r.status != 503 || *apiErr(t, r).Code != "no_workers" || r.header.Get("Retry-After") != "1" {
		t.Errorf("got %s %v", r, r.header)
	}
	m := e.do(t, "GET", "/metrics", "", nil)
	if !strings.Contains(string(m.body), `switchboard_gateway_interactive_total{result="no_workers"} 1`) {
		t.Errorf("metrics:\n%s", grep(string(m.body), "interactive_total"))
	}
}

// TestJobEventEncoding checks that the gateway's hand-written CloudEvent
// is the one events.Encode would make, and valid against its schema.
func TestJobEventEncoding(t *testing.T) {
	enc := newJobEventEncoder(`/gateway/odd "name"`)
	now := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	req := []byte("{ \"model\": \"m\",\n \"messages\": [{\"role\": \"user\", \"content\": \"h\\u00e9 \\\"q\\\"\"}], \"stream\": true }")
	b := enc.append(nil, "abc123", req, now, now.Add(time.Minute))
	env, err := events.Decoder{Schema: schemas.Validate}.Decode(b)
	if err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	deadline := now.Add(time.Minute)
	want := &events.JobSubmitted{ID: "abc123", Request: req, Deadline: &deadline, SubmittedAt: now}
	if diff := cmp.Diff(want, env.Data); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}
	if env.ID != "abc123" || env.Source != `/gateway/odd%20%22name%22` || env.Type != events.TypeJobSubmitted || !env.Time.Equal(now) {
		t.Errorf("attributes: %+v", env)
	}
	// Same attributes as events.Encode.
	ref, err := events.Encode(`/gateway/odd "name"`, "abc123", want)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(b []byte) []string {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		var out []string
		for k, v := range m {
			if k != "time" && k != "data" {
				out = append(out, k+"="+string(v))
			}
		}
		return sortedCopy(out)
	}
	if diff := cmp.Diff(keys(ref), keys(b)); diff != "" {
		t.Errorf("attributes differ from events.Encode (-want +got):\n%s", diff)
	}
}

func BenchmarkJobEventEncoding(b *testing.B) {
	req := chatBody("mock-small", "How fast is the gateway?", false)
	now := time.Now().UTC()
	b.Run("gateway", func(b *testing.B) {
		enc := newJobEventEncoder("/gateway/bench")
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf = enc.append(buf[:0], "0123456789abcdefghijkl", req, now, now.Add(time.Minute))
		}
	})
	b.Run("events.Encode", func(b *testing.B) {
		deadline := now.Add(time.Minute)
		job := &events.JobSubmitted{ID: "0123456789abcdefghijkl", Request: req, Deadline: &deadline, SubmittedAt: now}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := events.Encode("/gateway/bench", job.ID, job); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestInteractiveDeadlineSetting: an interactive call's deadline is
// Options.RequestTimeout, else gateway.request_timeout, else
// worker.request_timeout.
func TestInteractiveDeadlineSetting(t *testing.T) {
	_, nc, js := natstest.Start(t)
	tests := []struct {
		name      string
		gateway   time.Duration // gateway.request_timeout (testConfig: worker.request_timeout 5s)
		option    time.Duration
		wantLimit time.Duration
	}{
		{name: "worker.request_timeout", wantLimit: 5 * time.Second},
		{name: "gateway.request_timeout", gateway: 40 * time.Second, wantLimit: 40 * time.Second},
		{name: "Options.RequestTimeout", gateway: 40 * time.Second, option: time.Second, wantLimit: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "", false)
			cfg.Gateway.RequestTimeout = tc.gateway
			gw, err := New(Options{Config: cfg, NC: nc, JS: js, RequestTimeout: tc.option})
			if err != nil {
				t.Fatal(err)
			}
			if gw.timeout != tc.wantLimit {
				t.Errorf("deadline %s from now, want %s", gw.timeout, tc.wantLimit)
			}
		})
	}
}

// TestRefusedCallsAreSentAgain: a call a worker refuses without starting it
// (busy or stopping) goes out again, up to lane.RefusedTries times in all;
// the client sees only the final answer.
func TestRefusedCallsAreSentAgain(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	busy := lane.Reply{Status: http.StatusServiceUnavailable, ContentType: lane.ContentTypeJSON, RetryAfter: time.Second,
		Refused: true, Body: lane.ErrorBody("the worker is running its limit of 8 interactive calls; retry", lane.TypeUnavailable, lane.CodeWorkerBusy)}
	var mu sync.Mutex
	calls := map[string]int{} // by job id
	fw := startFakeWorker(t, e.nc, func(job *events.JobSubmitted, reply replier) {
		mu.Lock()
		calls[job.ID]++
		n := calls[job.ID]
		mu.Unlock()
		r := busy
		if prompt(t, job.Request) == "plain" && n == 2 {
			r = script["plain"][0]
		}
		if err := reply(r); err != nil {
			t.Errorf("fake worker reply: %v", err)
		}
	})

	r := e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "plain", false))
	if r.status != http.StatusOK || string(r.body) != completion {
		t.Errorf("refused once, then answered: got %s", r)
	}
	r = e.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "always busy", false))
	if r.status != http.StatusServiceUnavailable || *apiErr(t, r).Code != lane.CodeWorkerBusy || r.header.Get("Retry-After") != "1" {
		t.Errorf("refused every time: got %s %v", r, r.header)
	}
	var order []string // job ids, in the order the worker first saw them
	sends := map[string]int{}
	for _, job := range fw.received() {
		if sends[job.ID] == 0 {
			order = append(order, job.ID)
		}
		sends[job.ID]++
	}
	var got []int
	for _, id := range order {
		got = append(got, sends[id])
	}
	if diff := cmp.Diff([]int{2, lane.RefusedTries}, got); diff != "" {
		t.Errorf("times each call was sent (-want +got):\n%s", diff)
	}
	m := e.do(t, "GET", "/metrics", "", nil)
	if want := "switchboard_gateway_interactive_refused_total " + strconv.Itoa(1+lane.RefusedTries-1); !strings.Contains(string(m.body), want) {
		t.Errorf("metrics lack %q:\n%s", want, grep(string(m.body), "refused"))
	}
}
