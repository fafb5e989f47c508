package mock

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestFaults(t *testing.T) {
	chat := chatRequestTo("/v1/chat/completions", "mock-small", "hi")
	health := request{path: "/v1/health"}
	models := request{path: "/v1/models"}
	tests := []struct {
		name   string
		faults Faults
		req    request
		check  func(t *testing.T, got response)
	}{
		{"error default status", Faults{ErrorRate: 1}, chat, wantError(500, "server_error", "internal_server_error")},
		{"error status", Faults{ErrorRate: 1, ErrorStatus: 503}, chat, wantError(503, "server_error", "service_unavailable")},
		{"error 4xx status", Faults{ErrorRate: 1, ErrorStatus: 403}, models, wantError(403, "invalid_request_error", "forbidden")},
		{"error on health", Faults{ErrorRate: 1, ErrorStatus: 502}, health, wantError(502, "server_error", "bad_gateway")},
		{"error spares health when asked", Faults{ErrorRate: 1, ApplyToHealth: ptr(false)}, health, wantStatus(200)},
		{"rate limit spares health", Faults{RateLimitRate: 1, HangRate: 0}, health, wantStatus(200)},
		{"latency spares health", Faults{Latency: Duration(time.Hour)}, health, wantStatus(200)},
		{"rate limit", Faults{RateLimitRate: 1, RetryAfter: Duration(1500 * time.Millisecond)}, chat, func(t *testing.T, got response) {
			wantError(429, "rate_limit_exceeded", "rate_limit_exceeded")(t, got)
			wantHeaders := map[string]string{
				"Retry-After":                    "2",
				"Retry-After-Ms":                 "1500",
				"X-Ratelimit-Reset-Requests":     "1.5s",
				"X-Ratelimit-Remaining-Requests": "0",
			}
			gotHeaders := map[string]string{}
			for k := range wantHeaders {
				gotHeaders[k] = got.header.Get(k)
			}
			if diff := cmp.Diff(wantHeaders, gotHeaders); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			if !strings.Contains(string(got.body), "try again in 1.5s") {
				t.Errorf("body %s, want the reset hint", got)
			}
		}},
		{"rate limit default retry after", Faults{RateLimitRate: 1}, models, func(t *testing.T, got response) {
			if got.status != 429 || got.header.Get("Retry-After") != "1" {
				t.Errorf("status %d Retry-After %q, want 429 and 1", got.status, got.header.Get("Retry-After"))
			}
		}},
		{"rate limit before error", Faults{RateLimitRate: 1, ErrorRate: 1}, chat, wantStatus(429)},
		{"malformed chat", Faults{MalformedRate: 1}, chat, wantMalformed},
		{"malformed models", Faults{MalformedRate: 1}, models, wantMalformed},
		{"truncated chat", Faults{TruncateRate: 1}, chat, wantTruncated},
		{"truncated models", Faults{TruncateRate: 1}, models, wantTruncated},
		{"down", Faults{Down: true}, chat, wantError(503, "server_error", "service_unavailable")},
		{"down fails health", Faults{Down: true}, health, wantStatus(503)},
		{"down with reset", Faults{Down: true, OutageMode: OutageReset}, health, wantConnError},
		{"down with reset on chat", Faults{Down: true, OutageMode: OutageReset}, chat, wantConnError},
		{"bad request still 400 without faults firing", Faults{ErrorRate: 0}, request{path: "/v1/chat/completions", body: "{"}, wantStatus(400)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ts := newTestServer(t, Config{Name: "f", Faults: tt.faults})
			got := do(t, ts, tt.req)
			tt.check(t, got)
			if got.err == nil && got.header.Get("X-Mock-Endpoint") != "f" {
				t.Errorf("X-Mock-Endpoint = %q, want f", got.header.Get("X-Mock-Endpoint"))
			}
			if n := s.Stats().Requests; n < 1 {
				t.Errorf("stats count %d requests, want at least 1", n)
			}
		})
	}
}

func wantStatus(status int) func(*testing.T, response) {
	return func(t *testing.T, got response) {
		t.Helper()
		if got.err != nil || got.status != status {
			t.Fatalf("got status %d, err %v (body %s), want %d", got.status, got.err, got, status)
		}
	}
}

func wantError(status int, typ, code string) func(*testing.T, response) {
	return func(t *testing.T, got response) {
		t.Helper()
		wantStatus(status)(t, got)
		e := decodeError(t, got)
		if diff := cmp.Diff([]string{typ, code}, []string{e.Error.Type, deref(e.Error.Code)}); diff != "" {
			t.Errorf("type and code (-want +got):\n%s", diff)
		}
	}
}

