package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// startCLI runs a long-lived command (watch) until the test ends.
func startCLI(t *testing.T, args ...string) *natstest.Buffer {
	t.Helper()
	root := newRootCmd()
	out := &natstest.Buffer{}
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs(args)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%v: %v", args, err)
		}
	})
	return out
}

// evaluatorFixture is NATS, a config file naming two endpoints and a
// running evaluator.
func evaluatorFixture(t *testing.T) (cfgPath string, js jetstream.JetStream) {
	t.Helper()
	s, _, js := natstest.Start(t)
	cfgPath = filepath.Join(t.TempDir(), "switchboard.yaml")
	yaml := "nats:\n  url: " + s.ClientURL() + "\nendpoints:\n" +
		"  - name: flaky\n    base_url: http://127.0.0.1:9/v1\n    models: [m]\n" +
		"  - name: steady\n    base_url: http://127.0.0.1:9/v1\n    models: [m]\n" +
		"breaker:\n  failure_threshold: 2\nevaluator:\n  tick_interval: 20ms\n  instance: e1\n"
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := evaluator.New(evaluator.Options{Config: cfg, JS: js, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("evaluator: %v", err)
		}
	})
	return cfgPath, js
}

func publishProbe(t *testing.T, js jetstream.JetStream, id string, p *events.ProbeResult) {
	t.Helper()
	if _, err := (natsx.Publisher{JS: js, Source: "/prober/v1"}).Publish(context.Background(), id, p); err != nil {
		t.Fatal(err)
	}
}

func TestStatusWatchAndEndpointCommands(t *testing.T) {
	cfgPath, js := evaluatorFixture(t)
	natstest.WaitFor(t, 10*time.Second, "both records", func() bool {
		out, err := runCLI(t, "", "-c", cfgPath, "status", "--json")
		var recs []events.EndpointState
		return err == nil && json.Unmarshal([]byte(out), &recs) == nil && len(recs) == 2
	})
	watchOut := startCLI(t, "-c", cfgPath, "watch")
	jsonOut := startCLI(t, "-c", cfgPath, "watch", "--json", "flaky")
	// Let both watchers attach before the changes happen (they start at new).
	natstest.WaitFor(t, 10*time.Second, "the watchers' consumers", func() bool {
		s, err := js.Stream(context.Background(), events.StreamStatus)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Consumers >= 2
	})

	now := time.Now()
	for i := range 2 {
		publishProbe(t, js, "p"+string(rune('0'+i)), &events.ProbeResult{Endpoint: "flaky", Vantage: "v1", Kind: events.ProbeHealth,
			Outcome: events.ProbeFail, ErrorClass: events.ClassHTTP5xx, Error: "HTTP 503", StatusCode: 503, LatencyMS: 3,
			IntervalMS: 1000, StartedAt: now.Add(time.Duration(i) * time.Millisecond)})
	}
	wantLine := ` flaky breaker closed -> open (probe health fail http_5xx: "HTTP 503")`
	natstest.WaitFor(t, 10*time.Second, "the breaker change in watch", func() bool { return strings.Contains(watchOut.String(), wantLine) })

	out, err := runCLI(t, "", "-c", cfgPath, "status")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ENDPOINT") {
		t.Fatalf("status:\n%s", out)
	}
	for _, want := range []string{"flaky", "unknown", "open (", "http_5xx: HTTP 503"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("status line %q lacks %q", lines[1], want)
		}
	}
	if !strings.HasPrefix(lines[2], "steady") || !strings.Contains(lines[2], "closed") {
		t.Errorf("status line %q, want steady ... closed", lines[2])
	}

	out, err = runCLI(t, "", "-c", cfgPath, "endpoint", "drain", "steady", "--reason", "maintenance")
	if err != nil || !strings.Contains(out, "steady: override none -> drain") {
		t.Errorf("endpoint drain: %q %v", out, err)
	}
	out, err = runCLI(t, "", "-c", cfgPath, "endpoint", "drain", "steady", "--reason", "maintenance")
	if err != nil || !strings.Contains(out, "no change") {
		t.Errorf("second drain: %q %v", out, err)
	}
	natstest.WaitFor(t, 10*time.Second, "the drain in watch", func() bool {
		return strings.Contains(watchOut.String(), " steady override none -> drain (operator ")
	})
	out, _ = runCLI(t, "", "-c", cfgPath, "status")
	if !strings.Contains(out, "drained: maintenance") {
		t.Errorf("status after drain lacks the override:\n%s", out)
	}
	if _, err := runCLI(t, "", "-c", cfgPath, "endpoint", "undrain", "steady"); err != nil {
		t.Error(err)
	}
	out, err = runCLI(t, "", "-c", cfgPath, "endpoint", "reset", "flaky")
	if err != nil || !strings.Contains(out, "breaker open -> closed") {
		t.Errorf("reset: %q %v", out, err)
	}
	_, err = runCLI(t, "", "-c", cfgPath, "endpoint", "open", "nope")
	if err == nil || !strings.Contains(err.Error(), `unknown endpoint "nope": known endpoints are flaky, steady`) {
		t.Errorf("unknown endpoint: %v", err)
	}
	if _, err = runCLI(t, "", "-c", cfgPath, "endpoint", "open", "bad.name"); err == nil {
		t.Error("an invalid endpoint name was accepted")
	}

	// The JSON watcher saw only flaky's changes, as CloudEvents.
	natstest.WaitFor(t, 10*time.Second, "flaky's reset in watch --json", func() bool {
		return strings.Count(jsonOut.String(), "\n") >= 2
	})
	for _, line := range strings.Split(strings.TrimSpace(jsonOut.String()), "\n") {
		env, err := events.Decode([]byte(line))
		if err != nil {
			t.Fatalf("watch --json line %q: %v", line, err)
		}
		if c := env.Data.(*events.StatusChanged); c.Endpoint != "flaky" || env.ID != c.ID() {
			t.Errorf("watch --json printed %s (id %s)", c.Endpoint, env.ID)
		}
	}
}

