package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// TestServicesSurviveServerRestart: the gateway, a worker and the evaluator
// share one NATS server, which is shut down and started again on the same
// port and store. Afterwards, with no service restarted, the OpenAI API
// answers, a durable job submitted over HTTP finishes and its long-poll
// returns it, and a failing endpoint's breaker still opens.
func TestServicesSurviveServerRestart(t *testing.T) {
	srv, restart := natstest.Restartable(t)
	nc, js := connect(t, srv.ClientURL())
	natstest.Provision(t, js, 1)

	good := startMock(t, mock.Config{Name: "good", Models: []string{"m"}})
	flaky := startMock(t, mock.Config{Name: "flaky", Models: []string{"m"}})
	epGood, epFlaky := good.endpoint(), flaky.endpoint()
	epGood.Tier, epFlaky.Tier = 2, 1 // flaky is the primary
	cfg := &config.Config{Endpoints: []config.Endpoint{epGood, epFlaky}}
	cfg.Worker.Strategy = config.StrategyTier
	cfg.Worker.Instance, cfg.Gateway.Instance, cfg.Evaluator.Instance = "w1", "gw1", "ev1"
	cfg.Breaker.FailureThreshold = 2
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	runEvaluator(t, cfg, nc, js)
	runWorker(t, worker.Options{Config: cfg, NC: nc, JS: js})
	base := runGateway(t, cfg, nc, js)
	client := &http.Client{Timeout: 30 * time.Second}
	chat := func() (int, string) {
		resp, err := client.Post(base+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Switchboard-Endpoint") + " " + string(b)
	}
	natstest.WaitFor(t, 10*time.Second, "a chat completion before the restart", func() bool {
		code, _ := chat()
		return code == http.StatusOK
	})

	srv.Shutdown()
	restart()
	restarted := time.Now()

	natstest.WaitFor(t, 15*time.Second, "a chat completion after the restart", func() bool {
		code, _ := chat()
		return code == http.StatusOK
	})
	t.Logf("chat completions answered again %s after the restart", time.Since(restarted).Round(time.Millisecond))

	resp, err := client.Post(base+"/v1/jobs", "application/json",
		strings.NewReader(`{"request":{"model":"m","messages":[{"role":"user","content":"after"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	var rec events.JobRecord
	err = json.NewDecoder(resp.Body).Decode(&rec)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit after the restart: %d %v", resp.StatusCode, err)
	}
	get, err := client.Get(base + "/v1/jobs/" + rec.ID + "?wait=20s")
	if err != nil {
		t.Fatal(err)
	}
	err = json.NewDecoder(get.Body).Decode(&rec)
	get.Body.Close()
	if err != nil || rec.Status != events.JobSucceeded {
		t.Fatalf("job after the restart: %+v, %v", rec, err)
	}

	// The evaluator still turns outcomes into state: the primary fails and
	// its breaker opens (after failure_threshold 2 failed calls; a worker
	// avoids an endpoint for 5 s after a failure, so about 5 s), and calls
	// go to the other endpoint.
	flaky.SetFaults(mock.Faults{ErrorRate: 1, ErrorStatus: 503})
	natstest.WaitFor(t, 15*time.Second, "flaky's breaker open, seen by the worker", func() bool {
		code, body := chat()
		return code == http.StatusOK && strings.HasPrefix(body, "good ") && strings.Contains(body, `"content"`) &&
			breakerOpen(t, js, "flaky")
	})
	t.Logf("flaky's breaker open %s after the restart", time.Since(restarted).Round(time.Millisecond))
}

// breakerOpen reports whether ep's breaker is open in KV.
func breakerOpen(t *testing.T, js jetstream.JetStream, ep string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	store, err := endpointkv.Open(ctx, js)
	if err != nil {
		return false
	}
	st, err := store.Get(ctx, ep)
	return err == nil && st.Breaker == events.BreakerOpen
}
