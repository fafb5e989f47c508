package events_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
)

// TestValidateIsAsStrictAsTheSchema: each payload here breaks its JSON
// Schema (checked first, so the case is real), and Validate, hence Encode,
// refuses it: a producer never publishes what the evaluator's or a
// subscriber's schema check would dead-letter. The last cases are at the
// limits and must pass both.
func TestValidateIsAsStrictAsTheSchema(t *testing.T) {
	probe := func(edit func(*events.ProbeResult)) events.Payload {
		p := *golden()["probe_result"].p.(*events.ProbeResult)
		edit(&p)
		return &p
	}
	outcome := func(edit func(*events.RequestOutcome)) events.Payload {
		o := *golden()["request_outcome"].p.(*events.RequestOutcome)
		o.Outcome, o.ErrorClass, o.Error, o.StatusCode = events.RequestError, events.ClassHTTP5xx, "HTTP 502", 502
		edit(&o)
		return &o
	}
	finished := func(edit func(*events.JobRecord)) events.Payload {
		f := *golden()["job_finished"].p.(*events.JobFinished)
		f.Attempts = append([]events.Attempt(nil), f.Attempts...)
		edit(&f.JobRecord)
		return &f
	}
	manyKeys := map[string]string{}
	for i := range events.MaxMetadataKeys + 1 {
		manyKeys[fmt.Sprint("k", i)] = "v"
	}
	tests := []struct {
		name string
		p    events.Payload
		want string // in Validate's error; "" = valid
	}{
		{"probe status 99", probe(func(p *events.ProbeResult) { p.StatusCode = 99 }), "status_code 99 is not an HTTP status"},
		{"probe status 600", probe(func(p *events.ProbeResult) { p.StatusCode = 600 }), "status_code 600"},
		{"probe error too long", probe(func(p *events.ProbeResult) { p.Error = strings.Repeat("é", 2049) }), "error has 2049 characters, at most 2048"},
		{"probe negative interval", probe(func(p *events.ProbeResult) { p.IntervalMS = -1 }), "interval_ms -1 must not be negative"},
		{"outcome status 700", outcome(func(o *events.RequestOutcome) { o.StatusCode = 700 }), "status_code 700"},
		{"outcome error too long", outcome(func(o *events.RequestOutcome) { o.Error = strings.Repeat("x", 2049) }), "error has 2049 characters"},
		{"outcome job id", outcome(func(o *events.RequestOutcome) { o.JobID = "job 1" }), `job_id "job 1" must match`},
		{"finished without lane", finished(func(r *events.JobRecord) { r.Lane = "" }), `lane "" is not one of`},
		{"finished bad priority", finished(func(r *events.JobRecord) { r.Priority = "urgent" }), `priority "urgent"`},
		{"finished bad endpoint", finished(func(r *events.JobRecord) { r.Endpoint = "a.b" }), `endpoint "a.b" must match`},
		{"finished attempt 0", finished(func(r *events.JobRecord) { r.Attempts[0].N = 0 }), "attempts[0]: n 0 must be at least 1"},
		{"finished attempt endpoint", finished(func(r *events.JobRecord) { r.Attempts[1].Endpoint = "" }), "attempts[1]: endpoint"},
		{"finished attempt outcome", finished(func(r *events.JobRecord) { r.Attempts[0].Outcome = "meh" }), `attempts[0]: outcome "meh"`},
		{"finished attempt class", finished(func(r *events.JobRecord) { r.Attempts[0].ErrorClass = "weird" }), `attempts[0]: error_class "weird" is unknown`},
		{"finished attempt latency", finished(func(r *events.JobRecord) { r.Attempts[0].LatencyMS = -1 }), "attempts[0]: latency_ms must not be negative"},
		{"finished response not an object", finished(func(r *events.JobRecord) { r.Response = json.RawMessage(` ["a"]`) }), "response is not a JSON object"},
		{"finished negative max_attempts", finished(func(r *events.JobRecord) { r.MaxAttempts = -1 }), "max_attempts -1"},
		{"finished negative deliveries", finished(func(r *events.JobRecord) { r.Deliveries = -1 }), "deliveries -1"},
		{"finished too much metadata", finished(func(r *events.JobRecord) { r.Metadata = manyKeys }), "metadata has 33 keys"},
		{"finished long metadata", finished(func(r *events.JobRecord) { r.Metadata = map[string]string{"k": strings.Repeat("x", 1025)} }), `metadata "k"`},

		{"probe error of 2048 characters", probe(func(p *events.ProbeResult) { p.Error = strings.Repeat("é", 2048) }), ""},
		{"probe without status", probe(func(p *events.ProbeResult) { p.StatusCode = 0 }), ""},
		{"outcome status 599", outcome(func(o *events.RequestOutcome) { o.StatusCode = 599 }), ""},
		{"finished metadata of 1024 characters", finished(func(r *events.JobRecord) { r.Metadata = map[string]string{"k": strings.Repeat("é", 1024)} }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := json.Marshal(tt.p)
			if err != nil {
				t.Fatal(err)
			}
			schemaErr := schemas.Validate(events.DataSchema(tt.p.EventType()), data)
			if (schemaErr == nil) != (tt.want == "") {
				t.Fatalf("schema says %v; the case is wrong", schemaErr)
			}
			err = tt.p.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v, want the payload valid (the schema accepts it)", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: %v, want an error saying %q (the schema refuses it: %v)", err, tt.want, schemaErr)
			}
		})
	}
}