func TestWatchSinceReplays(t *testing.T) {
	cfgPath, js := evaluatorFixture(t)
	natstest.WaitFor(t, 10*time.Second, "records", func() bool {
		_, err := runCLI(t, "", "-c", cfgPath, "endpoint", "drain", "flaky")
		return err == nil
	})
	_ = js
	out := startCLI(t, "-c", cfgPath, "watch", "--since", "1h")
	natstest.WaitFor(t, 10*time.Second, "the replayed drain", func() bool {
		return strings.Contains(out.String(), " flaky override none -> drain (operator ")
	})
}

func TestChangeLine(t *testing.T) {
	at := time.Date(2026, 1, 2, 12, 0, 1, 0, time.Local)
	until := at.Add(20 * time.Second)
	tests := []struct {
		name string
		c    events.StatusChanged
		want string
	}{
		{"probe", events.StatusChanged{Endpoint: "flaky", At: at,
			Breaker: &events.Transition{From: "closed", To: "open"}, Health: &events.Transition{From: "healthy", To: "unhealthy"},
			Cause: events.Cause{Kind: events.CauseProbe, ProbeKind: events.ProbeHealth, Outcome: "fail", ErrorClass: events.ClassHTTP5xx, Error: "HTTP 503"}},
			`12:00:01 flaky breaker closed -> open (probe health fail http_5xx: "HTTP 503") health healthy -> unhealthy`},
		{"timer", events.StatusChanged{Endpoint: "a", At: at, Breaker: &events.Transition{From: "open", To: "half_open"},
			Cause: events.Cause{Kind: events.CauseTimer, Reason: "recovery timeout 1m0s elapsed"}},
			`12:00:01 a breaker open -> half_open (timer: recovery timeout 1m0s elapsed)`},
		{"quota", events.StatusChanged{Endpoint: "b", At: at, Throttle: &events.ThrottleChange{To: &until},
			Cause: events.Cause{Kind: events.CauseQuota, Endpoint: "a"}},
			`12:00:01 b throttle none -> until 12:00:21 (429 on quota-group member a)`},
		{"operator", events.StatusChanged{Endpoint: "c", At: at, Override: &events.Transition{From: "none", To: "drain"},
			Cause: events.Cause{Kind: events.CauseOperator, Source: "/operator/alice", Reason: "operator: drain (upgrade)"}},
			`12:00:01 c override none -> drain (operator alice: drain (upgrade))`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := changeLine(&tc.c); got != tc.want {
				t.Errorf("changeLine =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
