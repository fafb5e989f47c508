package e2e

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// breakerWatch records, per worker, when that worker's endpoint view first
// held a record of endpoint with the breaker open.
type breakerWatch struct {
	endpoint string
	mu       sync.Mutex
	opened   map[string]time.Time // worker instance -> first time its view saw the breaker open
}

func (b *breakerWatch) hook(worker string) func(events.EndpointState) {
	return func(st events.EndpointState) {
		if st.Endpoint != b.endpoint || st.Breaker != events.BreakerOpen {
			return
		}
		now := time.Now() // after the view applied the record
		b.mu.Lock()
		if _, ok := b.opened[worker]; !ok {
			b.opened[worker] = now
		}
		b.mu.Unlock()
	}
}

// TestTenThousandJobsSurviveFailures is the system's main promise, on a
// 3-node cluster with three mock endpoints, two workers and the evaluator:
// halfway through 10,000 jobs, endpoint "b" fails every call and endpoint
// "c" answers half of its calls with 429. Every job must succeed, exactly
// once (one terminal record, one finished event), and no job may go to "b"
// after its breaker opened.
//
// "After its breaker opened" is checked exactly, per worker: an attempt is
// stamped (StartedAt) before the worker reads its endpoint view to choose,
// and the view's hook stamps the moment after it applied the first record
// of b with the breaker open. So an attempt on b stamped later than that
// moment was chosen by a worker that knew the breaker was open, which it
// may do only as a half-open trial under a cluster-wide lease (the
// evaluator moves the breaker to half-open after the recovery timeout).
// The check: every outcome on b that a worker started after its view saw
// the breaker open carries a trial lease. Attempts started before (calls
// already on their way, or chosen in the milliseconds the open record took
// to reach the worker) are the only non-trial calls b gets after the fault.
// The test also logs how long the open record took to reach each worker.
func TestTenThousandJobsSurviveFailures(t *testing.T) {
	n := 10000
	switch {
	case testing.Short():
		n = 1000
	case raceEnabled:
		n = 2000 // the race detector slows everything five- to tenfold
	}
	servers := natstest.RunCluster(t, 3)
	_, adminJS := connect(t, natstest.URLs(servers))
	natstest.Provision(t, adminJS, 3)

	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{LatencyMin: mock.Duration(time.Millisecond), LatencyMax: mock.Duration(5 * time.Millisecond)}})
	b := startMock(t, mock.Config{Name: "b", Models: []string{"m"}, Faults: mock.Faults{LatencyMin: mock.Duration(time.Millisecond), LatencyMax: mock.Duration(5 * time.Millisecond)}})
	c := startMock(t, mock.Config{Name: "c", Models: []string{"m"}, Faults: mock.Faults{LatencyMin: mock.Duration(time.Millisecond), LatencyMax: mock.Duration(5 * time.Millisecond)}})

	base := &config.Config{Endpoints: []config.Endpoint{a.endpoint(), b.endpoint(), c.endpoint()}}
	base.NATS.Replicas = 3
	base.Breaker.RecoveryTimeout = time.Second
	base.Breaker.MaxRecoveryTimeout = 4 * time.Second
	// Each worker stops calling b for 5 s once a call to it failed (local
	// suspicion), so b fails only the calls already on their way to it
	// then, and the jobs of the second part are done within those 5 s:
	// with the default threshold of 5 consecutive failures, whether the
	// breaker opened depended on how many happened to be in flight.
	base.Breaker.FailureThreshold = 2
	base.Evaluator.Instance = "ev1"
	base.Evaluator.TickInterval = 100 * time.Millisecond
	base.Worker.Concurrency = 32
	base.Worker.AckWait = 10 * time.Second
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}

	// The evaluator, on node 1.
	evNC, evJS := connect(t, servers[0].ClientURL())
	runEvaluator(t, base, evNC, evJS)
	// Two workers, on nodes 2 and 3.
	watch := &breakerWatch{endpoint: "b", opened: map[string]time.Time{}}
	for i, s := range servers[1:] {
		cfg := *base
		cfg.Worker.Instance = fmt.Sprintf("w%d", i+1)
		nc, js := connect(t, s.ClientURL())
		runWorker(t, worker.Options{Config: &cfg, NC: nc, JS: js, OnEndpointState: watch.hook(cfg.Worker.Instance)})
	}

	// Submit from node 1, in three parts: half of the jobs on healthy
	// endpoints; then, with b failing and c throttling, 30% while the
	// evaluator opens b's breaker; the last 20% once both workers saw it
	// open, so that the breaker check below is never vacuous (the
	// evaluator may lag behind the outcome events under load).
	subNC, subJS := connect(t, servers[0].ClientURL())
	done := watchDone(t, subNC)
	msgs, ids := newJobs(t, n, "e2e")
	first, second := n/2, n/2+3*n/10
	start := time.Now()
	submit(t, subJS, msgs[:first])
	natstest.WaitFor(t, 2*time.Minute, "half of the jobs finished", func() bool { return done.count() >= first })
	// Let the evaluator catch up with the outcome events (it may lag under
	// load), so that b's failures are judged within moments of the fault.
	halfAt := time.Now()
	natstest.WaitFor(t, 2*time.Minute, "the evaluator caught up", func() bool { return evaluatorLag(t, adminJS) == 0 })
	t.Logf("half of the jobs finished after %s; the evaluator caught up %s later",
		halfAt.Sub(start).Round(time.Millisecond), time.Since(halfAt).Round(time.Millisecond))
	faultAt := time.Now()
	b.SetFaults(mock.Faults{ErrorRate: 1, ErrorStatus: 500})
	c.SetFaults(mock.Faults{RateLimitRate: 0.5, RetryAfter: mock.Duration(time.Second),
		LatencyMin: mock.Duration(time.Millisecond), LatencyMax: mock.Duration(5 * time.Millisecond)})
	t.Logf("faults injected after %s with %d jobs finished", faultAt.Sub(start).Round(time.Millisecond), done.count())
	submit(t, subJS, msgs[first:second])
	natstest.WaitFor(t, 2*time.Minute, "both workers saw b's breaker open", func() bool {
		watch.mu.Lock()
		defer watch.mu.Unlock()
		return len(watch.opened) == 2
	})
	submit(t, subJS, msgs[second:])
	natstest.WaitFor(t, 3*time.Minute, "every job finished", func() bool { return done.count() >= n })
	elapsed := time.Since(start)
	t.Logf("%d jobs in %s (%.0f jobs/s)", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds())

	// Every job succeeded, with exactly one finished event that equals its
	// record in KV.
	fin, counts := results(t, adminJS)
	recs := records(t, adminJS)
	if len(fin) != n || len(recs) != n {
		t.Fatalf("%d finished jobs and %d records, want %d each", len(fin), len(recs), n)
	}
	bad := 0
	attempts := map[string]int{}
	for _, id := range ids {
		f, r := fin[id], recs[id]
		if counts[id] != 1 || f.Status != events.JobSucceeded || r.Status != events.JobSucceeded {
			bad++
			if bad <= 5 {
				t.Errorf("job %s: %d finished events, status %s (record %s), error %+v", id, counts[id], f.Status, r.Status, f.Error)
			}
		}
		if diff := cmp.Diff(f, r); diff != "" && bad < 5 {
			bad++
			t.Errorf("job %s: finished event and record differ (-event +record):\n%s", id, diff)
		}
		for _, at := range r.Attempts {
			attempts[at.Endpoint+"/"+outcomeOf(at)]++
		}
	}
	if bad > 0 {
		t.Fatalf("%d jobs are wrong", bad)
	}
	t.Logf("attempts by endpoint/outcome: %v", attempts)

	// No job went to b after its breaker opened (see the doc comment).
	watch.mu.Lock()
	opened := watch.opened
	watch.mu.Unlock()
	var trials, violations, late, after int
	for _, o := range outcomes(t, adminJS, "b") {
		seen, ok := opened[o.worker]
		if !ok {
			t.Fatalf("outcome from unknown worker %q", o.worker)
		}
		if !o.StartedAt.After(seen) {
			if o.StartedAt.After(faultAt) && o.Outcome == events.RequestError {
				late++ // failed before this worker knew: what opened the breaker
			}
			continue
		}
		after++
		if o.TrialLease == "" {
			violations++
			if violations <= 5 {
				t.Errorf("job %s attempt %d went to b at %s without a trial lease, after worker %s saw the breaker open at %s",
					o.JobID, o.Attempt, o.StartedAt.Format(time.RFC3339Nano), o.worker, seen.Format(time.RFC3339Nano))
			}
			continue
		}
		trials++
	}
	lags := []string{}
	for w, at := range opened {
		lags = append(lags, fmt.Sprintf("%s saw it %s after the fault", w, at.Sub(faultAt).Round(time.Millisecond)))
	}
	sort.Strings(lags)
	t.Logf("breaker of b: %v; %d failed calls to b before the workers knew, %d calls after, %d of them half-open trials", lags, late, after, trials)
	if violations > 0 {
		t.Errorf("%d calls went to b without a trial lease after its breaker opened", violations)
	}
}

// evaluatorLag is how many request outcomes the evaluator has not applied
// to the endpoint records yet.
func evaluatorLag(t *testing.T, js jetstream.JetStream) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamHealth)
	if err != nil {
		return -1
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(events.SubjectOutcomeAll))
	if err != nil {
		return -1
	}
	var published uint64
	for _, n := range info.State.Subjects {
		published += n
	}
	store, err := endpointkv.Open(ctx, js)
	if err != nil {
		return -1
	}
	sts, err := store.List(ctx)
	if err != nil {
		return -1
	}
	var applied uint64
	for _, st := range sts {
		applied += st.Requests
	}
	return int64(published) - int64(applied)
}

func outcomeOf(a events.Attempt) string {
	if a.Outcome == events.RequestSuccess {
		return "ok"
	}
	return string(a.ErrorClass)
}

// run runs a service until the test ends and checks it stops cleanly.
func run(t *testing.T, name string, fn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s", name)
		}
	})
}