// wantMalformed accepts a 200 whose body is not JSON or has neither
// choices nor data: what a client must treat as a broken answer.
func wantMalformed(t *testing.T, got response) {
	t.Helper()
	wantStatus(200)(t, got)
	var v struct {
		Choices []json.RawMessage `json:"choices"`
		Data    []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(got.body, &v); err == nil && (len(v.Choices) > 0 || len(v.Data) > 0) {
		t.Errorf("body %s is a valid answer, want a malformed one", got)
	}
}

func wantTruncated(t *testing.T, got response) {
	t.Helper()
	if got.status != 200 || !errors.Is(got.err, io.ErrUnexpectedEOF) {
		t.Fatalf("got status %d, err %v, want 200 and an unexpected EOF", got.status, got.err)
	}
	if json.Valid(got.body) {
		t.Errorf("truncated body %s is valid JSON", got)
	}
}

func wantConnError(t *testing.T, got response) {
	t.Helper()
	if got.err == nil {
		t.Fatalf("got status %d (body %s), want a connection error", got.status, got)
	}
}

func TestMalformedVariants(t *testing.T) {
	// Every variant must be broken, whichever the draw picks.
	for i, b := range malformedBodies {
		wantMalformed(t, response{status: 200, body: b})
		if t.Failed() {
			t.Fatalf("variant %d", i)
		}
	}
}

func TestLatency(t *testing.T) {
	tests := []struct {
		name   string
		faults Faults
		min    time.Duration
	}{
		{"fixed", Faults{Latency: Duration(30 * time.Millisecond)}, 30 * time.Millisecond},
		{"range", Faults{LatencyMin: Duration(20 * time.Millisecond), LatencyMax: Duration(40 * time.Millisecond)}, 20 * time.Millisecond},
		{"both", Faults{Latency: Duration(10 * time.Millisecond), LatencyMin: Duration(20 * time.Millisecond), LatencyMax: Duration(20 * time.Millisecond)}, 30 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ts := newTestServer(t, Config{Faults: tt.faults})
			start := time.Now()
			got := do(t, ts, chatRequestTo("/v1/chat/completions", "mock-small", "hi"))
			elapsed := time.Since(start)
			wantStatus(200)(t, got)
			if elapsed < tt.min {
				t.Errorf("answered in %s, want at least %s", elapsed, tt.min)
			}
			if n := s.Stats().Faults[FaultLatency]; n != 1 {
				t.Errorf("latency faults = %d, want 1", n)
			}
		})
	}
}

func TestLatencyEndsOnClose(t *testing.T) {
	s, ts := newTestServer(t, Config{Faults: Faults{Latency: Duration(time.Hour)}})
	done := make(chan response, 1)
	go func() { done <- do(t, ts, request{path: "/v1/models"}) }()
	waitFor(t, "the request to wait", func() bool { return s.Stats().Faults[FaultLatency] == 1 })
	s.Close()
	wantStatus(200)(t, <-done)
}

// statuses sends n sequential chat requests and returns their statuses.
func statuses(t *testing.T, cfg Config, n int) []int {
	t.Helper()
	_, ts := newTestServer(t, cfg)
	var got []int
	for range n {
		r := do(t, ts, chatRequestTo("/v1/chat/completions", "mock-small", "hi"))
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		got = append(got, r.status)
	}
	return got
}

func TestSeededFaultsRepeat(t *testing.T) {
	faults := Faults{ErrorRate: 0.5, RateLimitRate: 0.2}
	first := statuses(t, Config{Seed: 7, Faults: faults}, 40)
	second := statuses(t, Config{Seed: 7, Faults: faults}, 40)
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("same seed, different faults (-first +second):\n%s", diff)
	}
	counts := map[int]int{}
	for _, s := range first {
		counts[s]++
	}
	for _, status := range []int{200, 429, 500} {
		if counts[status] == 0 {
			t.Errorf("no %d in %v: rates 0.5 and 0.2 should give a mix", status, first)
		}
	}
	if other := statuses(t, Config{Seed: 8, Faults: faults}, 40); cmp.Equal(first, other) {
		t.Errorf("seeds 7 and 8 gave the same faults %v", first)
	}
}

func TestTruncatedStream(t *testing.T) {
	_, ts := newTestServer(t, Config{Name: "t", StreamChunks: 6, Faults: Faults{TruncateRate: 1}})
	req, err := http.NewRequest(http.MethodPost, ts.URL+"/v1/chat/completions", strings.NewReader(chatBody("mock-small", "hello there", true)))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 (the stream starts fine)", resp.StatusCode)
	}
	body, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading the stream: err %v, want unexpected EOF", err)
	}
	events, _ := sseEvents(body)
	if len(events) < 2 {
		t.Fatalf("got %d events, want some chunks before the cut: %q", len(events), body)
	}
	for _, ev := range events {
		if ev == "[DONE]" {
			t.Fatalf("truncated stream has [DONE]: %q", body)
		}
	}
	if last := events[len(events)-1]; json.Valid([]byte(last)) {
		t.Errorf("last event %q is complete, want it cut mid-chunk", last)
	}
}

