package evaluator_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// streamEpoch is the start of the generated streams' event time: in the
// past, so that the wall clock never clamps an event's time.
var streamEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// genEvent is one generated health event.
type genEvent struct {
	ep      string
	id      string
	payload events.Payload
}

// generate makes perEndpoint events for each of n endpoints (ep00, ep01,
// ...) and interleaves them in a shuffled order that keeps each endpoint's
// own sequence. Each endpoint goes through phases (healthy, failing, flaky,
// slow) so that every rule fires: health flips, breaker opens, half-opens
// on event time, closes and re-opens; 429s, 401s, caller errors and
// inconclusive probes are sprinkled in.
func generate(n, perEndpoint int, seed uint64) []genEvent {
	return generateFrom(n, perEndpoint, seed, streamEpoch, "")
}

// generateFrom is generate with event times from epoch and ids prefixed.
func generateFrom(n, perEndpoint int, seed uint64, epoch time.Time, prefix string) []genEvent {
	per := make([][]genEvent, n)
	for k := range n {
		ep := fmt.Sprintf("ep%02d", k)
		r := rand.New(rand.NewPCG(seed, uint64(k)))
		t := epoch
		var mode string
		left := 0
		for i := range perEndpoint {
			t = t.Add(time.Duration(50+r.IntN(400)) * time.Millisecond)
			if left == 0 {
				mode = []string{"good", "bad", "flaky", "slow"}[r.IntN(4)]
				left = 20 + r.IntN(60)
			}
			left--
			failP := map[string]float64{"good": 0.03, "bad": 0.9, "flaky": 0.5, "slow": 0.1}[mode]
			latency := float64(20 + r.IntN(400))
			if mode == "slow" {
				latency = float64(2500 + r.IntN(3500))
			}
			failed := r.Float64() < failP
			special := r.IntN(100)
			id := fmt.Sprintf("%s%s-%04d", prefix, ep, i)
			var p events.Payload
			if r.IntN(10) < 4 {
				pr := &events.ProbeResult{Endpoint: ep, Vantage: fmt.Sprintf("v%d", 1+r.IntN(3)), Kind: events.ProbeModels,
					Outcome: events.ProbePass, LatencyMS: latency, IntervalMS: 1000, StartedAt: t.Add(-time.Duration(latency) * time.Millisecond)}
				switch {
				case special < 2:
					u := t.Add(time.Duration(1+r.IntN(4)) * time.Second)
					pr.Outcome, pr.ErrorClass, pr.ThrottledUntil, pr.StatusCode = events.ProbeInconclusive, events.ClassHTTP429, &u, 429
				case special < 6:
					pr.Outcome, pr.ErrorClass = events.ProbeInconclusive, events.ClassTimeout
				case failed:
					pr.Outcome = events.ProbeFail
					pr.ErrorClass = []events.ErrorClass{events.ClassHTTP5xx, events.ClassConnect, events.ClassTimeout, events.ClassModelMissing}[r.IntN(4)]
					pr.Error = "probe failed: " + string(pr.ErrorClass)
				}
				p = pr
			} else {
				o := &events.RequestOutcome{Endpoint: ep, Model: "m", Lane: events.LaneDurable, Attempt: 1 + r.IntN(3),
					Outcome: events.RequestSuccess, LatencyMS: latency, TTFTMS: latency / 3, StartedAt: t.Add(-time.Duration(latency) * time.Millisecond)}
				class := events.ErrorClass("")
				switch {
				case special < 2:
					class = events.ClassHTTP429
					u := t.Add(time.Duration(1+r.IntN(4)) * time.Second)
					o.ThrottledUntil = &u
				case special == 2:
					class = events.ClassAuth
				case special < 6:
					class = events.ClassClientError
				case special < 8:
					class = events.ClassCallerCanceled
				case failed:
					class = []events.ErrorClass{events.ClassHTTP5xx, events.ClassTimeout, events.ClassStreamBroken, events.ClassBadBody}[r.IntN(4)]
				}
				if class != "" {
					o.Outcome, o.ErrorClass, o.Error, o.TTFTMS = events.RequestError, class, "call failed: "+string(class), 0
				}
				p = o
			}
			per[k] = append(per[k], genEvent{ep: ep, id: id, payload: p})
		}
	}
	// Interleave: pick a random endpoint with events left, take its next.
	r := rand.New(rand.NewPCG(seed, 0xfeed))
	var out []genEvent
	next := make([]int, n)
	for len(out) < n*perEndpoint {
		k := r.IntN(n)
		for next[k] == perEndpoint {
			k = (k + 1) % n
		}
		out = append(out, per[k][next[k]])
		next[k]++
	}
	return out
}

