package prober

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// outbox holds the results waiting to be published. It keeps at most one
// per pair: a newer result replaces an older one NATS has not taken yet
// (the older is counted as superseded), so memory stays bounded and every
// pair's freshest result goes out however slow NATS is. It lets at most one
// publish per pair be in flight, so each pair's results reach the stream in
// the order they were probed.
type outbox struct {
	mu   sync.Mutex
	cond *sync.Cond
	// ready is a ring of the pairs with a pending result and no publish in
	// flight, oldest first; a pair is in it at most once, so it never fills.
	ready   []*task
	head, n int
	closed  bool
	// superseded counts results replaced before they were published.
	superseded func()
}

// outboxSlot is a task's state in the outbox, guarded by outbox.mu.
type outboxSlot struct {
	pending  *events.ProbeResult
	inReady  bool
	inFlight bool
}

func newOutbox(pairs int, superseded func()) *outbox {
	o := &outbox{ready: make([]*task, max(pairs, 1)), superseded: superseded}
	o.cond = sync.NewCond(&o.mu)
	return o
}

// put queues res, the newest result of t. It never blocks on publishing.
func (o *outbox) put(t *task, res *events.ProbeResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := &t.out
	if s.pending != nil {
		o.superseded()
	}
	s.pending = res
	if !s.inFlight && !s.inReady {
		o.push(t)
	}
}

// push appends t to ready; o.mu is held.
func (o *outbox) push(t *task) {
	t.out.inReady = true
	o.ready[(o.head+o.n)%len(o.ready)] = t
	o.n++
	o.cond.Signal()
}

// take waits for a result to publish; ok is false once the outbox is
// closed and empty. The caller must call finish(t) after publishing.
func (o *outbox) take() (t *task, res *events.ProbeResult, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.n == 0 && !o.closed {
		o.cond.Wait()
	}
	if o.n == 0 {
		return nil, nil, false
	}
	t, o.ready[o.head] = o.ready[o.head], nil
	o.head = (o.head + 1) % len(o.ready)
	o.n--
	s := &t.out
	res, s.pending, s.inReady, s.inFlight = s.pending, nil, false, true
	return t, res, true
}

// finish ends t's publish in flight; a result that came meanwhile is next.
func (o *outbox) finish(t *task) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := &t.out
	s.inFlight = false
	if s.pending != nil && !s.inReady {
		o.push(t)
	}
}

// close makes take return false once the outbox is empty.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.cond.Broadcast()
}

// publishLoop publishes results from out until it is closed and empty.
// Each publish waits for JetStream's ack for at most publishTimeout; a
// failure is counted and logged, and the result is lost (the pair's next
// one follows within an interval).
func (p *Prober) publishLoop(ctx context.Context, out *outbox) {
	for {
		t, res, ok := out.take()
		if !ok {
			return
		}
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		_, err := p.pub.Publish(pctx, p.eventID(res), res)
		cancel()
		out.finish(t)
		if err != nil {
			p.m.publishErrors.WithLabelValues(reasonPublish).Inc()
			p.pubErrLog.log(p.log, "probe result not published",
				slog.String("endpoint", res.Endpoint), slog.String("kind", string(res.Kind)), slog.Any("err", err))
			continue
		}
		p.m.published.Inc()
		p.published.Add(1)
	}
}

// eventID is unique per probe: a pair never has two probes starting in the
// same nanosecond. It doubles as Nats-Msg-Id.
func (p *Prober) eventID(res *events.ProbeResult) string {
	b := make([]byte, 0, len(p.vantage)+len(res.Endpoint)+len(res.Kind)+24)
	b = append(b, p.vantage...)
	b = append(b, '-')
	b = append(b, res.Endpoint...)
	b = append(b, '-')
	b = append(b, res.Kind...)
	b = append(b, '-')
	b = strconv.AppendInt(b, res.StartedAt.UnixNano(), 10)
	return string(b)
}

// logEvery is how often a throttledLog logs.
const logEvery = 10 * time.Second

// throttledLog logs a recurring warning at most once every logEvery, with
// the number of occurrences it kept quiet about.
type throttledLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (l *throttledLog) log(log *slog.Logger, msg string, attrs ...slog.Attr) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < logEvery {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed_since_last", n))
	}
	log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
}
