package prober

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
)

// maxFirstSpread bounds the random delay of each pair's first probe, so
// that every endpoint has results within seconds of start however long its
// interval.
const maxFirstSpread = 2 * time.Second

// task is one (endpoint, kind) pair. It is owned by the scheduler while it
// waits in the heap and by a worker while it runs; the work and done
// channels hand it over, so its fields need no lock.
type task struct {
	ep   *endpoint
	kind events.ProbeKind

	due     time.Time // when the next probe should start
	started time.Time // when the last probe started

	// useMaxTokens is set once the endpoint refused max_completion_tokens
	// and accepted max_tokens; later completion probes send max_tokens.
	useMaxTokens bool
	// last is the previous result's verdict, to log changes only.
	lastOutcome events.ProbeOutcome
	lastClass   events.ErrorClass

	// out is the pair's place in the outbox, guarded by the outbox's lock.
	out outboxSlot

	latency [3]prometheus.Observer // by outcome, resolved on first use
	ttft    prometheus.Observer
	counts  map[countKey]prometheus.Counter
	m       *metrics
}

type countKey struct {
	outcome events.ProbeOutcome
	class   events.ErrorClass
}

func newTask(ep *endpoint, kind events.ProbeKind, m *metrics) *task {
	return &task{ep: ep, kind: kind, m: m, counts: map[countKey]prometheus.Counter{}}
}

// taskHeap orders tasks by due time.
type taskHeap []*task

func (h taskHeap) Len() int           { return len(h) }
func (h taskHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h taskHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *taskHeap) Push(x any)        { *h = append(*h, x.(*task)) }
func (h *taskHeap) Pop() any {
	old := *h
	n := len(old)
	t := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	return t
}

// firstDelay is a pair's delay before its first probe: uniform in
// [0, min(interval, 2s)).
func (p *Prober) firstDelay(interval time.Duration) time.Duration {
	return time.Duration(p.rnd.Float64() * float64(min(interval, maxFirstSpread)))
}

// jittered scales interval by a uniform factor in [1-jitter, 1+jitter].
func (p *Prober) jittered(interval time.Duration) time.Duration {
	f := 1 + p.jitter*(2*p.rnd.Float64()-1)
	return time.Duration(f * float64(interval))
}

// schedule hands every pair to a worker when it is due until ctx ends. It
// blocks while every worker is busy: the pairs that are due then start in
// due order as workers free up. done takes back the finished tasks.
func (p *Prober) schedule(ctx context.Context, work chan<- *task, done chan *task) {
	start := time.Now()
	h := make(taskHeap, 0, len(p.tasks))
	for _, t := range p.tasks {
		t.due = start.Add(p.firstDelay(t.ep.interval))
		heap.Push(&h, t)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		for h.Len() > 0 && !h[0].due.After(time.Now()) {
			t := heap.Pop(&h).(*task)
			select {
			case work <- t:
			case <-ctx.Done():
				return
			}
		}
		if h.Len() > 0 {
			timer.Reset(time.Until(h[0].due))
		}
		select {
		case <-ctx.Done():
			return
		case t := <-done:
			t.due = t.started.Add(p.jittered(t.nextInterval()))
			if now := time.Now(); t.due.Before(now) {
				t.due = now // the probe took longer than the interval
			}
			heap.Push(&h, t)
		case <-timer.C:
		}
	}
}

// nextInterval is the pair's interval after its last probe: the recheck
// interval while it fails (like Envoy's unhealthy interval), so that a
// failure is confirmed, and a recovery seen, well within one check interval.
func (t *task) nextInterval() time.Duration {
	if t.lastOutcome == events.ProbeFail {
		return t.ep.recheck
	}
	return t.ep.interval
}

// worker runs the probes it is handed until work is closed. There are
// max_concurrent workers, so at most that many probes are in flight; they
// live as long as Run, so that their stacks, grown by net/http, are reused.
func (p *Prober) worker(ctx context.Context, work <-chan *task, done chan<- *task, out *outbox) {
	for t := range work {
		p.runTask(ctx, t, time.Now(), out)
		done <- t
	}
}

// runTask runs one probe of t, launched when a worker took it, and puts the
// result in the outbox.
func (p *Prober) runTask(ctx context.Context, t *task, launched time.Time, out *outbox) {
	late := launched.Sub(t.due)
	p.m.startDelay.Observe(late.Seconds())

	var res *events.ProbeResult
	if late > t.ep.interval {
		// The worker came more than an interval late: sending the probe now
		// would only make the next ones late too.
		res = t.newResult(p.vantage, launched)
		res.Outcome, res.ErrorClass = events.ProbeInconclusive, events.ClassInternal
		res.Error = fmt.Sprintf("prober overloaded: probe skipped, it could start only %s late (prober.max_concurrent %d)",
			late.Round(time.Millisecond), p.maxConcurrent)
	} else {
		p.m.inflight.Inc()
		res = p.probe(ctx, t, launched)
		p.m.inflight.Dec()
	}
	t.started = launched
	p.record(t, res)
	if res.ErrorClass != events.ClassCallerCanceled {
		// A probe cut short by the prober's own shutdown says nothing about
		// the endpoint: it is counted, not published.
		out.put(t, res)
	}
	p.completed.Add(1)
}

// record counts and logs one result: every result at debug level, a change
// of outcome or class at info (back to pass) or warn.
func (p *Prober) record(t *task, res *events.ProbeResult) {
	k := countKey{res.Outcome, res.ErrorClass}
	c, ok := t.counts[k]
	if !ok {
		c = t.m.probes.WithLabelValues(t.ep.name, string(t.kind), string(res.Outcome), classLabel(res.ErrorClass))
		t.counts[k] = c
	}
	c.Inc()
	i := outcomeIndex(res.Outcome)
	if t.latency[i] == nil {
		t.latency[i] = t.m.latency.WithLabelValues(t.ep.name, string(t.kind), string(res.Outcome))
	}
	t.latency[i].Observe(res.LatencyMS / 1e3)
	if res.TTFTMS > 0 {
		if t.ttft == nil {
			t.ttft = t.m.ttft.WithLabelValues(t.ep.name)
		}
		t.ttft.Observe(res.TTFTMS / 1e3)
	}

	changed := res.Outcome != t.lastOutcome || res.ErrorClass != t.lastClass
	first := t.lastOutcome == ""
	t.lastOutcome, t.lastClass = res.Outcome, res.ErrorClass
	level := slog.LevelDebug
	switch {
	case !changed || res.ErrorClass == events.ClassCallerCanceled:
	case res.Outcome != events.ProbePass:
		level = slog.LevelWarn
	case !first:
		level = slog.LevelInfo
	}
	if !p.log.Enabled(context.Background(), level) {
		return
	}
	msg := "probe result"
	if level > slog.LevelDebug {
		msg = "probe outcome changed"
	}
	attrs := []slog.Attr{
		slog.String("endpoint", res.Endpoint), slog.String("kind", string(res.Kind)),
		slog.String("outcome", string(res.Outcome)), slog.Float64("latency_ms", res.LatencyMS),
	}
	if res.ErrorClass != events.ClassNone {
		attrs = append(attrs, slog.String("class", string(res.ErrorClass)), slog.String("error", res.Error))
	}
	if res.StatusCode != 0 {
		attrs = append(attrs, slog.Int("status", res.StatusCode))
	}
	p.log.LogAttrs(context.Background(), level, msg, attrs...)
}
