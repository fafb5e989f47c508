package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

func TestAuth(t *testing.T) {
	e := startGateway(t, testConfig(t, "", true))
	for _, tc := range []struct {
		name, method, path, auth string
		status                   int
		code                     string
	}{
		{"no key", "GET", "/v1/models", "", 401, "missing_api_key"},
		{"wrong key", "GET", "/v1/models", "Bearer sk-wrong", 401, "invalid_api_key"},
		{"prefix of the key", "GET", "/v1/models", "Bearer " + testKey[:10], 401, "invalid_api_key"},
		{"not bearer", "GET", "/v1/models", "Basic " + testKey, 401, "invalid_api_key"},
		{"key", "GET", "/v1/models", "Bearer " + testKey, 200, ""},
		{"second key", "GET", "/v1/endpoints", "Bearer sk-other-key-42", 200, ""},
		{"lower-case scheme", "GET", "/v1/models", "bearer " + testKey, 200, ""},
		{"jobs need a key", "GET", "/v1/jobs/x", "", 401, "missing_api_key"},
		{"chat needs a key", "POST", "/v1/chat/completions", "", 401, "missing_api_key"},
		{"unknown /v1 route needs a key", "GET", "/v1/nothing", "", 401, "missing_api_key"},
		{"health is open", "GET", "/healthz", "", 200, ""},
		{"status page is open", "GET", "/", "", 200, ""},
		{"metrics are open", "GET", "/metrics", "", 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			r := e.do(t, tc.method, tc.path, "", nil, hdr...)
			if r.status != tc.status {
				t.Fatalf("got %s, want %d", r, tc.status)
			}
			if tc.code != "" {
				if d := apiErr(t, r); d.Code == nil || *d.Code != tc.code || d.Type != typeAuthentication {
					t.Errorf("error %+v, want code %s", d, tc.code)
				}
			}
		})
	}
	// The key name, never the key, reaches the metrics.
	m := e.do(t, "GET", "/metrics", "", nil)
	if !strings.Contains(string(m.body), `switchboard_gateway_client_requests_total{key="ci"} 2`) {
		t.Errorf("metrics lack the ci key's count:\n%s", grep(string(m.body), "client_requests"))
	}
	if !strings.Contains(string(m.body), `switchboard_gateway_requests_total{code="401",route="models"} 4`) {
		t.Errorf("metrics lack the refused requests:\n%s", grep(string(m.body), "requests_total"))
	}
	if strings.Contains(string(m.body), testKey) || strings.Contains(string(m.body), "sk-other") {
		t.Error("a key appears in the metrics")
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestModels(t *testing.T) {
	e := startGateway(t, testConfig(t, "", false))
	r := e.do(t, "GET", "/v1/models", "", nil)
	if r.status != 200 {
		t.Fatal(r)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object, OwnedBy string
		} `json:"data"`
	}
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
		if m.Object != "model" {
			t.Errorf("model %s: object %q", m.ID, m.Object)
		}
	}
	if diff := cmp.Diff([]string{"mock-large", "mock-small", "small"}, ids); diff != "" || list.Object != "list" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
}

func TestEndpoints(t *testing.T) {
	e := startGateway(t, testConfig(t, "http://127.0.0.1:9/v1", false))
	ctx := context.Background()
	store, err := endpointkv.Open(ctx, e.js)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	// alpha has a record, beta none, and "gone" is no longer configured.
	for _, st := range []events.EndpointState{
		{Endpoint: "alpha", Health: events.HealthDegraded, Breaker: events.BreakerClosed, Override: events.OverrideNone,
			LatencyEWMAMS: 812, ErrorRate: 0.25, UpdatedAt: now,
			LastError: &events.ErrorView{At: now, Class: events.ClassHTTP5xx, StatusCode: 502, Message: "bad gateway"}},
		{Endpoint: "gone", Health: events.HealthUnhealthy, Breaker: events.BreakerClosed, Override: events.OverrideDrain, UpdatedAt: now},
	} {
		b, _ := json.Marshal(st)
		if _, err := store.KV.Put(ctx, st.Endpoint, b); err != nil {
			t.Fatal(err)
		}
	}
	var list struct {
		Data []EndpointInfo `json:"data"`
	}
	natstest.WaitFor(t, 5*time.Second, "endpoint records in the list", func() bool {
		r := e.do(t, "GET", "/v1/endpoints", "", nil)
		list.Data = nil
		if err := json.Unmarshal(r.body, &list); err != nil {
			t.Fatal(err)
		}
		return len(list.Data) == 3 && list.Data[0].State != nil
	})
	got := list.Data
	if got[0].Name != "alpha" || got[1].Name != "beta" || got[2].Name != "gone" {
		t.Fatalf("order: %+v", got)
	}
	a := got[0]
	if a.State.Health != events.HealthDegraded || a.State.LatencyEWMAMS != 812 || a.State.Revision == 0 ||
		!a.HasAPIKey || a.BaseURL != "http://127.0.0.1:9/v1" || a.CheckInterval != "30s" {
		t.Errorf("alpha: %+v (state %+v)", a, a.State)
	}
	if got[1].State != nil || got[1].HasAPIKey || got[1].Tier != 2 {
		t.Errorf("beta: %+v", got[1])
	}
	if got[2].Configured || got[2].State.Override != events.OverrideDrain {
		t.Errorf("gone: %+v", got[2])
	}
	r := e.do(t, "GET", "/v1/endpoints", "", nil)
	if strings.Contains(string(r.body), "sk-upstream-secret") {
		t.Errorf("the endpoint list leaks a secret: %s", r.body)
	}

	// The status page shows the same.
	page := e.do(t, "GET", "/", "", nil)
	for _, want := range []string{"alpha", "beta", "gone", "degraded", "812 ms", "25.0%", "bad gateway", "EventSource"} {
		if !strings.Contains(string(page.body), want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if ct := page.header.Get("Content-Type"); ct != "text/html; charset=utf-8" || page.status != http.StatusOK {
		t.Errorf("status page: %d %s", page.status, ct)
	}
	if strings.Contains(string(page.body), "sk-upstream-secret") {
		t.Error("the status page leaks a key")
	}
}
