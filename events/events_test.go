package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	t0     = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	later  = t0.Add(90 * time.Second)
	strict = events.Decoder{Schema: schemas.Validate}
)

func ptr[T any](v T) *T { return &v }

func sampleState() events.EndpointState {
	return events.EndpointState{
		Endpoint: "openai-main", Health: events.HealthUnhealthy, HealthSince: t0,
		Breaker: events.BreakerOpen, BreakerSince: t0, OpenedAt: ptr(t0), OpenUntil: ptr(t0.Add(time.Minute)),
		OpenCount: 1, Override: events.OverrideNone, ConsecutiveFailures: 5, BreakerFailures: 5,
		Window:    []events.WindowBucket{{Start: t0, Requests: 10, Failures: 6}},
		ErrorRate: 0.6, LatencyEWMAMS: 412.5,
		LastProbe: &events.ProbeView{At: t0, Vantage: "eu-1", Kind: events.ProbeModels, Outcome: events.ProbeFail, ErrorClass: events.ClassHTTP5xx, LatencyMS: 80, IntervalMS: 30000},
		LastError: &events.ErrorView{At: t0, Class: events.ClassHTTP5xx, Message: "HTTP 503", StatusCode: 503, Source: "/prober/eu-1"},
		Vantages:  map[string]events.ProbeView{"eu-1/models": {At: t0, Vantage: "eu-1", Kind: events.ProbeModels, Outcome: events.ProbeFail, ErrorClass: events.ClassHTTP5xx, LatencyMS: 80}},
		Requests:  10, Failures: 6, UpdatedAt: t0, Revision: 42,
	}
}

// golden holds one valid event of every type.
func golden() map[string]struct {
	id string
	p  events.Payload
} {
	record := events.JobRecord{
		ID: "job-1", Status: events.JobSucceeded, Lane: events.LaneDurable, Priority: events.PriorityHigh,
		Model: "fast", Endpoint: "openai-main",
		Attempts: []events.Attempt{
			{N: 1, Endpoint: "relay", Model: "gpt-4.1-mini", Worker: "w1", Outcome: events.RequestError, ErrorClass: events.ClassHTTP5xx, Error: "HTTP 502", StatusCode: 502, LatencyMS: 31, StartedAt: t0},
			{N: 2, Endpoint: "openai-main", Model: "gpt-4.1-mini", Worker: "w1", Outcome: events.RequestSuccess, LatencyMS: 420, StartedAt: t0.Add(time.Second)},
		},
		Response:    json.RawMessage(`{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"OK"},"finish_reason":"stop"}]}`),
		Metadata:    map[string]string{"team": "search"},
		Deliveries:  1,
		SubmittedAt: t0, StartedAt: ptr(t0), FinishedAt: ptr(later), UpdatedAt: later,
	}
	return map[string]struct {
		id string
		p  events.Payload
	}{
		"probe_result": {"eu-1-openai-main-1", &events.ProbeResult{
			Endpoint: "openai-main", Vantage: "eu-1", Kind: events.ProbeModels, Outcome: events.ProbeFail,
			ErrorClass: events.ClassHTTP429, Error: "HTTP 429", StatusCode: 429, LatencyMS: 35.5,
			ThrottledUntil: ptr(later), IntervalMS: 30000, StartedAt: t0,
		}},
		"request_outcome": {"job-1-2", &events.RequestOutcome{
			Endpoint: "openai-main", Model: "gpt-4.1-mini", JobID: "job-1", Lane: events.LaneDurable, Attempt: 2,
			Outcome: events.RequestSuccess, LatencyMS: 420, TTFTMS: 180, TrialLease: "lease-1", StartedAt: t0,
		}},
		"status_changed": {"openai-main@42", &events.StatusChanged{
			Endpoint: "openai-main", Revision: 42,
			Health:  &events.Transition{From: "healthy", To: "unhealthy"},
			Breaker: &events.Transition{From: "closed", To: "open"},
			Cause: events.Cause{Kind: events.CauseProbe, Reason: "5 consecutive failures", EventID: "eu-1-openai-main-1",
				EventType: events.TypeProbeResult, Source: "/prober/eu-1", ProbeKind: events.ProbeModels,
				Outcome: "fail", ErrorClass: events.ClassHTTP5xx, Error: "HTTP 503", StatusCode: 503},
			State: sampleState(), At: t0,
		}},
		"job_submitted": {"job-1", &events.JobSubmitted{
			ID: "job-1", Priority: events.PriorityHigh,
			Request:  json.RawMessage(`{"model":"fast","messages":[{"role":"user","content":"Hello"}],"max_tokens":64,"temperature":0.2}`),
			Deadline: ptr(later), MaxAttempts: 3, Metadata: map[string]string{"team": "search"},
			CallbackURL: "https://example.com/hook", SubmittedAt: t0,
		}},
		"job_finished": {events.FinishedEventID("job-1"), &events.JobFinished{JobRecord: record}},
	}
}

