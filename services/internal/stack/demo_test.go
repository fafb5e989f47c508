package stack_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestDevOutageAndRecovery is the demo of issue 3: with a mock endpoint taken
// down and brought back in switchboard dev, the status changes show its
// breaker closed -> open -> half_open -> closed, each with its cause, and
// the breaker opens within one probe interval of the first failing probe.
func TestDevOutageAndRecovery(t *testing.T) {
	st, url := startDev(t, func(c *config.Config) {
		c.Breaker.RecoveryTimeout = 2 * time.Second // the demo's 10 s, shortened
	})
	interval := st.Config().Endpoint("fast").CheckInterval
	nc := natstest.Connect(t, url)
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Wait until fast is healthy and closed before taking it down.
	kv, err := js.KeyValue(ctx, events.BucketEndpoints)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, "fast healthy", func() bool {
		e, err := kv.Get(ctx, "fast")
		return err == nil && strings.Contains(string(e.Value()), `"health":"healthy"`)
	})

	// Follow fast's status changes and probe results from now on.
	status := follow(t, ctx, js, events.StreamStatus, events.StatusSubject("fast"))
	probes := follow(t, ctx, js, events.StreamHealth, events.ProbeSubject("fast"))

	fast := st.Mocks[0]
	if fast.Name != "fast" {
		t.Fatalf("first mock is %s", fast.Name)
	}
	fast.Server.SetFaults(mock.Faults{Down: true, OutageMode: mock.OutageStatus})
	var firstFail time.Time
	var opened *events.StatusChanged
	var trail []string
	for opened == nil {
		select {
		case env := <-probes:
			p := env.Data.(*events.ProbeResult)
			if p.Outcome == events.ProbeFail && firstFail.IsZero() {
				firstFail = p.StartedAt
			}
		case env := <-status:
			c := env.Data.(*events.StatusChanged)
			trail = append(trail, describe(c))
			if c.Breaker != nil && c.Breaker.To == string(events.BreakerOpen) {
				opened = c
			}
		case <-ctx.Done():
			t.Fatalf("no open: %v", trail)
		}
	}
	if c := opened.Cause; c.Kind != events.CauseProbe || c.ErrorClass != events.ClassHTTP5xx || c.EventID == "" {
		t.Errorf("open cause = %+v, want a failing probe with class http_5xx", c)
	}
	if d := opened.At.Sub(firstFail); firstFail.IsZero() || d > interval {
		t.Errorf("breaker opened %s after the first failing probe, want within one probe interval (%s)", d, interval)
	} else {
		t.Logf("breaker opened %s after the first failing probe (interval %s)", d.Round(time.Millisecond), interval)
	}

	fast.Server.SetFaults(mock.Faults{})
	want := []string{string(events.BreakerHalfOpen), string(events.BreakerClosed)}
	for len(want) > 0 {
		select {
		case env := <-status:
			c := env.Data.(*events.StatusChanged)
			trail = append(trail, describe(c))
			if c.Breaker == nil {
				continue
			}
			if c.Breaker.To != want[0] {
				t.Fatalf("breaker went %s -> %s, want -> %s; changes: %v", c.Breaker.From, c.Breaker.To, want[0], trail)
			}
			switch want[0] {
			case string(events.BreakerHalfOpen):
				if c.Cause.Kind != events.CauseTimer {
					t.Errorf("half_open cause = %+v, want the recovery timer", c.Cause)
				}
			case string(events.BreakerClosed):
				if c.Cause.Kind != events.CauseProbe && c.Cause.Kind != events.CauseOutcome {
					t.Errorf("closed cause = %+v, want a successful probe or call", c.Cause)
				}
			}
			want = want[1:]
		case <-ctx.Done():
			t.Fatalf("no recovery; changes: %v", trail)
		}
	}
	t.Logf("changes: %v", trail)
}

func describe(c *events.StatusChanged) string {
	var parts []string
	if c.Breaker != nil {
		parts = append(parts, "breaker "+c.Breaker.From+"->"+c.Breaker.To)
	}
	if c.Health != nil {
		parts = append(parts, "health "+c.Health.From+"->"+c.Health.To)
	}
	return fmt.Sprintf("%s (%s: %s)", strings.Join(parts, ", "), c.Cause.Kind, c.Cause.Reason)
}

// follow delivers the events on subject stored in stream from now on.
func follow(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, subject string) <-chan *events.Envelope {
	t.Helper()
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan *events.Envelope, 1024)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		env, err := events.Decode(m.Data())
		if err != nil {
			t.Errorf("undecodable event on %s: %v", m.Subject(), err)
			return
		}
		select {
		case out <- env:
		default:
			t.Errorf("follower of %s overflowed", subject)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return out
}
