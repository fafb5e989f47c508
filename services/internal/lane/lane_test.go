package lane_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReplyRoundTrip(t *testing.T) {
	tests := []lane.Reply{
		{Status: 200, Endpoint: "ep1", Attempts: 2, ContentType: lane.ContentTypeJSON, JobID: "j1", Body: []byte(`{"choices":[]}`)},
		{Status: 503, Attempts: 1, ContentType: lane.ContentTypeJSON, RetryAfter: 3 * time.Second, Body: lane.ErrorBody("no", lane.TypeUnavailable, lane.CodeNoEndpoint)},
		{Status: 200, Endpoint: "ep1", Attempts: 1, Stream: lane.StreamStart, ContentType: lane.ContentTypeSSE},
		{Stream: lane.StreamData, Body: []byte("data: {}\n\n")},
		{Stream: lane.StreamEnd},
		{Status: 502, Endpoint: "ep1", Attempts: 1, Stream: lane.StreamError, Body: lane.ErrorBody("broke", lane.TypeUpstream, lane.CodeStreamBroken)},
		{Status: 503, ContentType: lane.ContentTypeJSON, RetryAfter: time.Second, Refused: true, Body: lane.ErrorBody("busy", lane.TypeUnavailable, lane.CodeWorkerBusy)},
	}
	for _, want := range tests {
		t.Run(want.Stream+"/"+want.Endpoint, func(t *testing.T) {
			m := want.Msg("_INBOX.x")
			if m.Subject != "_INBOX.x" {
				t.Errorf("subject %q", m.Subject)
			}
			got, err := lane.ParseReply(m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRetryAfterRoundsUp(t *testing.T) {
	m := lane.Reply{Status: 503, RetryAfter: 1500 * time.Millisecond}.Msg("x")
	if got := m.Header.Get(lane.HeaderRetryAfter); got != "2" {
		t.Errorf("Retry-After = %q, want 2", got)
	}
}

func TestParseReplyRejects(t *testing.T) {
	tests := []struct {
		name   string
		header nats.Header
	}{
		{"no headers", nil},
		{"no status", nats.Header{lane.HeaderEndpoint: {"e"}}},
		{"status not a number", nats.Header{lane.HeaderStatus: {"ok"}}},
		{"status out of range", nats.Header{lane.HeaderStatus: {"99"}}},
		{"attempts negative", nats.Header{lane.HeaderStatus: {"200"}, lane.HeaderAttempts: {"-1"}}},
		{"unknown phase", nats.Header{lane.HeaderStatus: {"200"}, lane.HeaderStream: {"middle"}}},
		{"error without status", nats.Header{lane.HeaderStream: {lane.StreamError}}},
		{"bad retry-after", nats.Header{lane.HeaderStatus: {"503"}, lane.HeaderRetryAfter: {"soon"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := lane.ParseReply(&nats.Msg{Header: tc.header})
			if !errors.Is(err, lane.ErrBadReply) {
				t.Errorf("err = %v, want ErrBadReply", err)
			}
		})
	}
}

func TestErrorBody(t *testing.T) {
	b := lane.ErrorBody("went wrong", lane.TypeUpstream, lane.CodeUpstreamFailed)
	var e lane.ErrorJSON
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(lane.ErrorDetail{Message: "went wrong", Type: lane.TypeUpstream, Code: lane.CodeUpstreamFailed}, e.Error); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		body string
		want bool
	}{
		{string(b), true},
		{`{"error":{"message":"bad","type":"invalid_request_error"}}`, true},
		{`{"error":"bad"}`, false},
		{`{"choices":[]}`, false},
		{`not json`, false},
	} {
		if got := lane.IsErrorBody([]byte(tc.body)); got != tc.want {
			t.Errorf("IsErrorBody(%s) = %v, want %v", tc.body, got, tc.want)
		}
	}
	long := lane.ErrorBody(strings.Repeat("é", 2500), lane.TypeServer, "")
	if len(long) > 1200 || !utf8.Valid(long) || !strings.Contains(string(long), `é..."`) {
		t.Errorf("a 5000-byte message gave %q, want it cut at a rune to about 1 KiB", long)
	}
}

func TestNewRequest(t *testing.T) {
	now := time.Now().UTC()
	job := &events.JobSubmitted{ID: "j1", Request: []byte(`{"model":"m","messages":[{"role":"user","content":"x"}]}`), SubmittedAt: now}
	m, err := lane.NewRequest("/gateway/g1", job, "_INBOX.r")
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != events.SubjectJobInteractive || m.Reply != "_INBOX.r" || m.Header.Get("Content-Type") != events.ContentType {
		t.Errorf("msg = %+v", m)
	}
	env, err := events.Decode(m.Data)
	if err != nil || env.ID != "j1" || env.Source != "/gateway/g1" {
		t.Errorf("decoded %+v, %v", env, err)
	}
	if _, err := lane.NewRequest("/g", job, ""); err == nil {
		t.Error("a request without a reply inbox was built")
	}
	job.ID = ""
	if _, err := lane.NewRequest("/g", job, "_INBOX.r"); err == nil {
		t.Error("an invalid job was encoded")
	}
}

func TestQueuedRecord(t *testing.T) {
	now := time.Now().UTC()
	job := &events.JobSubmitted{ID: "j1", Metadata: map[string]string{"k": "v"}, CallbackURL: "https://x/cb", MaxAttempts: 2, SubmittedAt: now}
	got := lane.QueuedRecord(job, "m", now)
	want := events.JobRecord{ID: "j1", Status: events.JobQueued, Lane: events.LaneDurable, Priority: events.PriorityNormal, Model: "m",
		Metadata: job.Metadata, CallbackURL: job.CallbackURL, MaxAttempts: 2, SubmittedAt: now, UpdatedAt: now}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
