package mock

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func decodeFaults(t *testing.T, r response) Faults {
	t.Helper()
	var f Faults
	if err := json.Unmarshal(r.body, &f); err != nil {
		t.Fatalf("decode faults %s: %v", r, err)
	}
	return f
}

func TestAdminFaults(t *testing.T) {
	initial := Faults{Latency: Duration(10 * time.Millisecond), ErrorStatus: 503}
	tests := []struct {
		name       string
		req        request
		wantStatus int
		wantFaults Faults // the server's faults afterwards
		wantErrIn  string // substring of the error message, for 400s
	}{
		{"get", request{path: "/_mock/faults"}, 200, initial, ""},
		{"put replaces", request{method: http.MethodPut, path: "/_mock/faults", body: `{"error_rate":1,"outages":[{"every":"60s","for":"10s"}],"outage_mode":"reset"}`}, 200,
			Faults{ErrorRate: 1, Outages: []Outage{{Every: Duration(time.Minute), For: Duration(10 * time.Second)}}, OutageMode: OutageReset}, ""},
		{"put empty object clears", request{method: http.MethodPut, path: "/_mock/faults", body: `{}`}, 200, Faults{}, ""},
		{"patch merges", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"error_rate":0.25,"apply_to_health":false}`}, 200,
			Faults{Latency: Duration(10 * time.Millisecond), ErrorStatus: 503, ErrorRate: 0.25, ApplyToHealth: ptr(false)}, ""},
		{"patch zeroes a field", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"latency":"0s"}`}, 200, Faults{ErrorStatus: 503}, ""},
		{"bad json", request{method: http.MethodPut, path: "/_mock/faults", body: `{"error_rate":`}, 400, initial, "bad faults JSON"},
		{"empty body", request{method: http.MethodPut, path: "/_mock/faults", body: ``}, 400, initial, "body is empty"},
		{"trailing data", request{method: http.MethodPut, path: "/_mock/faults", body: `{} {}`}, 400, initial, "trailing data"},
		{"unknown field", request{method: http.MethodPut, path: "/_mock/faults", body: `{"eror_rate":1}`}, 400, initial, `unknown field "eror_rate"`},
		{"rate above 1", request{method: http.MethodPut, path: "/_mock/faults", body: `{"error_rate":1.5}`}, 400, initial, "error_rate 1.5 is outside 0..1"},
		{"patch bad value", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"hang_rate":-0.1,"error_status":200}`}, 400, initial, "hang_rate -0.1 is outside 0..1; error_status 200"},
		{"bad duration", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"latency":"soon"}`}, 400, initial, `duration "soon"`},
		{"duration as number", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"latency":5}`}, 400, initial, "duration must be a string"},
		{"bad outage", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"outages":[{"every":"10s","for":"10s"}]}`}, 400, initial, "must be shorter than every"},
		{"down", request{method: http.MethodPost, path: "/_mock/down"}, 200, Faults{Latency: Duration(10 * time.Millisecond), ErrorStatus: 503, Down: true}, ""},
		{"up", request{method: http.MethodPost, path: "/_mock/up"}, 200, initial, ""},
		{"wrong method", request{method: http.MethodDelete, path: "/_mock/faults"}, 405, initial, "allowed: GET, PUT, PATCH"},
		{"get down", request{path: "/_mock/down"}, 405, initial, "allowed: POST"},
		{"unknown admin path", request{path: "/_mock/nope"}, 404, initial, "/_mock/faults"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ts := newTestServer(t, Config{Faults: initial})
			got := do(t, ts, tt.req)
			if got.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", got.status, tt.wantStatus, got)
			}
			if got.status == 200 {
				if diff := cmp.Diff(tt.wantFaults, decodeFaults(t, got)); diff != "" {
					t.Errorf("answered faults (-want +got):\n%s", diff)
				}
			} else if e := decodeError(t, got); !strings.Contains(e.Error.Message, tt.wantErrIn) {
				t.Errorf("error message %q, want it to contain %q", e.Error.Message, tt.wantErrIn)
			}
			if diff := cmp.Diff(tt.wantFaults, s.Faults()); diff != "" {
				t.Errorf("server faults (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantFaults, decodeFaults(t, do(t, ts, request{path: "/_mock/faults"}))); diff != "" {
				t.Errorf("GET /_mock/faults (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAdminChangesBehaviour(t *testing.T) {
	_, ts := newTestServer(t, Config{})
	health := request{path: "/health"}
	steps := []struct {
		name       string
		admin      request
		wantHealth int
	}{
		{"initially healthy", request{path: "/_mock/faults"}, 200},
		{"down", request{method: http.MethodPost, path: "/_mock/down"}, 503},
		{"up", request{method: http.MethodPost, path: "/_mock/up"}, 200},
		{"errors", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"error_rate":1,"error_status":502}`}, 502},
		{"errors spare health", request{method: http.MethodPatch, path: "/_mock/faults", body: `{"apply_to_health":false}`}, 200},
		{"cleared", request{method: http.MethodPut, path: "/_mock/faults", body: `{"down":true,"outage_mode":"status"}`}, 503},
	}
	for _, st := range steps {
		if got := do(t, ts, st.admin); got.status != 200 {
			t.Fatalf("%s: admin status %d: %s", st.name, got.status, got)
		}
		wantStatus(st.wantHealth)(t, do(t, ts, health))
	}
}

func TestAdminIsNotFaulted(t *testing.T) {
	_, ts := newTestServer(t, Config{Faults: Faults{Down: true, OutageMode: OutageReset, HangRate: 1, ErrorRate: 1}})
	wantStatus(200)(t, do(t, ts, request{path: "/_mock/stats"}))
	wantStatus(200)(t, do(t, ts, request{method: http.MethodPost, path: "/_mock/up"}))
}

func TestStats(t *testing.T) {
	s, ts := newTestServer(t, Config{Faults: Faults{RateLimitRate: 1, ApplyToHealth: ptr(false)}})
	do(t, ts, request{path: "/health"})
	do(t, ts, request{path: "/v1/models"})
	do(t, ts, chatRequestTo("/v1/chat/completions", "mock-small", "x"))
	do(t, ts, request{path: "/nope"})
	got := do(t, ts, request{path: "/_mock/stats"})
	var stats Stats
	if err := json.Unmarshal(got.body, &stats); err != nil {
		t.Fatalf("decode %s: %v", got, err)
	}
	want := Stats{
		Requests: 5,
		ByRoute:  map[string]int64{RouteHealth: 1, RouteModels: 1, RouteChat: 1, RouteUnknown: 1, RouteAdmin: 1},
		ByStatus: map[int]int64{200: 1, 429: 2, 404: 1},
		Faults:   map[string]int64{FaultRateLimit: 2},
	}
	if diff := cmp.Diff(want, stats); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	// The admin answer was written after the snapshot: Stats now counts it.
	want.ByStatus[200]++
	if diff := cmp.Diff(want, s.Stats()); diff != "" {
		t.Errorf("Stats() (-want +got):\n%s", diff)
	}
}

func TestStatsConcurrent(t *testing.T) {
	s, ts := newTestServer(t, Config{Faults: Faults{ErrorRate: 0.5}})
	const workers, each = 8, 25
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for range each {
				do(t, ts, chatRequestTo("/v1/chat/completions", "mock-small", "x"))
				_ = s.Stats()
			}
		}()
	}
	for range workers {
		<-done
	}
	st := s.Stats()
	if st.Requests != workers*each || st.ByStatus[200]+st.ByStatus[500] != workers*each || st.Faults[FaultError] != st.ByStatus[500] {
		t.Errorf("stats = %+v, want %d requests split between 200 and 500", st, workers*each)
	}
}
