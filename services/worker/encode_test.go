package worker

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
)

// TestEventEncoderMatchesContract: what the fast encoder writes decodes,
// with schema validation, to the payload it was given, with the attributes
// events.Encode would set.
func TestEventEncoderMatchesContract(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 891011, time.UTC)
	until := now.Add(time.Second)
	fin := now.Add(time.Minute)
	payloads := []struct {
		id string
		p  events.Payload
	}{
		{"job1-1-2", &events.RequestOutcome{Endpoint: "ep", Model: "m", JobID: "job1", Lane: events.LaneDurable, Attempt: 2,
			Outcome: events.RequestError, ErrorClass: events.ClassHTTP429, Error: "HTTP 429: \"slow down\" <&>", StatusCode: 429,
			LatencyMS: 12.5, ThrottledUntil: &until, TrialLease: "ep:1:2", StartedAt: now}},
		{"job1.finished", &events.JobFinished{JobRecord: events.JobRecord{ID: "job1", Status: events.JobSucceeded, Lane: events.LaneDurable,
			Priority: events.PriorityHigh, Model: "m", Endpoint: "ep", Response: json.RawMessage(`{"object":"chat.completion","choices":[{"index":0}]}`),
			Attempts:    []events.Attempt{{N: 1, Endpoint: "ep", Model: "m", Outcome: events.RequestSuccess, LatencyMS: 3, StartedAt: now}},
			Metadata:    map[string]string{"k": "v\u2028"},
			SubmittedAt: now, FinishedAt: &fin, UpdatedAt: fin, Deliveries: 1}}},
		{"job2.finished", &events.JobFinished{JobRecord: events.JobRecord{ID: "job2", Status: events.JobFailed, Lane: events.LaneDurable,
			Model: "m", Error: &events.JobError{Class: events.ClassClientError, StatusCode: 404, Message: "no such model"},
			DeadLetter: "x", SubmittedAt: now, FinishedAt: &fin, UpdatedAt: fin}}},
	}
	enc := newEventEncoder("/worker/w1")
	dec := events.Decoder{Schema: schemas.Validate}
	for _, tc := range payloads {
		t.Run(tc.p.EventType(), func(t *testing.T) {
			m, err := enc.msg(tc.id, tc.p, now)
			if err != nil {
				t.Fatal(err)
			}
			if m.Subject != tc.p.Subject() || m.Header.Get("Nats-Msg-Id") != tc.id || m.Header.Get("Content-Type") != events.ContentType {
				t.Errorf("message %s %v", m.Subject, m.Header)
			}
			got, err := dec.Decode(m.Data)
			if err != nil {
				t.Fatalf("decode %s: %v", m.Data, err)
			}
			ref, err := events.Encode("/worker/w1", tc.id, tc.p)
			if err != nil {
				t.Fatal(err)
			}
			want, err := dec.Decode(ref)
			if err != nil {
				t.Fatal(err)
			}
			want.Time = now
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("fast encoding differs from events.Encode (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := enc.msg("x", &events.JobFinished{JobRecord: events.JobRecord{ID: "j", Status: events.JobRunning}}, now); err == nil {
		t.Error("a non-terminal finished event was encoded")
	}
	if _, err := enc.msg("", payloads[0].p, now); err == nil {
		t.Error("an event without id was encoded")
	}
}
