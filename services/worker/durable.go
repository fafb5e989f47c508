package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// handleDurable runs one delivery of a durable job. It guarantees that the
// message is acked only after the job's terminal record exists and its
// finished event was acknowledged, and that a terminal record is never
// overwritten.
func (s *Service) handleDurable(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		s.log.Error("job message without metadata", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	delivery := int(md.NumDelivered)
	env, err := events.Decode(m.Data())
	var job *events.JobSubmitted
	if err == nil {
		var ok bool
		if job, ok = env.Data.(*events.JobSubmitted); !ok {
			err = fmt.Errorf("event type %s is not %s", env.Type, events.TypeJobSubmitted)
		}
	}
	if err != nil {
		s.poison(m, err)
		return
	}
	s.met.inflight.WithLabelValues(string(events.LaneDurable)).Inc()
	defer s.met.inflight.WithLabelValues(string(events.LaneDurable)).Dec()

	ctx := context.Background()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rec, rev, found, err := s.records.get(rctx, job.ID)
	cancel()
	if err != nil {
		s.log.Warn("read job record; retrying the job later", "job", job.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if found && rec.Status.Terminal() {
		// Finished before (a lost ack, a crash after the terminal write, a
		// cancel): heal the finished event, which collapses if it exists.
		s.publishFinished(m, &rec, nil, false)
		return
	}
	cr, _ := events.ParseChatRequest(job.Request) // Decode validated it
	if !found {
		rec = lane.QueuedRecord(job, cr.Model, s.now())
	}
	if rec.Model == "" {
		rec.Model = cr.Model
	}
	if delivery >= s.cfg.MaxDeliver && rec.Deliveries < delivery-1 {
		// max_deliver reached (the consumers redeliver without limit: the
		// worker enforces it), and the delivery before this one ended
		// without a word: a worker died (or stalled) on this job. Running
		// it again could kill another worker.
		s.deadLetter(m, job, &rec, rev, found, delivery,
			fmt.Sprintf("delivered %d times (max_deliver %d) without finishing: a worker crashed or stalled on it", delivery, s.cfg.MaxDeliver))
		return
	}

	deadline := job.SubmittedAt.Add(s.cfg.JobTimeout)
	if job.Deadline != nil {
		deadline = *job.Deadline
	}
	budget := job.MaxAttempts
	if budget == 0 {
		budget = s.cfg.MaxAttempts
	}
	body, err := durableBody(job.Request, cr)
	if err != nil {
		s.poison(m, err)
		return
	}
	r := &run{
		job: job, lane: events.LaneDurable, model: cr.Model, body: body, deadline: deadline,
		budget: budget, delivery: delivery, attempts: append([]events.Attempt(nil), rec.Attempts...),
	}
	now := s.now()
	if rec.StartedAt == nil {
		t := now.UTC()
		rec.StartedAt = &t
	}

	// The job runs under the deadline, a cancel seen in its record, and the
	// worker's hard stop.
	jctx, jcancel := context.WithCancelCause(s.hard)
	jctx, dcancel := context.WithDeadline(jctx, deadline)
	js := &jobState{rec: rec, rev: rev, found: found}
	kaDone := make(chan struct{})
	kaStop := make(chan struct{})
	go func() { defer close(kaDone); s.keepAlive(m, js, kaStop, jcancel) }()

	res := s.execute(jctx, r)

	close(kaStop)
	<-kaDone
	dcancel()
	jcancel(nil)
	rec, rev, found = js.rec, js.rev, js.found
	rec.Attempts = r.attempts

	now = s.now()
	switch res.kind {
	case kindWait:
		if delivery < s.cfg.MaxDeliver {
			s.wait(m, job, &rec, rev, found, delivery, res, now)
			return
		}
		res.kind = kindFailed
		res.err.Message = fmt.Sprintf("no endpoint could take the job within %d deliveries: %s", delivery, res.err.Message)
	case kindCrashed: // a test's simulated crash: leave the message unacked
		return
	case kindAbandoned:
		// Shutting down: keep the attempts (they count against the budget)
		// and let another worker take the job now.
		rec.Deliveries = delivery
		rec.UpdatedAt = now.UTC()
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, term, err := s.records.save(wctx, &rec, rev, found)
		cancel()
		if term != nil {
			s.publishFinished(m, term, nil, false)
			return
		}
		if err != nil {
			s.log.Warn("record attempts of an abandoned job", "job", job.ID, "err", err)
		}
		_ = m.Nak()
		return
	case kindCancelled:
		gctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cur, _, cfound, err := s.records.get(gctx, job.ID)
		cancel()
		if err == nil && cfound && cur.Status.Terminal() {
			s.publishFinished(m, &cur, nil, false)
			return
		}
		_ = m.NakWithDelay(time.Second)
		return
	}
	s.terminal(m, &rec, rev, found, delivery, res, now)
}

// terminal writes the job's terminal record from res, publishes the
// finished event, fires the callback and acks.
func (s *Service) terminal(m jetstream.Msg, rec *events.JobRecord, rev uint64, found bool, delivery int, res result, now time.Time) {
	rec.Deliveries = delivery
	rec.UpdatedAt = now.UTC()
	fin := now.UTC()
	rec.FinishedAt = &fin
	if res.kind == kindSucceeded && len(res.response)+recordOverhead > int(s.o.NC.MaxPayload()) {
		res = result{kind: kindFailed, endpoint: res.endpoint, err: &events.JobError{Class: events.ClassInternal,
			Message: fmt.Sprintf("the response of %d bytes from %s is larger than the job store takes (NATS max payload %d)",
				len(res.response), res.endpoint, s.o.NC.MaxPayload())}}
	}
	switch res.kind {
	case kindSucceeded:
		rec.Status = events.JobSucceeded
		rec.Response = res.response
		rec.Endpoint = res.endpoint
		rec.Error = nil
	case kindExpired:
		rec.Status = events.JobExpired
		rec.Error = res.err
	default: // caller error, no model, failed
		rec.Status = events.JobFailed
		rec.Error = res.err
		if res.kind == kindCallerError {
			rec.Endpoint = res.endpoint
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	final, data, wrote, err := s.records.finish(ctx, rec, rev, found)
	cancel()
	if err != nil {
		s.log.Warn("write terminal job record; retrying the job later", "job", rec.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if wrote {
		s.met.jobs.WithLabelValues(string(final.Status), string(events.LaneDurable)).Inc()
		s.met.duration.WithLabelValues(string(events.LaneDurable)).Observe(now.Sub(final.SubmittedAt).Seconds())
	}
	s.publishFinished(m, final, data, wrote)
}

// recordOverhead is room in a record for everything but the response.
const recordOverhead = 64 << 10

// publishFinished publishes the finished event of a terminal record, fires
// its callback when this worker wrote the record (or when the event had
// never been published: the writer died before it), and acks the job. The
// publish is asynchronous: the slot goes on to its next job while the
// event is stored, and the job is acked only once JetStream acknowledged
// the event; when the publish fails the job is NAKed, so that a redelivery
// heals it.
func (s *Service) publishFinished(m jetstream.Msg, rec *events.JobRecord, data []byte, wrote bool) {
	if !wrote {
		// Healing a terminal record someone else wrote: the event is most
		// likely stored already. Looking first keeps it to one event even
		// past the stream's duplicate window.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stored, err := s.results.GetLastMsgForSubject(ctx, events.JobDoneSubject(rec.ID))
		if err == nil && rec.CallbackURL != "" {
			// The writer may have died between the event and the callback.
			err = s.queueCallback(ctx, rec.ID, stored.Header, stored.Data)
		}
		cancel()
		if err == nil {
			_ = m.Ack()
			return
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.log.Warn("look up job finished event; retrying the job later", "job", rec.ID, "err", err)
			_ = m.NakWithDelay(time.Second)
			return
		}
	}
	fin := &events.JobFinished{JobRecord: *rec}
	var msg *nats.Msg
	var err error
	if data != nil { // the record as written: the same JSON as the event's data
		msg, err = s.enc.msgWithData(events.FinishedEventID(rec.ID), fin, data, s.now())
	} else {
		msg, err = s.enc.msg(events.FinishedEventID(rec.ID), fin, s.now())
	}
	if err != nil {
		s.log.Error("encode job finished", "job", rec.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	fut, err := s.finJS.PublishMsgAsync(msg)
	if err != nil {
		s.log.Warn("publish job finished; retrying the job later", "job", rec.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	s.tails.Add(1)
	go func() {
		defer s.tails.Done()
		select {
		case <-fut.Ok():
			if rec.CallbackURL != "" {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				err := s.queueCallback(ctx, rec.ID, msg.Header, msg.Data)
				cancel()
				if err != nil {
					s.log.Warn("queue job callback; retrying the job later", "job", rec.ID, "err", err)
					_ = m.NakWithDelay(time.Second)
					return
				}
			}
			_ = m.Ack()
		case err := <-fut.Err():
			s.log.Warn("publish job finished; retrying the job later", "job", rec.ID, "err", err)
			_ = m.NakWithDelay(time.Second)
		}
	}()
}

// queueCallback queues the callback of job id, a copy of its finished
// event (header and body as stored), in SWITCHBOARD_CALLBACKS and waits for
// JetStream's ack. Queued twice within the duplicate window, it is stored
// once.
func (s *Service) queueCallback(ctx context.Context, id string, hdr nats.Header, body []byte) error {
	if _, err := s.o.JS.PublishMsg(ctx, natsx.CallbackMsg(id, hdr, body)); err != nil {
		return fmt.Errorf("queue callback of job %s: %w", id, err)
	}
	return nil
}

// wait records that the job waits for an endpoint and NAKs it with a delay
// until retryAt.
func (s *Service) wait(m jetstream.Msg, job *events.JobSubmitted, rec *events.JobRecord, rev uint64, found bool, delivery int, res result, now time.Time) {
	rec.Deliveries = delivery
	rec.Error = res.err
	rec.UpdatedAt = now.UTC()
	// The record must say this delivery ended with a wait: otherwise the
	// next one, on max_deliver, takes it for a worker that died on the job.
	// So a failed write is tried again before the NAK.
	var term *events.JobRecord
	var err error
	for try := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, term, err = s.records.save(ctx, rec, rev, found)
		cancel()
		if err == nil || term != nil || try == 2 {
			break
		}
		time.Sleep(200 * time.Millisecond << try)
	}
	if term != nil { // cancelled meanwhile
		s.publishFinished(m, term, nil, false)
		return
	}
	if err != nil {
		s.log.Error("record job wait; its next delivery may take it for a crash", "job", job.ID, "err", err)
	}
	delay := max(res.retryAt.Sub(now), 0)
	s.met.waits.Inc()
	s.log.Debug("job waits for an endpoint", "job", job.ID, "delay", delay, "reason", res.err.Message)
	_ = m.NakWithDelay(delay)
}

// poison dead-letters a job message that cannot be decoded and removes it.
func (s *Service) poison(m jetstream.Msg, cause error) {
	id := m.Headers().Get(jetstream.MsgIDHeader)
	if !events.ValidName(id) {
		id = "unknown"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := natsx.DeadLetter(ctx, s.o.JS, events.JobDeadSubject(id), m, "undecodable job: "+cause.Error()); err != nil {
		s.log.Error("dead-letter an undecodable job; retrying later", "job", id, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	s.met.jobs.WithLabelValues("dead_letter", string(events.LaneDurable)).Inc()
	s.log.Warn("undecodable job dead-lettered", "job", id, "err", cause)
	_ = m.Term()
}

// skipExpired leaves a delivery whose AckWait ran out before a slot
// started it (the process stalled between pulling and starting it):
// JetStream has redelivered it already, or will, so running this copy too
// would call the upstream twice, and acking or NAKing it would act on the
// new delivery. It records the delivery in the job record (best effort),
// so that the next delivery does not count it as a worker that died on
// the job.
func (s *Service) skipExpired(m jetstream.Msg, age time.Duration) {
	s.met.expired.Inc()
	md, err := m.Metadata()
	var env *events.Envelope
	if err == nil {
		env, err = events.Decode(m.Data())
	}
	var job *events.JobSubmitted
	if err == nil {
		job, _ = env.Data.(*events.JobSubmitted)
	}
	if job == nil { // the redelivery dead-letters it
		s.log.Warn("undecodable job message expired before it started; leaving it to its redelivery", "subject", m.Subject(), "age", age)
		return
	}
	delivery := int(md.NumDelivered)
	s.log.Warn("job message expired before it started; leaving it to its redelivery",
		"job", job.ID, "delivery", delivery, "age", age)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 5 { // compare-and-set on what is there: the redelivery may be writing too
		rec, rev, found, err := s.records.get(ctx, job.ID)
		if err != nil || (found && (rec.Status.Terminal() || rec.Deliveries >= delivery)) {
			return
		}
		if !found {
			cr, _ := events.ParseChatRequest(job.Request) // Decode validated it
			rec = lane.QueuedRecord(job, cr.Model, s.now())
		}
		rec.Deliveries = delivery
		rec.UpdatedAt = s.now().UTC()
		_, err = s.records.put(ctx, &rec, rev, found)
		if err == nil {
			return
		}
		if !errors.Is(err, errConflict) {
			s.log.Warn("record an expired delivery", "job", job.ID, "err", err)
			return
		}
	}
}

// deadLetter copies a job that keeps failing to be processed to the
// dead-letter stream, ends its record as failed with the reason, publishes
// its finished event and removes it from the work queue.
func (s *Service) deadLetter(m jetstream.Msg, job *events.JobSubmitted, rec *events.JobRecord, rev uint64, found bool, delivery int, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := natsx.DeadLetter(ctx, s.o.JS, events.JobDeadSubject(job.ID), m, reason); err != nil {
		s.log.Error("dead-letter a job; retrying later", "job", job.ID, "err", err)
		_ = m.NakWithDelay(time.Second) // the next delivery dead-letters it again
		return
	}
	now := s.now().UTC()
	rec.Status = events.JobFailed
	rec.DeadLetter = reason
	rec.Deliveries = delivery
	rec.Error = &events.JobError{Class: events.ClassInternal, Message: "dead-lettered: " + reason}
	rec.FinishedAt, rec.UpdatedAt = &now, now
	final, _, wrote, err := s.records.finish(ctx, rec, rev, found)
	if err != nil {
		s.log.Error("write dead-lettered job record; retrying later", "job", job.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if wrote {
		s.met.jobs.WithLabelValues("dead_letter", string(events.LaneDurable)).Inc()
		s.met.duration.WithLabelValues(string(events.LaneDurable)).Observe(now.Sub(final.SubmittedAt).Seconds())
	}
	s.log.Warn("job dead-lettered", "job", job.ID, "reason", reason)
	fm, err := s.enc.msg(events.FinishedEventID(final.ID), &events.JobFinished{JobRecord: *final}, s.now())
	if err == nil {
		_, err = s.o.JS.PublishMsg(ctx, fm)
	}
	if err == nil && final.CallbackURL != "" {
		err = s.queueCallback(ctx, final.ID, fm.Header, fm.Data)
	}
	if err != nil {
		// The record is terminal: the next delivery publishes the event.
		s.log.Error("publish finished event of a dead-lettered job; retrying later", "job", job.ID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.Term()
}

// jobState is a running durable job's record as the worker last wrote or
// read it, shared by the job's handler and its keep-alive.
type jobState struct {
	mu    sync.Mutex
	rec   events.JobRecord
	rev   uint64
	found bool
}

// keepAlive tells JetStream the job is in progress every AckWait/3, writes
// the record "running" once the job has run RunningAfter, and cancels the
// job (errJobCancelled) when it finds the record terminal (a cancel).
func (s *Service) keepAlive(m jetstream.Msg, js *jobState, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	tick := time.NewTicker(s.cfg.AckWait / 3)
	defer tick.Stop()
	after := s.o.RunningAfter
	if after < 0 {
		after = 0
	}
	running := time.NewTimer(after)
	defer running.Stop()
	for {
		select {
		case <-stop:
			return
		case <-running.C:
			if s.markRunning(js) {
				cancel(errJobCancelled)
			}
		case <-tick.C:
			_ = m.InProgress()
			if s.checkCancelled(js) {
				cancel(errJobCancelled)
			}
		}
	}
}

// markRunning writes the record "running"; it reports whether it found the
// record terminal instead.
func (s *Service) markRunning(js *jobState) bool {
	js.mu.Lock()
	defer js.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 3 {
		rec := js.rec
		rec.Status = events.JobRunning
		rec.UpdatedAt = s.now().UTC()
		rev, err := s.records.put(ctx, &rec, js.rev, js.found)
		if err == nil {
			js.rec, js.rev, js.found = rec, rev, true
			return false
		}
		if !errors.Is(err, errConflict) {
			s.log.Warn("write job record running", "job", rec.ID, "err", err)
			return false
		}
		cur, crev, cfound, err := s.records.get(ctx, rec.ID)
		if err != nil {
			return false
		}
		if cfound && cur.Status.Terminal() {
			return true
		}
		js.rev, js.found = crev, cfound
	}
	return false
}

// checkCancelled re-reads the record and reports whether it is terminal.
func (s *Service) checkCancelled(js *jobState) bool {
	js.mu.Lock()
	id := js.rec.ID
	js.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cur, _, found, err := s.records.get(ctx, id)
	return err == nil && found && cur.Status.Terminal()
}