// TestGoldenRoundTrip encodes one event of every type, compares it with its
// golden file, validates its data against its schema and decodes it back.
func TestGoldenRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for name, g := range golden() {
		t.Run(name, func(t *testing.T) {
			body, err := events.Encode("/test/golden", g.id, g.p)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			body = normalizeTime(t, body)
			path := filepath.Join("testdata", name+".json")
			if *update {
				var pretty bytes.Buffer
				json.Indent(&pretty, body, "", "  ")
				pretty.WriteByte('\n')
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("golden file (run with -update to create): %v", err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, want); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(compact.String(), string(body)); diff != "" {
				t.Errorf("encoding differs from %s (-golden +got):\n%s", path, diff)
			}

			env, err := strict.Decode(compact.Bytes())
			if err != nil {
				t.Fatalf("Decode(golden): %v", err)
			}
			seen[env.Type] = true
			if env.ID != g.id || env.Source != "/test/golden" || env.Type != g.p.EventType() {
				t.Errorf("envelope = %s %s %s, want %s /test/golden %s", env.ID, env.Source, env.Type, g.id, g.p.EventType())
			}
			if diff := cmp.Diff(g.p, env.Data); diff != "" {
				t.Errorf("round trip changed the payload (-sent +decoded):\n%s", diff)
			}
		})
	}
	for _, typ := range events.Types() {
		if !seen[typ] {
			t.Errorf("no golden event of type %s", typ)
		}
	}
}

// normalizeTime pins the CloudEvent time attribute so golden files are stable.
func normalizeTime(t *testing.T, body []byte) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	m["time"] = json.RawMessage(`"2026-11-25T12:00:00Z"`)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestEncodedEventsCarryContractAttributes(t *testing.T) {
	for name, g := range golden() {
		body, err := events.Encode("/prober/eu-1", g.id, g.p)
		if err != nil {
			t.Fatal(err)
		}
		var ce map[string]any
		if err := json.Unmarshal(body, &ce); err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"specversion": "1.0", "id": g.id, "source": "/prober/eu-1", "type": g.p.EventType(),
			"datacontenttype": "application/json", "dataschema": events.DataSchema(g.p.EventType()),
		}
		for k, v := range want {
			if ce[k] != v {
				t.Errorf("%s: attribute %s = %v, want %v", name, k, ce[k], v)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, ce["time"].(string)); err != nil {
			t.Errorf("%s: time %v: %v", name, ce["time"], err)
		}
	}
}

func TestEveryTypeHasASchema(t *testing.T) {
	ids := map[string]bool{}
	for _, id := range schemas.IDs() {
		ids[id] = true
	}
	for _, typ := range events.Types() {
		if !ids[events.DataSchema(typ)] {
			t.Errorf("type %s: no schema %s", typ, events.DataSchema(typ))
		}
	}
	for _, id := range []string{schemas.JobRequest, schemas.EndpointState, schemas.JobRecord} {
		if !ids[id] {
			t.Errorf("schema %s is not embedded", id)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	valid, err := events.Encode("/prober/eu-1", "p1", golden()["probe_result"].p)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(valid, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name    string
		body    []byte
		wantErr error
		want    string // substring of the message
	}{
		{"not json", []byte("hello"), events.ErrMalformed, "not a structured-mode CloudEvent"},
		{"empty", nil, events.ErrMalformed, "not a structured-mode CloudEvent"},
		{"missing id", edit(func(m map[string]any) { delete(m, "id") }), events.ErrMalformed, "id"},
		{"missing source", edit(func(m map[string]any) { delete(m, "source") }), events.ErrMalformed, "source"},
		{"wrong specversion", edit(func(m map[string]any) { m["specversion"] = "0.3" }), events.ErrMalformed, "specversion"},
		{"unknown type", edit(func(m map[string]any) { m["type"] = "com.example.other.v1" }), events.ErrUnknownType, `"com.example.other.v1"`},
		{"wrong dataschema", edit(func(m map[string]any) { m["dataschema"] = "https://example.com/x.json" }), events.ErrMalformed, "dataschema"},
		{"no data", edit(func(m map[string]any) { delete(m, "data") }), events.ErrMalformed, "data is missing"},
		{"data not an object", edit(func(m map[string]any) { m["data"] = 7 }), events.ErrMalformed, "schema"},
		{"bad outcome", edit(func(m map[string]any) { m["data"].(map[string]any)["outcome"] = "meh" }), events.ErrMalformed, "/outcome"},
		{"bad endpoint name", edit(func(m map[string]any) { m["data"].(map[string]any)["endpoint"] = "a.b" }), events.ErrMalformed, "/endpoint"},
		{"negative latency", edit(func(m map[string]any) { m["data"].(map[string]any)["latency_ms"] = -1 }), events.ErrMalformed, "/latency_ms"},
		{"fail without class", edit(func(m map[string]any) { delete(m["data"].(map[string]any), "error_class") }), events.ErrMalformed, "error_class"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := strict.Decode(tt.body)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Decode error = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode error %q does not say %q", err, tt.want)
			}
		})
	}
	// Without the schema, Go-level validation still catches invalid data.
	if _, err := events.Decode(edit(func(m map[string]any) { m["data"].(map[string]any)["outcome"] = "meh" })); !errors.Is(err, events.ErrMalformed) {
		t.Errorf("Decode without schema accepted a bad outcome: %v", err)
	}
}