func TestMalformedStream(t *testing.T) {
	_, ts := newTestServer(t, Config{Faults: Faults{MalformedRate: 1}})
	got := do(t, ts, request{path: "/v1/chat/completions", body: chatBody("mock-small", "x", true)})
	wantStatus(200)(t, got)
	events, err := sseEvents(got.body)
	if err != nil {
		t.Fatal(err)
	}
	broken := 0
	for _, ev := range events {
		if ev != "[DONE]" && !json.Valid([]byte(ev)) {
			broken++
		}
	}
	if broken == 0 {
		t.Errorf("events %q, want a chunk that is not JSON", events)
	}
}

func TestHang(t *testing.T) {
	tests := []struct {
		name   string
		faults Faults
		req    request
	}{
		{"hang rate on chat", Faults{HangRate: 1}, chatRequestTo("/v1/chat/completions", "mock-small", "x")},
		{"hang rate on stream", Faults{HangRate: 1}, request{path: "/v1/chat/completions", body: chatBody("mock-small", "x", true)}},
		{"hang outage on health", Faults{Down: true, OutageMode: OutageHang}, request{path: "/health"}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" released by Close", func(t *testing.T) {
			s, ts := newTestServer(t, Config{Faults: tt.faults})
			done := make(chan response, 1)
			go func() { done <- do(t, ts, tt.req) }()
			waitFor(t, "the request to hang", func() bool { return s.Stats().Hanging == 1 })
			s.Close()
			wantConnError(t, <-done)
			waitFor(t, "the hang to end", func() bool { return s.Stats().Hanging == 0 })
		})
		t.Run(tt.name+" ends when the client gives up", func(t *testing.T) {
			s, ts := newTestServer(t, Config{Faults: tt.faults})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan response, 1)
			go func() { done <- doCtx(ctx, t, ts, tt.req) }()
			waitFor(t, "the request to hang", func() bool { return s.Stats().Hanging == 1 })
			cancel()
			if got := <-done; !errors.Is(got.err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", got.err)
			}
			waitFor(t, "the server to notice", func() bool { return s.Stats().Hanging == 0 })
		})
	}
}

func TestOutageSchedule(t *testing.T) {
	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: t0}
	s, ts := newTestServer(t, Config{Now: clock.Now, Faults: Faults{Outages: []Outage{
		{Every: Duration(60 * time.Second), For: Duration(10 * time.Second), Offset: Duration(5 * time.Second)},
		{For: Duration(time.Second), Offset: Duration(200 * time.Second)}, // once
	}}})
	tests := []struct {
		at   time.Duration
		down bool
	}{
		{0, false},
		{4999 * time.Millisecond, false},
		{5 * time.Second, true},
		{14999 * time.Millisecond, true},
		{15 * time.Second, false},
		{64 * time.Second, false},
		{65 * time.Second, true},
		{125*time.Second + time.Millisecond, true},
		{135 * time.Second, false},
		{200 * time.Second, true},
		{201 * time.Second, false},
		{260 * time.Second, false}, // the one-off window does not recur
		{245 * time.Second, true},
	}
	for _, tt := range tests {
		for _, req := range []request{{path: "/health"}, {path: "/v1/models"}, chatRequestTo("/v1/chat/completions", "mock-small", "x")} {
			t.Run(tt.at.String()+req.path, func(t *testing.T) {
				clock.Set(t0.Add(tt.at))
				want := 200
				if tt.down {
					want = 503
				}
				wantStatus(want)(t, do(t, ts, req))
			})
		}
	}
	if n := s.Stats().Faults[FaultOutage]; n == 0 {
		t.Errorf("no outage counted in stats")
	}
}

func TestOutageWindow(t *testing.T) {
	tests := []struct {
		o       Outage
		elapsed time.Duration
		want    bool
	}{
		{Outage{Every: Duration(time.Minute), For: Duration(10 * time.Second)}, 0, true},
		{Outage{Every: Duration(time.Minute), For: Duration(10 * time.Second)}, 10 * time.Second, false},
		{Outage{Every: Duration(time.Minute), For: Duration(10 * time.Second)}, 61 * time.Second, true},
		{Outage{For: Duration(10 * time.Second), Offset: Duration(time.Second)}, 500 * time.Millisecond, false},
		{Outage{For: Duration(10 * time.Second), Offset: Duration(time.Second)}, 70 * time.Second, false},
	}
	for _, tt := range tests {
		if got := tt.o.active(tt.elapsed); got != tt.want {
			t.Errorf("%+v.active(%s) = %v, want %v", tt.o, tt.elapsed, got, tt.want)
		}
	}
}
