package mock

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newTestServer starts s behind a real loopback HTTP server. Cleanup closes
// s before the HTTP server, so hung requests do not block its shutdown.
func newTestServer(t testing.TB, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	t.Cleanup(s.Close)
	return s, ts
}

// response is what a test saw of one HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
	err    error // from the request or from reading the body
}

func (r response) String() string {
	return strings.TrimSpace(string(r.body))
}

type request struct {
	method, path, body string
	header             map[string]string
}

func do(t testing.TB, ts *httptest.Server, req request) response {
	t.Helper()
	return doCtx(context.Background(), t, ts, req)
}

func doCtx(ctx context.Context, t testing.TB, ts *httptest.Server, req request) response {
	t.Helper()
	method := req.method
	if method == "" {
		method = http.MethodGet
		if req.body != "" {
			method = http.MethodPost
		}
	}
	hr, err := http.NewRequestWithContext(ctx, method, ts.URL+req.path, strings.NewReader(req.body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if req.body != "" {
		hr.Header.Set("Content-Type", "application/json")
	}
	for k, v := range req.header {
		hr.Header.Set(k, v)
	}
	resp, err := ts.Client().Do(hr)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}

func chatBody(model, prompt string, stream bool) string {
	b, _ := json.Marshal(map[string]any{
		"model":    model,
		"messages": []map[string]any{{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}},
		"stream":   stream,
	})
	return string(b)
}

func chatRequestTo(path, model, prompt string) request {
	return request{method: http.MethodPost, path: path, body: chatBody(model, prompt, false)}
}

// apiError is an OpenAI error body.
type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t testing.TB, r response) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("error body %q is not an OpenAI error: %v", r.body, err)
	}
	return e
}

func ptr[T any](v T) *T { return &v }

// waitFor polls cond until it holds, failing the test after 5 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// fakeClock is a settable clock for outage schedules.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// discardWriter is a minimal ResponseWriter for handler-only benchmarks.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.status = code }
func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