// streamConfig is the config of the stream tests: thresholds small enough
// that the generated phases make every rule fire, and a timer that never
// runs during the test, so that the state is a function of the events
// alone.
func streamConfig(t testing.TB, n int) *config.Config {
	var names []string
	for k := range n {
		names = append(names, fmt.Sprintf("ep%02d", k))
	}
	return testConfig(t, func(c *config.Config) {
		c.Health.CheckInterval = time.Second
		c.Health.Timeout = time.Second
		c.Breaker.RecoveryTimeout = 2 * time.Second
		c.Breaker.MaxRecoveryTimeout = 16 * time.Second
		c.Breaker.ErrorRateWindow = 10 * time.Second
		c.Breaker.MinRequests = 8
		c.Evaluator.TickInterval = time.Hour
		// Every replica takes events: the case where compare-and-set and the
		// ordering by applied_seq carry the correctness.
		c.Evaluator.Consume = config.ConsumeShared
	}, names...)
}

// seedRecords makes every endpoint's initial record at streamEpoch, so that
// two runs start from the same records.
func seedRecords(t testing.TB, js jetstream.JetStream, cfg *config.Config) {
	t.Helper()
	s := store(t, js)
	for _, ep := range cfg.Endpoints {
		if _, err := s.Put(context.Background(), state.New(ep.Name, streamEpoch), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// published says where the events of publishAll landed.
type published struct {
	last map[string]uint64    // endpoint -> its last event's sequence
	at   map[uint64]time.Time // sequence -> when its publish started
	ep   map[uint64]string    // sequence -> endpoint
}

// publishAll publishes the events in order (asynchronously, one connection,
// so the stream keeps the order).
func publishAll(t testing.TB, js jetstream.JetStream, evs []genEvent) published {
	return publishPaced(t, js, evs, 0)
}

// publishPaced is publishAll with one publish every interval (0: as fast as
// possible).
func publishPaced(t testing.TB, js jetstream.JetStream, evs []genEvent, interval time.Duration) published {
	t.Helper()
	type pending struct {
		ep string
		at time.Time
		f  jetstream.PubAckFuture
	}
	var futs []pending
	var tick <-chan time.Time
	if interval > 0 {
		tk := time.NewTicker(interval)
		defer tk.Stop()
		tick = tk.C
	}
	for _, e := range evs {
		if tick != nil {
			<-tick
		}
		source := "/worker/w1"
		if _, ok := e.payload.(*events.ProbeResult); ok {
			source = "/prober/v1"
		}
		m, err := natsx.EncodeMsg(source, e.id, e.payload)
		if err != nil {
			t.Fatal(err)
		}
		if len(futs)%256 == 255 { // keep the async window bounded
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(60 * time.Second):
				t.Fatal("publishes not acknowledged within 60s")
			}
		}
		at := time.Now()
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, pending{e.ep, at, f})
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("publishes not acknowledged within 60s")
	}
	out := published{last: map[string]uint64{}, at: map[uint64]time.Time{}, ep: map[uint64]string{}}
	for _, p := range futs {
		select {
		case ack := <-p.f.Ok():
			out.last[p.ep] = max(out.last[p.ep], ack.Sequence)
			out.at[ack.Sequence] = p.at
			out.ep[ack.Sequence] = p.ep
		case err := <-p.f.Err():
			t.Fatalf("publish: %v", err)
		}
	}
	return out
}

// waitAllApplied waits until every endpoint applied its last event and has
// no pending status change, following the bucket with a watcher (polling it
// would load the servers under test).
func waitAllApplied(t testing.TB, js jetstream.JetStream, last map[string]uint64, timeout time.Duration) map[string]events.EndpointState {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), events.BucketEndpoints)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	got := map[string]events.EndpointState{}
	done := func() bool {
		for ep, seq := range last {
			if st, ok := got[ep]; !ok || st.AppliedSeq < seq || len(st.Pending) > 0 {
				return false
			}
		}
		return true
	}
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				t.Fatal("endpoint watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			st, err := endpointkv.Decode(e)
			if err != nil {
				t.Fatal(err)
			}
			got[st.Endpoint] = st
			if done() {
				return got
			}
		case <-deadline:
			behind := 0
			for ep, seq := range last {
				if got[ep].AppliedSeq < seq {
					behind++
				}
			}
			t.Fatalf("after %s, %d endpoints have not applied all their events", timeout, behind)
		}
	}
}

// runReplicas starts n evaluator replicas, replica i on connection i, and
// returns a function that stops them all.
func runReplicas(t testing.TB, jss []jetstream.JetStream, cfg *config.Config) func() {
	t.Helper()
	var stops []func()
	for i, js := range jss {
		c := *cfg
		c.Evaluator.Instance = fmt.Sprintf("r%d", i+1)
		svc, err := evaluator.New(evaluator.Options{Config: &c, JS: js, Log: discard()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- svc.Run(ctx) }()
		stops = append(stops, func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("replica %d: %v", i+1, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("replica %d did not stop within 20s", i+1)
			}
		})
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, s := range stops {
			s()
		}
	}
	t.Cleanup(stop)
	return stop
}

// sortedEndpoints returns the keys of m in order.
func sortedEndpoints[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
