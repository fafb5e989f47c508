package worker

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/state"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestQueuedJobsDoNotExpireWhileSlotsAreBusy: with every slot held by a
// call slower than AckWait, the jobs behind them wait in the stream, not in
// the worker, so none expires: each runs once, on its first delivery, and
// none is dead-lettered for "a worker crashed on it" with max_deliver 2.
func TestQueuedJobsDoNotExpireWhileSlotsAreBusy(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(1500 * time.Millisecond)}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = 4
	cfg.Worker.AckWait = time.Second
	cfg.Worker.MaxDeliver = 2
	cfg.Worker.RequestTimeout = 10 * time.Second
	e := newEnv(t, cfg)
	var jobs []*events.JobSubmitted
	for range 12 {
		j := newJob(t)
		e.submit(j)
		jobs = append(jobs, j)
	}
	e.startWorker(Options{})
	for _, j := range jobs {
		rec := e.finished(j.ID, 30*time.Second)
		if rec.Status != events.JobSucceeded || len(rec.Attempts) != 1 || rec.Deliveries != 1 || rec.DeadLetter != "" {
			t.Errorf("job %s: status %s, %d attempts, delivery %d, dead letter %q; want succeeded on its first delivery with 1 attempt",
				j.ID, rec.Status, len(rec.Attempts), rec.Deliveries, rec.DeadLetter)
		}
	}
	if got := a.chatCalls(); got != int64(len(jobs)) {
		t.Errorf("%d upstream calls for %d jobs", got, len(jobs))
	}
}

// TestExpiredDeliveryIsNotStarted: a job whose AckWait ran out between the
// pull and its start (a stalled process) is not run: JetStream redelivers
// it, the redelivery runs it once, and the skipped delivery does not count
// as a worker dying on the job (max_deliver 2 would dead-letter it).
func TestExpiredDeliveryIsNotStarted(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(500 * time.Millisecond)}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = 2
	cfg.Worker.AckWait = time.Second
	cfg.Worker.MaxDeliver = 2
	e := newEnv(t, cfg)
	reg := prometheus.NewRegistry()
	stall := func(m jetstream.Msg) {
		if md, err := m.Metadata(); err == nil && md.NumDelivered == 1 {
			time.Sleep(cfg.Worker.AckWait + 300*time.Millisecond) // the stall under test
		}
	}
	e.startWorker(Options{Registerer: reg, handOff: stall})
	job := newJob(t)
	e.submit(job)
	rec := e.finished(job.ID, 20*time.Second)
	if rec.Status != events.JobSucceeded || len(rec.Attempts) != 1 || rec.Deliveries != 2 {
		t.Fatalf("record: status %s, %d attempts, delivery %d (dead letter %q); want succeeded on delivery 2 with 1 attempt",
			rec.Status, len(rec.Attempts), rec.Deliveries, rec.DeadLetter)
	}
	natstest.WaitFor(t, 5*time.Second, "the expired delivery counted", func() bool {
		return gather(t, reg, map[string]float64{"switchboard_job_deliveries_expired_total": 0})["switchboard_job_deliveries_expired_total"] == 1
	})
	if got := a.chatCalls(); got != 1 {
		t.Errorf("%d upstream calls, want 1", got)
	}
}

// TestNakOnLastDeliveryIsNotLost: a job on its max_deliver-th delivery when
// its worker stops is NAKed; JetStream must deliver it again (the worker,
// not the consumer, enforces max_deliver), and the next worker finishes it.
func TestNakOnLastDeliveryIsNotLost(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{HangRate: 1}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.MaxDeliver = 2
	cfg.Worker.RequestTimeout = 30 * time.Second
	e := newEnv(t, cfg)
	// Delivery 1 waits for the open breaker (a NAK with delay, recorded).
	now := time.Now()
	st := state.New("a", now)
	until := now.Add(1500 * time.Millisecond)
	st.Breaker, st.OpenedAt, st.OpenUntil, st.OpenCount = events.BreakerOpen, &now, &until, 1
	e.putState(st)
	_, stop := e.runWorker(Options{ShutdownGrace: 200 * time.Millisecond})
	job := newJob(t)
	e.submit(job)
	natstest.WaitFor(t, 5*time.Second, "the job waiting for the breaker", func() bool {
		rec, ok := e.record(job.ID)
		return ok && rec.Deliveries == 1 && rec.Error != nil
	})
	st.Breaker, st.OpenUntil = events.BreakerClosed, nil
	e.putState(st)
	// Delivery 2 (= max_deliver) hangs at the endpoint; the worker stops.
	natstest.WaitFor(t, 10*time.Second, "delivery 2 calling the endpoint", func() bool { return a.Stats().Hanging > 0 })
	stop()
	a.SetFaults(mock.Faults{})
	e.startWorker(Options{})
	rec := e.finished(job.ID, 15*time.Second)
	if rec.Status != events.JobSucceeded || rec.Deliveries != 3 || len(rec.Attempts) != 2 || rec.Attempts[0].ErrorClass != events.ClassCallerCanceled {
		t.Errorf("record: status %s, delivery %d, attempts %+v; want succeeded on delivery 3 after the abandoned attempt",
			rec.Status, rec.Deliveries, summarize(rec.Attempts))
	}
}

// TestFreeSlotTakesHighestPriorityFirst: with the only slot busy, jobs
// queued on every priority start high first, then normal, then low (each
// in submission order).
func TestFreeSlotTakesHighestPriorityFirst(t *testing.T) {
	// Each call takes long enough for every job to be queued behind the first.
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}, Faults: mock.Faults{Latency: mock.Duration(300 * time.Millisecond)}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = 1
	e := newEnv(t, cfg)
	e.startWorker(Options{})
	first := newJob(t)
	e.submit(first)
	natstest.WaitFor(t, 5*time.Second, "the first job calling the endpoint", func() bool { return a.chatCalls() == 1 })
	var jobs []*events.JobSubmitted
	var want []events.Priority
	for _, p := range []events.Priority{events.PriorityLow, events.PriorityNormal, events.PriorityHigh} {
		for range 2 {
			j := newJob(t)
			j.Priority = p
			e.submit(j)
			jobs = append(jobs, j)
		}
	}
	for _, p := range []events.Priority{events.PriorityHigh, events.PriorityNormal, events.PriorityLow} {
		want = append(want, p, p)
	}
	type started struct {
		at time.Time
		p  events.Priority
	}
	var order []started
	for _, j := range jobs {
		rec := e.finished(j.ID, 20*time.Second)
		if len(rec.Attempts) != 1 {
			t.Fatalf("job %s: %d attempts", j.ID, len(rec.Attempts))
		}
		order = append(order, started{rec.Attempts[0].StartedAt, rec.Priority})
	}
	slices.SortFunc(order, func(x, y started) int { return x.at.Compare(y.at) })
	var got []events.Priority
	for _, s := range order {
		got = append(got, s.p)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("priorities in the order the jobs started (-want +got):\n%s", diff)
	}
}
