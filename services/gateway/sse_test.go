package gateway

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// openSSE opens an event stream; it is closed when the test ends.
func (e *testEnv) openSSE(t testing.TB, path string, hdr ...string) *sseReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &sseReader{body: resp.Body}
}

// nextEvent reads the next event, failing the test after 10 s.
func nextEvent(t testing.TB, s *sseReader) sseMsg {
	t.Helper()
	type res struct {
		m   sseMsg
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := s.next(); ch <- res{m, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read event: %v", r.err)
		}
		return r.m
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
	}
	return sseMsg{}
}

func statusChange(endpoint string, rev uint64) *events.StatusChanged {
	now := time.Now().UTC()
	return &events.StatusChanged{
		Endpoint: endpoint, Revision: rev,
		Health: &events.Transition{From: "healthy", To: "unhealthy"},
		Cause:  events.Cause{Kind: events.CauseProbe, Reason: "3 consecutive failures"},
		State: events.EndpointState{Endpoint: endpoint, Health: events.HealthUnhealthy, Breaker: events.BreakerClosed,
			Override: events.OverrideNone, UpdatedAt: now},
		At: now,
	}
}

func TestEvents(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	ctx := context.Background()
	pub := natsx.Publisher{JS: e.js, Source: "/evaluator/test"}
	publish := func(c *events.StatusChanged) {
		t.Helper()
		if _, err := pub.Publish(ctx, c.ID(), c); err != nil {
			t.Fatal(err)
		}
	}
	if r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, nil), "Idempotency-Key", "job-x"); r.status != http.StatusAccepted {
		t.Fatal(r)
	}

	all := e.openSSE(t, "/v1/events?job=job-x")
	jobOnly := e.openSSE(t, "/v1/events?job=job-x&types="+events.TypeJobFinished)
	page := e.openSSE(t, "/status/events")

	publish(statusChange("alpha", 7))
	m := nextEvent(t, all)
	if m.event != events.TypeStatusChanged || m.id != "1" {
		t.Fatalf("first event: %+v", m)
	}
	env, err := events.Decoder{Schema: schemas.Validate}.Decode([]byte(m.data))
	if err != nil {
		t.Fatalf("event data: %v", err)
	}
	if c := env.Data.(*events.StatusChanged); c.Endpoint != "alpha" || c.Revision != 7 || env.ID != "alpha@7" {
		t.Errorf("status change %s: %+v", env.ID, c)
	}
	if m := nextEvent(t, page); m.event != events.TypeStatusChanged || !strings.Contains(m.data, `"alpha@7"`) {
		t.Errorf("status page stream: %+v", m)
	}

	// Cancelling the job publishes its finished event.
	if r := e.do(t, "DELETE", "/v1/jobs/job-x", "", nil); r.status != http.StatusOK {
		t.Fatal(r)
	}
	for name, s := range map[string]*sseReader{"all": all, "job only": jobOnly} {
		m := nextEvent(t, s)
		if m.event != events.TypeJobFinished || !strings.Contains(m.data, `"id":"job-x.finished"`) || !strings.Contains(m.data, `"status":"cancelled"`) {
			t.Errorf("%s: event %+v", name, m)
		}
	}

	// A late subscriber gets a finished job's event, and replays status
	// changes from a sequence; an EventSource resumes after Last-Event-ID.
	publish(statusChange("beta", 9))
	late := e.openSSE(t, "/v1/events?job=job-x&since=1")
	got := map[string]bool{}
	for range 3 {
		m := nextEvent(t, late)
		got[m.event+" "+m.id] = true
	}
	for _, want := range []string{events.TypeStatusChanged + " 1", events.TypeStatusChanged + " 2", events.TypeJobFinished + " "} {
		if !got[want] {
			t.Errorf("late subscriber missed %q (got %v)", want, got)
		}
	}
	resumed := e.openSSE(t, "/v1/events", "Last-Event-ID", "1")
	if m := nextEvent(t, resumed); m.id != "2" || !strings.Contains(m.data, `"beta@9"`) {
		t.Errorf("resumed after 1: %+v", m)
	}

	for _, tc := range []struct{ query, reason string }{
		{"types=switchboard.nope.v1", `"switchboard.nope.v1" is not an event type`},
		{"job=a.b", "must match"},
		{"since=yesterday", `since "yesterday" is not`},
	} {
		r := e.do(t, "GET", "/v1/events?"+tc.query, "", nil)
		if r.status != http.StatusBadRequest || !strings.Contains(apiErr(t, r).Message, tc.reason) {
			t.Errorf("%s: %s, want 400 with %q", tc.query, r, tc.reason)
		}
	}
}

func TestAppendSSE(t *testing.T) {
	got := string(appendSSE(nil, 3, "t.v1", []byte("{\n\"a\":1}\n")))
	want := "id: 3\nevent: t.v1\ndata: {\ndata: \"a\":1}\n\n"
	if got != want {
		t.Errorf("appendSSE = %q, want %q", got, want)
	}
}
