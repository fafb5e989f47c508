package prober

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// wrongKey is the key of endpoints that are given a wrong one; it is a
// secret as much as testKey.
const wrongKey = "sk-wrong-9876543210-SECRET"

// verdict is what a fault test checks of a published probe result.
type verdict struct {
	Source     string
	Endpoint   string
	Vantage    string
	Kind       events.ProbeKind
	Outcome    events.ProbeOutcome
	Class      events.ErrorClass
	Status     int
	IntervalMS int64
}

// Handlers of endpoints that misbehave in ways the mock does not.
var (
	echoKeyHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `{"error":{"message":"upstream rejected %s"}}`, r.Header.Get("Authorization"))
	})
	// echoKeyAtCutHandler puts the key where an error message is cut, so
	// that cutting before redacting would leak its start.
	echoKeyAtCutHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, `{"error":{"message":"%s %s"}}`, strings.Repeat("x", 156), r.Header.Get("Authorization"))
	})
	redirectHandler = http.RedirectHandler("http://127.0.0.1:1/elsewhere", http.StatusFound)
	refuseHandler   = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":{"message":"probe-like requests are not allowed on this relay","type":"invalid_request_error"}}`)
	})
	jsonAnswerHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"OK"},"finish_reason":"stop"}]}`)
	})
	streamErrorHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"+
			"data: {\"error\":{\"message\":\"upstream provider failed\"}}\n\ndata: [DONE]\n\n")
	})
	streamNoDoneHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"OK\"}}]}\n\n")
	})
)

// TestFaults probes a mock (or a misbehaving server) with each fault, for
// each probe kind the fault applies to, and checks the published result.
func TestFaults(t *testing.T) {
	_, _, js := natstest.Start(t)
	faults := func(f mock.Faults) *mock.Config { return &mock.Config{APIKey: testKey, Seed: 7, Faults: f} }
	const (
		health     = events.ProbeHealth
		models     = events.ProbeModels
		completion = events.ProbeCompletion
	)
	tests := []struct {
		name    string
		kind    events.ProbeKind
		mock    *mock.Config // serve a mock endpoint with this config, or
		handler http.Handler // serve this handler, or
		tls     bool         // (with handler) over TLS with a certificate nobody trusts, or
		refused bool         // use a port nothing listens on
		edit    func(*config.Endpoint)

		wantOutcome events.ProbeOutcome
		wantClass   events.ErrorClass
		wantStatus  int
		check       func(t *testing.T, r *events.ProbeResult)
	}{
		// health
		{name: "health pass", kind: health, mock: faults(mock.Faults{}), wantOutcome: events.ProbePass, wantStatus: 200},
		{name: "health 5xx", kind: health, mock: faults(mock.Faults{ErrorRate: 1, ErrorStatus: 503}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 503},
		{name: "health outage status", kind: health, mock: faults(mock.Faults{Down: true}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 503},
		{name: "health outage reset", kind: health, mock: faults(mock.Faults{Down: true, OutageMode: mock.OutageReset}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
		{name: "health outage hang", kind: health, mock: faults(mock.Faults{Down: true, OutageMode: mock.OutageHang}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassTimeout, check: latencyAtLeast(500)},
		{name: "health refused", kind: health, refused: true, wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
		{name: "health tls", kind: health, handler: http.NotFoundHandler(), tls: true,
			wantOutcome: events.ProbeFail, wantClass: events.ClassTLS},
		{name: "health path unknown", kind: health, mock: faults(mock.Faults{}), edit: func(e *config.Endpoint) { e.HealthPath = "/nope" },
			wantOutcome: events.ProbeInconclusive, wantClass: events.ClassClientError, wantStatus: 404},
		{name: "health redirect", kind: health, handler: redirectHandler,
			wantOutcome: events.ProbeFail, wantClass: events.ClassBadBody, wantStatus: 302},

		// models
		{name: "models pass", kind: models, mock: faults(mock.Faults{}), wantOutcome: events.ProbePass, wantStatus: 200},
		{name: "models latency under timeout", kind: models, mock: faults(mock.Faults{Latency: mock.Duration(100 * time.Millisecond)}),
			wantOutcome: events.ProbePass, wantStatus: 200, check: latencyAtLeast(100)},
		{name: "models latency over timeout", kind: models, mock: faults(mock.Faults{Latency: mock.Duration(5 * time.Second)}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassTimeout, check: latencyAtLeast(500)},
		{name: "models hang", kind: models, mock: faults(mock.Faults{HangRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassTimeout},
		{name: "models 5xx", kind: models, mock: faults(mock.Faults{ErrorRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 500},
		{name: "models 429", kind: models, mock: faults(mock.Faults{RateLimitRate: 1, RetryAfter: mock.Duration(30 * time.Second)}),
			wantOutcome: events.ProbeInconclusive, wantClass: events.ClassHTTP429, wantStatus: 429, check: throttledFor(30 * time.Second)},
		{name: "models wrong key", kind: models, mock: faults(mock.Faults{}), edit: func(e *config.Endpoint) { e.APIKey = wrongKey },
			wantOutcome: events.ProbeFail, wantClass: events.ClassAuth, wantStatus: 401},
		{name: "models missing key", kind: models, mock: faults(mock.Faults{}), edit: func(e *config.Endpoint) { e.APIKey = "" },
			wantOutcome: events.ProbeFail, wantClass: events.ClassAuth, wantStatus: 401},
		{name: "models malformed", kind: models, mock: faults(mock.Faults{MalformedRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassBadBody, wantStatus: 200},
		{name: "models truncated", kind: models, mock: faults(mock.Faults{TruncateRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassConnect, wantStatus: 200},
		{name: "models model missing", kind: models, mock: faults(mock.Faults{}),
			edit:        func(e *config.Endpoint) { e.Models = []string{"mock-small", "gpt-9", "mock-large", "o9"} },
			wantOutcome: events.ProbeFail, wantClass: events.ClassModelMissing, wantStatus: 200,
			check: func(t *testing.T, r *events.ProbeResult) {
				if diff := cmp.Diff([]string{"gpt-9", "o9"}, r.MissingModels); diff != "" {
					t.Errorf("missing models (-want +got):\n%s", diff)
				}
			}},
		{name: "models refused", kind: models, refused: true, wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
		{name: "models outage reset", kind: models, mock: faults(mock.Faults{Down: true, OutageMode: mock.OutageReset}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
		{name: "models key echoed", kind: models, handler: echoKeyHandler,
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 500,
			check: func(t *testing.T, r *events.ProbeResult) {
				if !strings.Contains(r.Error, "Bearer [redacted]") {
					t.Errorf("error %q does not show the echoed key redacted", r.Error)
				}
			}},

		{name: "models key echoed at the cut", kind: models, handler: echoKeyAtCutHandler,
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 502},

		// completion
		{name: "completion pass", kind: completion, mock: faults(mock.Faults{}), wantOutcome: events.ProbePass, wantStatus: 200,
			check: func(t *testing.T, r *events.ProbeResult) {
				if r.Model != "mock-small" || r.TTFTMS <= 0 || r.TTFTMS > r.LatencyMS {
					t.Errorf("model %q, ttft %vms, latency %vms: want mock-small and 0 < ttft <= latency", r.Model, r.TTFTMS, r.LatencyMS)
				}
			}},
		{name: "completion hang", kind: completion, mock: faults(mock.Faults{HangRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassTimeout},
		{name: "completion 5xx", kind: completion, mock: faults(mock.Faults{ErrorRate: 1, ErrorStatus: 502}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassHTTP5xx, wantStatus: 502},
		{name: "completion 429", kind: completion, mock: faults(mock.Faults{RateLimitRate: 1, RetryAfter: mock.Duration(30 * time.Second)}),
			wantOutcome: events.ProbeInconclusive, wantClass: events.ClassHTTP429, wantStatus: 429, check: throttledFor(30 * time.Second)},
		{name: "completion wrong key", kind: completion, mock: faults(mock.Faults{}), edit: func(e *config.Endpoint) { e.APIKey = wrongKey },
			wantOutcome: events.ProbeFail, wantClass: events.ClassAuth, wantStatus: 401},
		{name: "completion malformed", kind: completion, mock: faults(mock.Faults{MalformedRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassBadBody, wantStatus: 200},
		{name: "completion truncated", kind: completion, mock: faults(mock.Faults{TruncateRate: 1}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassStreamBroken, wantStatus: 200},
		{name: "completion no done", kind: completion, handler: streamNoDoneHandler,
			wantOutcome: events.ProbeFail, wantClass: events.ClassStreamBroken, wantStatus: 200},
		{name: "completion error chunk", kind: completion, handler: streamErrorHandler,
			wantOutcome: events.ProbeFail, wantClass: events.ClassBadBody, wantStatus: 200},
		{name: "completion relay refuses", kind: completion, handler: refuseHandler,
			wantOutcome: events.ProbeInconclusive, wantClass: events.ClassClientError, wantStatus: 400},
		{name: "completion json answer", kind: completion, handler: jsonAnswerHandler,
			wantOutcome: events.ProbePass, wantStatus: 200},
		{name: "completion outage reset", kind: completion, mock: faults(mock.Faults{Down: true, OutageMode: mock.OutageReset}),
			wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
		{name: "completion refused", kind: completion, refused: true, wantOutcome: events.ProbeFail, wantClass: events.ClassConnect},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var base string
			switch {
			case tt.mock != nil:
				_, base = newMock(t, *tt.mock)
			case tt.handler != nil && tt.tls:
				ts := httptest.NewUnstartedServer(tt.handler)
				ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshakes are the point
				ts.StartTLS()
				t.Cleanup(ts.Close)
				base = ts.URL + "/v1"
			case tt.handler != nil:
				base = newHandlerServer(t, tt.handler)
			case tt.refused:
				base = refusedURL(t)
			}
			name := fmt.Sprintf("fault%02d", i)
			ep := testEndpoint(name, base, tt.kind)
			if tt.edit != nil {
				tt.edit(&ep)
			}
			var logs logBuffer
			p, err := New(Options{Config: testConfig(t, ep), JS: js, Log: logs.logger(), Rand: rand.New(zeroSource{})})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			reader := newProbeReader(t, js, name)
			stop := startProber(t, p)
			got := reader.next(10 * time.Second)
			stop()

			want := verdict{
				Source: "/prober/" + testVantage, Endpoint: name, Vantage: testVantage, Kind: tt.kind,
				Outcome: tt.wantOutcome, Class: tt.wantClass, Status: tt.wantStatus, IntervalMS: 1000,
			}
			r := got.res
			t.Logf("%s %s %s: status %d, %.1fms: %s", r.Kind, r.Outcome, r.ErrorClass, r.StatusCode, r.LatencyMS, r.Error)
			gotV := verdict{got.env.Source, r.Endpoint, r.Vantage, r.Kind, r.Outcome, r.ErrorClass, r.StatusCode, r.IntervalMS}
			if diff := cmp.Diff(want, gotV); diff != "" {
				t.Errorf("result (-want +got):\n%s\nerror: %s", diff, r.Error)
			}
			if (r.Outcome == events.ProbePass) != (r.Error == "") {
				t.Errorf("outcome %s with error %q: want an error exactly when it did not pass", r.Outcome, r.Error)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
			// Not the key, nor its start (as a message cut before redacting would show).
			for _, key := range []string{testKey, wrongKey, testKey[:10], wrongKey[:10]} {
				if strings.Contains(string(got.raw), key) {
					t.Errorf("the event contains an API key: %s", got.raw)
				}
				if l := logs.String(); strings.Contains(l, key) {
					t.Errorf("the log contains an API key:\n%s", l)
				}
			}
		})
	}
}

func latencyAtLeast(msecs float64) func(*testing.T, *events.ProbeResult) {
	return func(t *testing.T, r *events.ProbeResult) {
		t.Helper()
		if r.LatencyMS < msecs {
			t.Errorf("latency %vms, want at least %vms", r.LatencyMS, msecs)
		}
	}
}

func throttledFor(d time.Duration) func(*testing.T, *events.ProbeResult) {
	return func(t *testing.T, r *events.ProbeResult) {
		t.Helper()
		if r.ThrottledUntil == nil {
			t.Fatal("throttled_until is missing")
		}
		if got := r.ThrottledUntil.Sub(r.StartedAt); got < d || got > d+5*time.Second {
			t.Errorf("throttled until %s after the probe started, want about %s", got, d)
		}
	}
}
