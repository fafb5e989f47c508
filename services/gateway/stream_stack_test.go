package gateway

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestBrokenStreamEndsOnAnEventBoundary: an upstream stream cut off in the
// middle of an event reaches the client, through a real worker, as valid
// server-sent events: whole events only, each with JSON data, the last one
// the stream_broken error, and no [DONE].
func TestBrokenStreamEndsOnAnEventBoundary(t *testing.T) {
	st := startStack(t, false)
	st.mock.SetFaults(mock.Faults{TruncateRate: 1})
	r := st.do(t, "POST", "/v1/chat/completions", "", chatBody("mock-small", "a stream that breaks", true))
	if r.status != http.StatusOK || r.header.Get("Content-Type") != lane.ContentTypeSSE {
		t.Fatalf("got %s %v, want a 200 event stream", r, r.header)
	}
	body := string(r.body)
	if !strings.HasSuffix(body, "\n\n") {
		t.Fatalf("the stream does not end with a whole event: %q", body)
	}
	evs := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	for i, ev := range evs {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") || !json.Valid([]byte(data)) {
			t.Errorf("event %d is not one data line of JSON: %q", i, ev)
		}
	}
	var last errorJSON
	if err := json.Unmarshal([]byte(strings.TrimPrefix(evs[len(evs)-1], "data: ")), &last); err != nil ||
		last.Error.Code == nil || *last.Error.Code != lane.CodeStreamBroken {
		t.Errorf("last event %q (%v), want the stream_broken error", evs[len(evs)-1], err)
	}
	if len(evs) < 2 || strings.Contains(body, "[DONE]") {
		t.Errorf("events %q: want at least one chunk before the error and no [DONE]", evs)
	}
}
