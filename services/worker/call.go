package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/router"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
)

// Limits on what the worker reads from an upstream.
const (
	maxResponseBytes = 32 << 20 // a chat completion larger than this is a bad body
	maxErrorBytes    = 64 << 10 // of an error response
	maxErrorMessage  = 512      // characters of an error kept in records and events
	streamReadSize   = 32 << 10 // one read of a relayed stream
	maxEventBytes    = 1 << 20  // of one event of a relayed stream
)

// streamSink receives a relayed stream (interactive lane).
type streamSink interface {
	// start is called once, when the upstream produced its first event.
	start(endpoint string, attempts int) error
	// data is called with raw SSE bytes, in order: whole events only.
	data(b []byte) error
}

// callOutcome is one upstream call.
type callOutcome struct {
	attempt        events.Attempt
	body           []byte // success: the completion; caller error: the upstream's error body
	throttledUntil *time.Time
}

// errAttemptTimeout ends a call that outran its attempt timeout.
var errAttemptTimeout = errors.New("attempt timeout")

// attemptTimeout is how long one call may take, started at now: at most
// worker.request_timeout, and, when another endpoint could take the job at
// once (failover) and the budget allows another attempt, at most half the
// time left before the deadline, so that a hanging endpoint leaves time to
// fail over. ok is false when the deadline comes first anyway (the call is
// then bounded by the job's context alone: its end is the caller's, not
// the endpoint's).
func (s *Service) attemptTimeout(r *run, now time.Time, failover bool) (d time.Duration, ok bool) {
	left := r.deadline.Sub(now)
	d = s.cfg.RequestTimeout
	if failover && len(r.attempts)+1 < r.budget {
		d = min(d, left/2)
	}
	return d, d < left
}

// call makes one upstream call for r on cand and publishes its outcome
// event. started is when the endpoint was chosen (the attempt's
// StartedAt). ctx carries the job's deadline and cancellation: a call it
// ends is the caller's doing (caller_canceled), never the endpoint's. A
// call that outruns its own attempt timeout (attemptTimeout) is the
// endpoint's: class timeout.
func (s *Service) call(ctx context.Context, r *run, cand router.Candidate, failover bool, started time.Time, leaseID string) callOutcome {
	ep := cand.Endpoint
	n := len(r.attempts) + 1
	co := callOutcome{attempt: events.Attempt{
		N: n, Endpoint: ep.Name, Model: cand.Model, Worker: s.cfg.Instance, StartedAt: started.UTC(),
	}}
	var ttft time.Duration
	fail := func(class events.ErrorClass, status int, msg string) {
		co.attempt.Outcome = events.RequestError
		co.attempt.ErrorClass = class
		co.attempt.StatusCode = upstream.EventStatus(status)
		co.attempt.Error = upstream.Truncate(upstream.Redact(msg, ep.APIKey.Value()), maxErrorMessage)
	}

	body, err := upstreamBody(r.body, r.model, cand.Model)
	if err != nil {
		fail(events.ClassInternal, 0, err.Error())
	} else {
		ac := s.newAttemptCtx(ctx, r, started, failover)
		ttft = s.do(ctx, ac, r, ep.Name, ep.BaseURL, ep.APIKey.Value(), body, n, &co, fail)
		ac.end()
	}
	if co.attempt.Outcome == "" {
		co.attempt.Outcome = events.RequestSuccess
	}
	lat := s.now().Sub(started)
	co.attempt.LatencyMS = float64(lat.Microseconds()) / 1000
	s.met.attempts.WithLabelValues(ep.Name, outcomeLabel(co.attempt)).Inc()
	s.met.upstreamLatency.WithLabelValues(ep.Name).Observe(lat.Seconds())

	o := &events.RequestOutcome{
		Endpoint: ep.Name, Model: cand.Model, JobID: r.job.ID, Lane: r.lane, Attempt: n,
		Outcome: co.attempt.Outcome, ErrorClass: co.attempt.ErrorClass, Error: co.attempt.Error,
		StatusCode: co.attempt.StatusCode, LatencyMS: co.attempt.LatencyMS,
		ThrottledUntil: co.throttledUntil, TrialLease: leaseID, StartedAt: co.attempt.StartedAt,
	}
	if ttft > 0 {
		o.TTFTMS = float64(ttft.Microseconds()) / 1000
	}
	if r.lane == events.LaneInteractive {
		// Published after the reply went out: off the caller's latency.
		r.outcomes = append(r.outcomes, pendingOutcome{outcomeID(r, n), o})
	} else {
		s.publishOutcome(outcomeID(r, n), o)
	}
	return co
}

// attemptCtx is the context of one call: the job's context, ended also by
// the attempt timeout (cause errAttemptTimeout).
type attemptCtx struct {
	context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer // nil when the job's deadline bounds the call
	start  time.Time
}

