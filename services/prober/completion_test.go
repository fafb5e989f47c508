package prober

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// completionRelay is a relay in front of the mock that records each chat
// request's body and arrival time, and refuses max_completion_tokens when
// refuse is set.
type completionRelay struct {
	refuse bool

	mu       sync.Mutex
	models   []string
	arrivals []time.Time
}

func (c *completionRelay) start(t *testing.T) string {
	m, err := mock.New(mock.Config{APIKey: testKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return newHandlerServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived := time.Now()
		body, _ := io.ReadAll(r.Body)
		var req struct {
			Model               string `json:"model"`
			MaxCompletionTokens *int   `json:"max_completion_tokens"`
		}
		json.Unmarshal(body, &req)
		c.mu.Lock()
		c.models = append(c.models, req.Model)
		c.arrivals = append(c.arrivals, arrived)
		c.mu.Unlock()
		if c.refuse && req.MaxCompletionTokens != nil {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"message":"Unrecognized request argument supplied: max_completion_tokens"}}`)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		m.Handler().ServeHTTP(w, r)
	}))
}

// TestCompletionModelAlias: a completion_model that is one of the
// endpoint's aliases is sent upstream as the model it stands for.
func TestCompletionModelAlias(t *testing.T) {
	relay := &completionRelay{}
	ep := testEndpoint("aliased", relay.start(t), events.ProbeCompletion)
	ep.Aliases = map[string]string{"fast": "mock-small"}
	ep.CompletionModel = "fast"
	res, err := Once(context.Background(), Options{Config: testConfig(t, ep)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Outcome != events.ProbePass {
		t.Fatalf("results %+v, want one pass", res)
	}
	relay.mu.Lock()
	defer relay.mu.Unlock()
	if len(relay.models) != 1 || relay.models[0] != "mock-small" {
		t.Errorf("models sent upstream = %q, want [mock-small] (the alias fast mapped)", relay.models)
	}
	if res[0].Model != "mock-small" {
		t.Errorf("result model = %q, want mock-small", res[0].Model)
	}
}

// TestCompletionRetryTimesTheSecondRequest: when the relay refuses
// max_completion_tokens and the probe asks again, the result's start and
// latency are the second request's, so that started_at + latency_ms is
// when the probe ended.
func TestCompletionRetryTimesTheSecondRequest(t *testing.T) {
	relay := &completionRelay{refuse: true}
	ep := testEndpoint("retry", relay.start(t), events.ProbeCompletion)
	res, err := Once(context.Background(), Options{Config: testConfig(t, ep)})
	if err != nil {
		t.Fatal(err)
	}
	ended := time.Now()
	if len(res) != 1 || res[0].Outcome != events.ProbePass {
		t.Fatalf("results %+v, want one pass", res)
	}
	relay.mu.Lock()
	defer relay.mu.Unlock()
	if len(relay.arrivals) != 2 {
		t.Fatalf("%d requests, want 2", len(relay.arrivals))
	}
	started := res[0].StartedAt
	if !started.After(relay.arrivals[0]) || started.After(relay.arrivals[1]) {
		t.Errorf("started_at %s, want between the first request's arrival %s and the second's %s",
			started.Format(time.RFC3339Nano), relay.arrivals[0].Format(time.RFC3339Nano), relay.arrivals[1].Format(time.RFC3339Nano))
	}
	if end := started.Add(time.Duration(res[0].LatencyMS * float64(time.Millisecond))); end.After(ended) {
		t.Errorf("started_at + latency_ms = %s is after the probe returned (%s)", end, ended)
	}
}

// TestStatusOutsideTheSchema: a status the event schema does not allow
// (Go's client accepts any three digits) is left out of the result, which
// stays valid; the message keeps it.
func TestStatusOutsideTheSchema(t *testing.T) {
	base := newHandlerServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(799)
	}))
	res, err := Once(context.Background(), Options{Config: testConfig(t, testEndpoint("odd", base, events.ProbeModels))})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 {
		t.Fatalf("results %+v, want one", res)
	}
	r := res[0]
	if r.Outcome != events.ProbeFail || r.StatusCode != 0 || !strings.Contains(r.Error, "HTTP 799") {
		t.Errorf("result %s %s status %d %q, want a failure without status_code, saying HTTP 799", r.Outcome, r.ErrorClass, r.StatusCode, r.Error)
	}
	if err := r.Validate(); err != nil {
		t.Errorf("the result is not valid: %v", err)
	}
}