func TestEncodeRefusesInvalidPayloads(t *testing.T) {
	tests := []struct {
		name string
		p    events.Payload
		want string
	}{
		{"probe without endpoint", &events.ProbeResult{Vantage: "v", Kind: events.ProbeHealth, Outcome: events.ProbePass, StartedAt: t0}, "endpoint is empty"},
		{"pass with class", &events.ProbeResult{Endpoint: "e", Vantage: "v", Kind: events.ProbeHealth, Outcome: events.ProbePass, ErrorClass: events.ClassTimeout, StartedAt: t0}, "outcome pass has error_class"},
		{"outcome attempt 0", &events.RequestOutcome{Endpoint: "e", Model: "m", Lane: events.LaneDurable, Outcome: events.RequestSuccess, StartedAt: t0}, "attempt 0"},
		{"status without change", &events.StatusChanged{Endpoint: "e", Revision: 1, Cause: events.Cause{Kind: events.CauseTimer}, State: events.EndpointState{Endpoint: "e", Health: events.HealthUnknown, Breaker: events.BreakerClosed, Override: events.OverrideNone}}, "nothing changed"},
		{"job without messages", &events.JobSubmitted{ID: "j", Request: json.RawMessage(`{"model":"m","messages":[]}`), SubmittedAt: t0}, "messages is empty"},
		{"job deadline before submit", &events.JobSubmitted{ID: "j", Request: json.RawMessage(`{"model":"m","messages":[{"role":"user"}]}`), SubmittedAt: t0, Deadline: ptr(t0.Add(-time.Second))}, "is not after submitted_at"},
		{"finished without error", &events.JobFinished{JobRecord: events.JobRecord{ID: "j", Status: events.JobFailed, FinishedAt: ptr(t0)}}, "failed job has no error"},
		{"finished not terminal", &events.JobFinished{JobRecord: events.JobRecord{ID: "j", Status: events.JobRunning, FinishedAt: ptr(t0)}}, "is not terminal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := events.Encode("/test", "id-1", tt.p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Encode error = %v, want one saying %q", err, tt.want)
			}
		})
	}
	if _, err := events.Encode("/test", "", golden()["probe_result"].p); err == nil {
		t.Error("Encode accepted an empty id")
	}
}

func TestStatusChangedID(t *testing.T) {
	c := golden()["status_changed"].p.(*events.StatusChanged)
	if got, want := c.ID(), "openai-main@42"; got != want {
		t.Errorf("ID() = %q, want %q", got, want)
	}
}

func TestSubjects(t *testing.T) {
	got := []string{
		events.ProbeSubject("a"), events.OutcomeSubject("a"), events.StatusSubject("a"),
		events.JobSubmitSubject(events.PriorityLow), events.JobDoneSubject("j"), events.JobDeadSubject("j"),
		events.DeadSubject("health", "a"), (&events.JobSubmitted{}).Subject(),
	}
	want := []string{
		"switchboard.probe.a", "switchboard.outcome.a", "switchboard.status.a",
		"switchboard.jobs.submit.low", "switchboard.jobs.done.j", "switchboard.jobs.dead.j",
		"switchboard.dead.health.a", "switchboard.jobs.submit.normal",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "a.b", "a b", "a*", ">", strings.Repeat("x", 129)} {
		if events.ValidName(bad) {
			t.Errorf("ValidName(%q) = true", bad)
		}
	}
}

func TestClassOfStatus(t *testing.T) {
	for code, want := range map[int]events.ErrorClass{
		400: events.ClassClientError, 401: events.ClassAuth, 403: events.ClassAuth, 404: events.ClassClientError,
		408: events.ClassHTTP4xx, 413: events.ClassClientError, 422: events.ClassClientError, 429: events.ClassHTTP429,
		500: events.ClassHTTP5xx, 503: events.ClassHTTP5xx, 302: events.ClassBadBody,
	} {
		if got := events.ClassOfStatus(code); got != want {
			t.Errorf("ClassOfStatus(%d) = %q, want %q", code, got, want)
		}
	}
}