func (s *Service) newAttemptCtx(jobCtx context.Context, r *run, started time.Time, failover bool) *attemptCtx {
	ctx, cancel := context.WithCancelCause(jobCtx)
	ac := &attemptCtx{Context: ctx, cancel: cancel, start: time.Now()}
	if d, ok := s.attemptTimeout(r, started, failover); ok {
		ac.timer = time.AfterFunc(d, func() { cancel(errAttemptTimeout) })
	}
	return ac
}

// streamStarted lifts the attempt timeout's failover share once a stream
// went out (no failover is possible any more): the call is then bounded by
// worker.request_timeout from its start and the job's deadline.
func (ac *attemptCtx) streamStarted(requestTimeout time.Duration) {
	if ac.timer == nil || !ac.timer.Stop() {
		return // no timer, or it fired already
	}
	ac.timer.Reset(max(time.Until(ac.start.Add(requestTimeout)), 0))
}

// end releases the call's context and timer.
func (ac *attemptCtx) end() {
	if ac.timer != nil {
		ac.timer.Stop()
	}
	ac.cancel(nil)
}

// classify says why a call failed: caller_canceled when the job's context
// ended (deadline, cancel, shutdown), timeout when the attempt timeout
// did, else what upstream.Classify makes of err.
func (ac *attemptCtx) classify(jobCtx context.Context, err error) events.ErrorClass {
	if jobCtx.Err() != nil {
		return events.ClassCallerCanceled
	}
	if errors.Is(context.Cause(ac), errAttemptTimeout) {
		return events.ClassTimeout
	}
	return upstream.Classify(jobCtx, err)
}

// do performs the HTTP exchange and fills co (via fail on failure). It
// returns the time to the first streamed event, if any.
func (s *Service) do(jobCtx context.Context, ctx *attemptCtx, r *run, name, baseURL, key string, body []byte, n int, co *callOutcome, fail func(events.ErrorClass, int, string)) time.Duration {
	start := s.now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		fail(events.ClassInternal, 0, fmt.Sprintf("build request: %v", err))
		return 0
	}
	req.Header.Set("Content-Type", "application/json")
	if r.stream {
		req.Header.Set("Accept", "text/event-stream")
	} else {
		req.Header.Set("Accept", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		fail(ctx.classify(jobCtx, err), 0, err.Error())
		return 0
	}
	defer resp.Body.Close()
	co.attempt.StatusCode = upstream.EventStatus(resp.StatusCode)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
		class := events.ClassOfStatus(resp.StatusCode)
		msg := fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		if class == events.ClassHTTP429 {
			now := s.now()
			until, ok := upstream.ThrottledUntil(resp.Header, b, now)
			if !ok {
				until = now.Add(time.Second)
			}
			until = until.UTC()
			co.throttledUntil = &until
		}
		if class == events.ClassClientError {
			co.body = redact(b, key) // relayed to the client and stored: never the key
		}
		fail(class, resp.StatusCode, msg)
		return 0
	}
	if r.stream {
		return s.relay(jobCtx, ctx, r, name, key, n, resp, start, fail)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		fail(ctx.classify(jobCtx, err), resp.StatusCode, fmt.Sprintf("read response: %v", err))
		return 0
	}
	if err := checkCompletion(b); err != nil {
		fail(events.ClassBadBody, resp.StatusCode, err.Error())
		return 0
	}
	co.body = redact(b, key)
	return 0
}

// redact returns b without the API key key (b itself when it holds none).
func redact(b []byte, key string) []byte {
	if len(key) < 4 || !bytes.Contains(b, []byte(key)) {
		return b
	}
	return []byte(upstream.Redact(string(b), key))
}

