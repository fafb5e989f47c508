package evaluator_test

import (
	"context"

	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

// TestPinnedReplicaFailover: in pinned mode one replica applies the events
// while the other stands by; when the pinned one stops, the other takes
// over within the pinned TTL and nothing is lost.
func TestPinnedReplicaFailover(t *testing.T) {
	srv, _, js := natstest.Start(t)
	cfg := testConfig(t, nil, "ep")
	if cfg.Evaluator.Consume != config.ConsumePinned {
		t.Fatalf("default evaluator.consume = %q, want pinned", cfg.Evaluator.Consume)
	}
	stops := map[string]func(){}
	for _, name := range []string{"a", "b"} {
		c := *cfg
		c.Evaluator.Instance = name
		// Each replica on its own connection, as separate processes would be.
		rjs := natstest.JetStream(t, natstest.Connect(t, srv.ClientURL()))
		svc, err := evaluator.New(evaluator.Options{Config: &c, JS: rjs, Log: discard()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- svc.Run(ctx) }()
		stopped := false
		stop := func() {
			if stopped {
				return
			}
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("replica %s: %v", name, err)
			}
		}
		stops[name] = stop
		t.Cleanup(stop)
	}

	// Throttle changes from a stream of 429s, one second apart, each a
	// status change that names the replica that applied it.
	base := time.Now()
	next := 0
	throttle := func() {
		next++
		o := outcomeEvent("ep", events.ClassHTTP429, base.Add(time.Duration(next)*time.Millisecond))
		until := base.Add(time.Duration(next) * time.Minute)
		o.ThrottledUntil = &until
		publish(t, js, o)
	}
	sources := func() []string {
		var out []string
		for _, m := range statusEvents(t, js) {
			if m.Change.Throttle != nil {
				out = append(out, m.Source)
			}
		}
		return out
	}
	for range 5 {
		throttle()
	}
	natstest.WaitFor(t, 30*time.Second, "5 throttle changes", func() bool { return len(sources()) == 5 })
	first := sources()
	for _, s := range first {
		if s != first[0] {
			t.Fatalf("changes applied by %v: in pinned mode one replica applies them all", first)
		}
	}
	pinned := first[0][len("/evaluator/"):]
	stops[pinned]()

	for range 5 {
		throttle()
	}
	start := time.Now()
	natstest.WaitFor(t, 3*evaluator.PinnedTTL+evaluator.AckWait, "5 more throttle changes after the pinned replica stopped", func() bool {
		return len(sources()) == 10
	})
	t.Logf("the standby replica took over within %s (pinned TTL %s)", time.Since(start).Round(time.Millisecond), evaluator.PinnedTTL)
	for _, s := range sources()[5:] {
		if s == "/evaluator/"+pinned {
			t.Errorf("change applied by the stopped replica %s", pinned)
		}
	}
	rec := record(t, js, "ep")
	if want := base.Add(10 * time.Minute); rec.ThrottledUntil == nil || !rec.ThrottledUntil.Equal(want) {
		t.Errorf("throttled_until = %v, want %v: an event was lost", rec.ThrottledUntil, want)
	}

}
