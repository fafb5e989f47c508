package mock

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkChatCompletion is one non-streamed chat completion over loopback
// HTTP with no faults: the baseline that gateway benchmarks compare against.
// Its allocations include the client's.
func BenchmarkChatCompletion(b *testing.B) {
	_, ts := newTestServer(b, Config{Name: "bench"})
	client := ts.Client()
	url := ts.URL + "/e17/v1/chat/completions"
	body := []byte(chatBody("mock-small", "How fast is the mock endpoint?", false))
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkChatHandler is the mock's own cost per chat completion, without
// the network or an HTTP client.
func BenchmarkChatHandler(b *testing.B) {
	s, err := New(Config{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	h := s.Handler()
	body := []byte(chatBody("mock-small", "How fast is the mock endpoint?", false))
	req := httptest.NewRequest(http.MethodPost, "/e17/v1/chat/completions", nil)
	rd := bytes.NewReader(body)
	req.Body = io.NopCloser(rd)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		rd.Reset(body)
		clear(w.h)
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}
