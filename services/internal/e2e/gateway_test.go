package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// TestGatewayAndWorker runs the real gateway in front of a real worker: the
// OpenAI-compatible API (plain and streamed, with a failover) and the
// durable job API, through HTTP.
func TestGatewayAndWorker(t *testing.T) {
	srv := natstest.RunServer(t)
	nc, js := connect(t, srv.ClientURL())
	natstest.Provision(t, js, 1)
	bad := startMock(t, mock.Config{Name: "bad", Models: []string{"m"}, Faults: mock.Faults{ErrorRate: 1, ErrorStatus: 503}})
	good := startMock(t, mock.Config{Name: "good", Models: []string{"m"}})
	epBad, epGood := bad.endpoint(), good.endpoint()
	epBad.Tier, epGood.Tier = 1, 2
	cfg := &config.Config{Endpoints: []config.Endpoint{epBad, epGood}}
	cfg.Worker.Instance = "gw-w1"
	cfg.Worker.Strategy = config.StrategyTier
	cfg.Gateway.Instance = "gw1"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}

	runWorker(t, worker.Options{Config: cfg, NC: nc, JS: js})
	base := runGateway(t, cfg, nc, js)
	client := &http.Client{Timeout: 30 * time.Second}
	post := func(path, body string) *http.Response {
		t.Helper()
		resp, err := client.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}

	t.Run("chat completion fails over", func(t *testing.T) {
		resp := post("/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), mock.ReplyContent("good", "hi")) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		if got := resp.Header.Get("X-Switchboard-Endpoint"); got != "good" {
			t.Errorf("endpoint header %q, want good", got)
		}
		if got := resp.Header.Get("X-Switchboard-Attempts"); got != "2" {
			t.Errorf("attempts header %q, want 2", got)
		}
	})
	t.Run("streamed chat completion", func(t *testing.T) {
		resp := post("/v1/chat/completions", `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var content strings.Builder
		done := false
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			d, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			if d == "[DONE]" {
				done = true
				break
			}
			var c struct {
				Choices []struct{ Delta struct{ Content string } } `json:"choices"`
			}
			if err := json.Unmarshal([]byte(d), &c); err != nil {
				t.Fatalf("event %q: %v", d, err)
			}
			if len(c.Choices) > 0 {
				content.WriteString(c.Choices[0].Delta.Content)
			}
		}
		if !done || content.String() != mock.ReplyContent("good", "hi") {
			t.Errorf("stream content %q (done %v)", content.String(), done)
		}
	})
	t.Run("durable job", func(t *testing.T) {
		resp := post("/v1/jobs", `{"request":{"model":"m","messages":[{"role":"user","content":"later"}]},"priority":"high"}`)
		var rec events.JobRecord
		if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("submit: %d %+v %v", resp.StatusCode, rec, err)
		}
		get, err := client.Get(base + "/v1/jobs/" + rec.ID + "?wait=20s")
		if err != nil {
			t.Fatal(err)
		}
		defer get.Body.Close()
		var fin events.JobRecord
		if err := json.NewDecoder(get.Body).Decode(&fin); err != nil {
			t.Fatal(err)
		}
		// "bad" just failed in this worker, so it is suspect: the job goes
		// to "good" at once.
		if fin.Status != events.JobSucceeded || fin.Endpoint != "good" || len(fin.Attempts) != 1 || fin.Priority != events.PriorityHigh {
			t.Errorf("record = %+v, want succeeded on good at once, high priority", fin)
		}
	})
}