// checkCompletion says whether b is a chat completion: a JSON object with
// at least one choice.
func checkCompletion(b []byte) error {
	if len(b) > maxResponseBytes {
		return fmt.Errorf("response is larger than %d bytes", maxResponseBytes)
	}
	var c struct {
		Object  string            `json:"object"`
		Choices []json.RawMessage `json:"choices"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("response is not a chat completion: %v", err)
	}
	if len(c.Choices) == 0 {
		return errors.New("response is not a chat completion: no choices")
	}
	if c.Object != "" && c.Object != "chat.completion" {
		return fmt.Errorf("response is not a chat completion: object %q", c.Object)
	}
	return nil
}

// relay reads an upstream event stream and forwards it to r.sink. Before
// the first event arrives every failure is an ordinary failed call (the
// job fails over); the sink's start goes out with the first event, after
// which a failure sets r.started so the job ends with a stream error. Only
// complete events are forwarded (an incomplete one at a break is dropped),
// so that the error event that ends a broken stream starts on an event
// boundary; a broken event is not forwarded either.
func (s *Service) relay(jobCtx context.Context, ac *attemptCtx, r *run, name, key string, n int, resp *http.Response, start time.Time, fail func(events.ErrorClass, int, string)) time.Duration {
	var sc sseScanner
	var ttft time.Duration
	var pend []byte // read, not forwarded yet: complete events not sent, then an incomplete one
	buf := make([]byte, streamReadSize)
	// forward sends the complete events in pend.
	forward := func() error {
		k := sc.boundary - sc.sent
		if k <= 0 {
			return nil
		}
		if err := r.sink.data(redact(pend[:k], key)); err != nil {
			return err
		}
		sc.sent += k
		pend = append(pend[:0], pend[k:]...)
		return nil
	}
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			chunk := buf[:k]
			perr := sc.feed(chunk)
			pend = append(pend, chunk...)
			if perr != nil && !r.started {
				fail(events.ClassBadBody, resp.StatusCode, perr.Error())
				return ttft
			}
			if !r.started && sc.events > 0 {
				ttft = s.now().Sub(start)
				r.started = true
				ac.streamStarted(s.cfg.RequestTimeout)
				if err := r.sink.start(name, n); err != nil {
					fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream start: %v", err))
					return ttft
				}
			}
			if r.started {
				if err := forward(); err != nil {
					fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream: %v", err))
					return ttft
				}
			}
			if perr != nil {
				fail(events.ClassBadBody, resp.StatusCode, perr.Error())
				return ttft
			}
			if sc.done {
				return ttft
			}
			if len(pend) > maxEventBytes {
				fail(events.ClassBadBody, resp.StatusCode, fmt.Sprintf("stream event larger than %d bytes", maxEventBytes))
				return ttft
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				fail(events.ClassStreamBroken, resp.StatusCode, "stream ended without data: [DONE]")
			} else {
				class := ac.classify(jobCtx, rerr)
				if class != events.ClassCallerCanceled && class != events.ClassTimeout {
					class = events.ClassStreamBroken
				}
				fail(class, resp.StatusCode, fmt.Sprintf("stream broke: %v", rerr))
			}
			return ttft
		}
	}
}

// sseScanner follows a server-sent-event stream across read boundaries: it
// counts complete events with data, checks that each event's data is JSON
// (or [DONE]), notices the terminating "data: [DONE]" and knows where the
// last complete event ends.
type sseScanner struct {
	line     []byte // the incomplete last line
	data     []byte // data of the event being read
	has      bool   // the current event has a data line
	events   int    // complete events with data
	done     bool
	pos      int // bytes consumed
	boundary int // stream offset just past the last complete event (its blank line)
	sent     int // stream offset forwarded so far (kept by the relay)
}

// feed consumes b; it returns an error on an event whose data is neither
// JSON nor [DONE] (boundary stays before that event).
func (sc *sseScanner) feed(b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			sc.line = append(sc.line, b...)
			sc.pos += len(b)
			return nil
		}
		line := b[:i]
		if len(sc.line) > 0 {
			sc.line = append(sc.line, line...)
			line = sc.line
		}
		b = b[i+1:]
		sc.pos += i + 1
		if err := sc.lineDone(bytes.TrimSuffix(line, []byte{'\r'})); err != nil {
			return err
		}
		sc.line = sc.line[:0]
	}
	return nil
}

func (sc *sseScanner) lineDone(line []byte) error {
	if len(line) == 0 { // end of an event
		if !sc.has {
			sc.boundary = sc.pos
			return nil
		}
		d := sc.data
		sc.data, sc.has = sc.data[:0], false
		if string(d) == "[DONE]" {
			sc.done = true
			sc.events++
			sc.boundary = sc.pos
			return nil
		}
		if !json.Valid(d) {
			return fmt.Errorf("stream event is not JSON: %s", upstream.Truncate(string(d), 200))
		}
		sc.events++
		sc.boundary = sc.pos
		return nil
	}
	if rest, ok := bytes.CutPrefix(line, []byte("data:")); ok {
		rest = bytes.TrimPrefix(rest, []byte{' '})
		if sc.has {
			sc.data = append(sc.data, '\n')
		}
		sc.data = append(sc.data, rest...)
		sc.has = true
	}
	return nil // comments, event:, id:, retry: lines
}

// pendingOutcome is an outcome event not yet published.
type pendingOutcome struct {
	id string
	o  *events.RequestOutcome
}

// flushOutcomes publishes the outcomes r holds back.
func (s *Service) flushOutcomes(r *run) {
	for _, p := range r.outcomes {
		s.publishOutcome(p.id, p.o)
	}
	r.outcomes = nil
}

// publishOutcome publishes a request outcome without waiting for its ack;
// Run waits for every pending ack at shutdown.
func (s *Service) publishOutcome(id string, o *events.RequestOutcome) {
	m, err := s.enc.msg(id, o, s.now())
	if err != nil {
		s.met.outcomeErrors.Inc()
		s.log.Error("encode request outcome", "endpoint", o.Endpoint, "job", o.JobID, "err", err)
		return
	}
	if _, err := s.asyncJS.PublishMsgAsync(m); err != nil {
		s.met.outcomeErrors.Inc()
		s.log.Warn("publish request outcome failed", "endpoint", o.Endpoint, "job", o.JobID, "err", err)
	}
}

func outcomeLabel(a events.Attempt) string {
	if a.Outcome == events.RequestSuccess {
		return string(events.RequestSuccess)
	}
	return string(a.ErrorClass)
}
