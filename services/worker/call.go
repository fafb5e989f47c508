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
	streamReadSize   = 32 << 10 // one read of a relayed stream, at most one data message
)

// streamSink receives a relayed stream (interactive lane).
type streamSink interface {
	// start is called once, when the upstream produced its first event.
	start(endpoint string, attempts int) error
	// data is called with raw SSE bytes, in order.
	data(b []byte) error
}

// callOutcome is one upstream call.
type callOutcome struct {
	attempt        events.Attempt
	body           []byte // success: the completion; caller error: the upstream's error body
	throttledUntil *time.Time
}

// call makes one upstream call for r on cand and publishes its outcome
// event. started is when the endpoint was chosen (the attempt's
// StartedAt). ctx carries the job's deadline and cancellation: a call it
// ends is the caller's doing (caller_canceled), never the endpoint's.
func (s *Service) call(ctx context.Context, r *run, cand router.Candidate, started time.Time, leaseID string) callOutcome {
	ep := cand.Endpoint
	n := len(r.attempts) + 1
	co := callOutcome{attempt: events.Attempt{
		N: n, Endpoint: ep.Name, Model: cand.Model, Worker: s.cfg.Instance, StartedAt: started.UTC(),
	}}
	var ttft time.Duration
	fail := func(class events.ErrorClass, status int, msg string) {
		co.attempt.Outcome = events.RequestError
		co.attempt.ErrorClass = class
		co.attempt.StatusCode = status
		co.attempt.Error = upstream.Truncate(upstream.Redact(msg, ep.APIKey.Value()), maxErrorMessage)
	}

	body, err := upstreamBody(r.body, r.model, cand.Model)
	if err != nil {
		fail(events.ClassInternal, 0, err.Error())
	} else {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		ttft = s.do(ctx, cctx, r, ep.Name, ep.BaseURL, ep.APIKey.Value(), body, n, &co, fail)
		cancel()
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

// do performs the HTTP exchange and fills co (via fail on failure). It
// returns the time to the first streamed event, if any.
func (s *Service) do(jobCtx, ctx context.Context, r *run, name, baseURL, key string, body []byte, n int, co *callOutcome, fail func(events.ErrorClass, int, string)) time.Duration {
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
		fail(upstream.Classify(jobCtx, err), 0, err.Error())
		return 0
	}
	defer resp.Body.Close()
	co.attempt.StatusCode = resp.StatusCode
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
			co.body = b
		}
		fail(class, resp.StatusCode, msg)
		return 0
	}
	if r.stream {
		return s.relay(jobCtx, r, name, n, resp, start, fail)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		fail(upstream.Classify(jobCtx, err), resp.StatusCode, fmt.Sprintf("read response: %v", err))
		return 0
	}
	if err := checkCompletion(b); err != nil {
		fail(events.ClassBadBody, resp.StatusCode, err.Error())
		return 0
	}
	co.body = b
	return 0
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
// which a failure sets r.started so the job ends with a stream error.
func (s *Service) relay(jobCtx context.Context, r *run, name string, n int, resp *http.Response, start time.Time, fail func(events.ErrorClass, int, string)) time.Duration {
	var sc sseScanner
	var ttft time.Duration
	var head []byte // bytes read before the first event
	buf := make([]byte, streamReadSize)
	for {
		k, rerr := resp.Body.Read(buf)
		chunk := buf[:k]
		if k > 0 {
			perr := sc.feed(chunk)
			if !r.started {
				head = append(head, chunk...)
				if perr != nil {
					fail(events.ClassBadBody, resp.StatusCode, perr.Error())
					return ttft
				}
				if sc.events > 0 {
					ttft = s.now().Sub(start)
					r.started = true
					if err := r.sink.start(name, n); err != nil {
						fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream start: %v", err))
						return ttft
					}
					if err := r.sink.data(head); err != nil {
						fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream: %v", err))
						return ttft
					}
				}
			} else {
				if err := r.sink.data(chunk); err != nil {
					fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream: %v", err))
					return ttft
				}
				if perr != nil {
					fail(events.ClassBadBody, resp.StatusCode, perr.Error())
					return ttft
				}
			}
			if sc.done {
				if !r.started { // "[DONE]" as the very first event: an empty stream
					r.started = true
					ttft = s.now().Sub(start)
					if err := r.sink.start(name, n); err != nil {
						fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream start: %v", err))
						return ttft
					}
					if err := r.sink.data(head); err != nil {
						fail(events.ClassInternal, resp.StatusCode, fmt.Sprintf("relay stream: %v", err))
					}
				}
				return ttft
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				fail(events.ClassStreamBroken, resp.StatusCode, "stream ended without data: [DONE]")
			} else {
				class := upstream.Classify(jobCtx, rerr)
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
// (or [DONE]) and notices the terminating "data: [DONE]".
type sseScanner struct {
	line   []byte // the incomplete last line
	data   []byte // data of the event being read
	has    bool   // the current event has a data line
	events int    // complete events with data
	done   bool
}

// feed consumes b; it returns an error on an event whose data is neither
// JSON nor [DONE].
func (sc *sseScanner) feed(b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			sc.line = append(sc.line, b...)
			return nil
		}
		line := b[:i]
		if len(sc.line) > 0 {
			sc.line = append(sc.line, line...)
			line = sc.line
		}
		b = b[i+1:]
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
			return nil
		}
		d := sc.data
		sc.data, sc.has = sc.data[:0], false
		if string(d) == "[DONE]" {
			sc.done = true
			sc.events++
			return nil
		}
		if !json.Valid(d) {
			return fmt.Errorf("stream event is not JSON: %s", upstream.Truncate(string(d), 200))
		}
		sc.events++
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
