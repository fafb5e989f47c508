package prober

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

func TestOnce(t *testing.T) {
	_, base := newMock(t, mock.Config{APIKey: testKey})
	cfg := testConfig(t,
		testEndpoint("up", base, events.ProbeHealth, events.ProbeModels),
		testEndpoint("gone", refusedURL(t), events.ProbeHealth, events.ProbeModels),
	)
	type row struct {
		Endpoint string
		Kind     events.ProbeKind
		Outcome  events.ProbeOutcome
		Class    events.ErrorClass
	}
	rows := func(rs []events.ProbeResult) []row {
		var out []row
		for _, r := range rs {
			if r.Vantage != testVantage || r.StartedAt.IsZero() {
				t.Errorf("result %+v lacks its vantage or start", r)
			}
			out = append(out, row{r.Endpoint, r.Kind, r.Outcome, r.ErrorClass})
		}
		return out
	}
	tests := []struct {
		name    string
		names   []string
		want    []row
		wantErr string
	}{
		{"all", nil, []row{
			{"up", events.ProbeHealth, events.ProbePass, ""},
			{"up", events.ProbeModels, events.ProbePass, ""},
			{"gone", events.ProbeHealth, events.ProbeFail, events.ClassConnect},
			{"gone", events.ProbeModels, events.ProbeFail, events.ClassConnect},
		}, ""},
		{"one", []string{"gone"}, []row{
			{"gone", events.ProbeHealth, events.ProbeFail, events.ClassConnect},
			{"gone", events.ProbeModels, events.ProbeFail, events.ClassConnect},
		}, ""},
		{"unknown", []string{"up", "nope"}, nil, `probe endpoint "nope": no such endpoint (configured: up, gone)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Once(context.Background(), Options{Config: cfg}, tt.names...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Once: %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Once: %v", err)
			}
			if diff := cmp.Diff(tt.want, rows(got)); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCompletionMaxTokensFallback: a relay that rejects
// max_completion_tokens is asked again with max_tokens, and later probes
// send max_tokens at once.
func TestCompletionMaxTokensFallback(t *testing.T) {
	_, _, js := natstest.Start(t)
	m, err := mock.New(mock.Config{APIKey: testKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	var mu sync.Mutex
	var sent []map[string]any
	base := newHandlerServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		json.Unmarshal(body, &req)
		mu.Lock()
		sent = append(sent, req)
		mu.Unlock()
		if _, ok := req["max_completion_tokens"]; ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"message":"Unrecognized request argument supplied: max_completion_tokens","type":"invalid_request_error"}}`)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		m.Handler().ServeHTTP(w, r)
	}))
	ep := testEndpoint("fallback", base, events.ProbeCompletion)
	ep.CheckInterval, ep.Timeout = 200*time.Millisecond, 200*time.Millisecond
	p, err := New(Options{Config: testConfig(t, ep), JS: js, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	r := newProbeReader(t, js, "fallback")
	stop := startProber(t, p)
	for i := range 2 {
		res := r.next(10 * time.Second).res
		if res.Outcome != events.ProbePass {
			t.Fatalf("probe %d: %s %s: %s", i, res.Outcome, res.ErrorClass, res.Error)
		}
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, req := range sent[:3] {
		switch {
		case req["max_completion_tokens"] != nil:
			got = append(got, "max_completion_tokens")
		case req["max_tokens"] == float64(256) && req["stream"] == true:
			got = append(got, "max_tokens")
		default:
			got = append(got, "?")
		}
	}
	if diff := cmp.Diff([]string{"max_completion_tokens", "max_tokens", "max_tokens"}, got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func TestParseModels(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    []string
		wantErr string
	}{
		{"openai list", `{"object":"list","data":[{"id":"a","object":"model"},{"id":"b"}]}`, []string{"a", "b"}, ""},
		{"empty list", `{"object":"list","data":[]}`, nil, ""},
		{"html", "<html><body>502 Bad Gateway</body></html>", nil, "not a model list"},
		{"cut off", `{"object":"list","data":[{"id":"a"`, nil, "not a model list"},
		{"other object", `{"status":"ok"}`, nil, "no data list"},
		{"data null", `{"data":null}`, nil, "no data list"},
		{"data not a list", `{"data":{"id":"a"}}`, nil, "not a model list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ids, err := parseModels([]byte(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseModels: %v, want an error saying %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, id := range tt.want {
				if ids[id] {
					got = append(got, id)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" || len(ids) != len(tt.want) {
				t.Errorf("ids %v, want %v", ids, tt.want)
			}
		})
	}
}

func TestLineScanner(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		r       io.Reader
		limit   int
		want    []string
		wantErr error
	}{
		{"lf and crlf", strings.NewReader("a\nbb\r\n\ncc\n"), 100, []string{"a", "bb", "", "cc"}, io.EOF},
		{"byte by byte", iotest.OneByteReader(strings.NewReader("data: x\n\ndata: [DONE]\n")), 100, []string{"data: x", "", "data: [DONE]"}, io.EOF},
		{"partial last line", strings.NewReader("a\nhalf"), 100, []string{"a"}, io.EOF},
		{"long line", strings.NewReader(strings.Repeat("x", 10000) + "\n"), 20000, []string{strings.Repeat("x", 10000)}, io.EOF},
		{"over the limit", strings.NewReader("a\n" + strings.Repeat("x", 100) + "\n"), 50, []string{"a"}, errStreamTooLong},
		{"read error", io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(errBoom)), 100, []string{"a"}, errBoom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newLineScanner(tt.r, tt.limit)
			var got []string
			var err error
			for {
				var line []byte
				if line, err = s.next(); err != nil {
					break
				}
				got = append(got, string(line))
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}
