package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tidwall/sjson"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// Causes a job's context is cancelled with.
var (
	// errJobCancelled: the job's record turned terminal under it (a cancel).
	errJobCancelled = errors.New("job cancelled")
	// errClientGone: the gateway said the interactive client went away.
	errClientGone = errors.New("client went away")
)

// kind is how a run of the attempt loop ended.
type kind int

const (
	kindSucceeded    kind = iota + 1
	kindCallerError       // the upstream said the request is the caller's fault
	kindFailed            // the attempt budget is spent
	kindNoModel           // no configured endpoint serves the model
	kindExpired           // the deadline passed
	kindWait              // no endpoint admits the job now: wait until retryAt
	kindAbandoned         // the worker is shutting down (or the client went away)
	kindCancelled         // the record turned terminal under the job
	kindStreamBroken      // a relayed stream broke after its first event
	kindCrashed           // a test hook simulated a crash
)

// run is one job on its way through the attempt loop.
type run struct {
	job      *events.JobSubmitted
	lane     events.Lane
	model    string // as asked for, before alias mapping
	body     []byte // the chat request as it goes upstream (model rewritten per endpoint)
	stream   bool
	deadline time.Time
	budget   int
	delivery int              // durable: the JetStream delivery count; interactive: 1
	attempts []events.Attempt // every upstream call so far, this delivery's included
	sink     streamSink       // interactive streams only
	started  bool             // a stream start went out: no more failover
	outcomes []pendingOutcome // interactive: published after the reply
}

// result is how a run ended.
type result struct {
	kind     kind
	status   int    // the upstream status of a success or caller error
	response []byte // the upstream body of a success (non-stream)
	endpoint string // the endpoint that served it, or the last one tried
	err      *events.JobError
	retryAt  time.Time // kindWait
}

// execute runs the attempt loop: choose an endpoint, call it, fail over on
// an endpoint failure, until success, a caller error, the attempt budget,
// the deadline, or no endpoint admitting the job now. Waits of up to
// LocalWait are sat out in place; longer ones are returned as kindWait.
func (s *Service) execute(ctx context.Context, r *run) result {
	var tried []string
	var last *events.JobError
	lastEndpoint := ""
	exclude := func(name string) bool {
		for _, t := range tried {
			if t == name {
				return true
			}
		}
		return false
	}
	for {
		now := s.now()
		if err := context.Cause(ctx); err != nil {
			return s.interrupted(ctx, r, last, lastEndpoint)
		}
		if !now.Before(r.deadline) {
			return result{kind: kindExpired, endpoint: lastEndpoint, err: expiredError(r, last)}
		}
		if len(r.attempts) >= r.budget {
			return result{kind: kindFailed, endpoint: lastEndpoint, err: budgetError(r, last)}
		}
		ch := s.router.Choose(r.model, exclude, now)
		if !ch.OK {
			if !ch.Served {
				return result{kind: kindNoModel, err: &events.JobError{
					Class: events.ClassClientError, StatusCode: http.StatusNotFound, Message: ch.Reason}}
			}
			retryAt, reason := ch.RetryAt, ch.Reason
			if !ch.Untried {
				// Every serving endpoint failed this job once already: back
				// off before going round again (the budget bounds the rounds).
				retryAt = now.Add(roundBackoff(len(r.attempts)))
				if last != nil {
					reason = reason + "; last error: " + last.Message
				}
			} else if retryAt.IsZero() {
				retryAt = now.Add(defaultUnknownWait)
			}
			// An open_until already past means the evaluator has not moved
			// the breaker on yet: look again shortly, not in a busy loop.
			retryAt = maxTime(retryAt, now.Add(minWait))
			if !retryAt.Before(r.deadline) && r.lane == events.LaneInteractive {
				// The caller holds the connection: tell it when to come back.
				return result{kind: kindWait, retryAt: retryAt, endpoint: lastEndpoint,
					err: &events.JobError{Message: "no endpoint can take the call now: " + reason}}
			}
			if !retryAt.Before(r.deadline) {
				e := expiredError(r, last)
				e.Message = fmt.Sprintf("no endpoint can take the job before its deadline %s (%s)",
					r.deadline.UTC().Format(time.RFC3339), reason)
				return result{kind: kindExpired, endpoint: lastEndpoint, err: e}
			}
			if wait := retryAt.Sub(now); wait <= s.o.LocalWait {
				if !sleepCtx(ctx, wait) {
					continue // the loop's top reports why
				}
				tried = tried[:0]
				continue
			}
			return result{kind: kindWait, retryAt: retryAt, endpoint: lastEndpoint,
				err: &events.JobError{Message: "waiting for an endpoint: " + reason}}
		}
		cand := ch.Candidate
		leaseID := ""
		if cand.NeedsLease {
			id, ok := s.acquireLease(ctx, cand.Endpoint.Name, now)
			if !ok {
				tried = append(tried, cand.Endpoint.Name) // its trial slots are taken: not for this job now
				continue
			}
			leaseID = id
		}
		if r.lane == events.LaneDurable && s.o.beforeCall != nil {
			if err := s.o.beforeCall(r.job, r.delivery); err != nil {
				if leaseID != "" {
					s.releaseLease(cand.Endpoint.Name, leaseID)
				}
				return result{kind: kindCrashed, err: &events.JobError{Class: events.ClassInternal, Message: err.Error()}}
			}
		}
		co := s.call(ctx, r, cand, ch.Others > 0, now, leaseID)
		r.attempts = append(r.attempts, co.attempt)
		lastEndpoint = cand.Endpoint.Name
		a := co.attempt
		switch {
		case a.Outcome == events.RequestSuccess:
			s.router.Local().Succeeded(a.Endpoint)
			return result{kind: kindSucceeded, status: a.StatusCode, response: co.body, endpoint: a.Endpoint}
		case a.ErrorClass == events.ClassCallerCanceled:
			return s.interrupted(ctx, r, &events.JobError{Class: a.ErrorClass, Message: a.Error}, lastEndpoint)
		case a.ErrorClass == events.ClassClientError:
			return result{kind: kindCallerError, status: a.StatusCode, response: co.body, endpoint: a.Endpoint,
				err: &events.JobError{Class: a.ErrorClass, StatusCode: a.StatusCode, Message: a.Error}}
		}
		last = &events.JobError{Class: a.ErrorClass, StatusCode: a.StatusCode,
			Message: fmt.Sprintf("%s: %s", a.Endpoint, a.Error)}
		if r.started {
			return result{kind: kindStreamBroken, endpoint: a.Endpoint, err: last}
		}
		if a.ErrorClass == events.ClassHTTP429 {
			if co.throttledUntil != nil {
				s.router.Local().Throttled(a.Endpoint, *co.throttledUntil)
			}
		} else {
			s.router.Local().Failed(a.Endpoint, s.now())
		}
		tried = append(tried, a.Endpoint)
		if len(r.attempts) < r.budget && s.now().Before(r.deadline) {
			s.met.failovers.Inc()
		}
	}
}

// interrupted says how a run whose context ended ended.
func (s *Service) interrupted(ctx context.Context, r *run, last *events.JobError, endpoint string) result {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errJobCancelled):
		return result{kind: kindCancelled, endpoint: endpoint, err: &events.JobError{Class: events.ClassCallerCanceled, Message: "job cancelled"}}
	case errors.Is(cause, context.DeadlineExceeded) || !s.now().Before(r.deadline):
		return result{kind: kindExpired, endpoint: endpoint, err: expiredError(r, last)}
	case errors.Is(cause, errClientGone):
		return result{kind: kindAbandoned, endpoint: endpoint, err: &events.JobError{Class: events.ClassCallerCanceled, Message: "the client went away"}}
	}
	return result{kind: kindAbandoned, endpoint: endpoint, err: &events.JobError{Class: events.ClassCallerCanceled, Message: "worker shutting down"}}
}

func expiredError(r *run, last *events.JobError) *events.JobError {
	msg := fmt.Sprintf("deadline %s passed after %d attempts", r.deadline.UTC().Format(time.RFC3339Nano), len(r.attempts))
	if last != nil {
		msg += "; last error: " + last.Message
	}
	return &events.JobError{Class: events.ClassCallerCanceled, Message: msg}
}

func budgetError(r *run, last *events.JobError) *events.JobError {
	if last == nil {
		return &events.JobError{Message: fmt.Sprintf("attempt budget of %d spent", r.budget)}
	}
	e := *last
	e.Message = fmt.Sprintf("all %d attempts failed; last: %s", len(r.attempts), last.Message)
	return &e
}

// minWait is the shortest wait for an endpoint.
const minWait = 100 * time.Millisecond

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// roundBackoff is the pause before trying every endpoint again.
func roundBackoff(attempts int) time.Duration {
	d := 250 * time.Millisecond << min(attempts, 5)
	return min(d, 10*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// acquireLease takes a half-open trial lease on endpoint name by
// compare-and-set; false when no slot is free (or KV failed).
func (s *Service) acquireLease(ctx context.Context, name string, now time.Time) (string, bool) {
	var lease events.Lease
	settings := s.router.Settings()
	holder := s.cfg.Instance
	st, wrote, err := s.store.Update(ctx, name, func() events.EndpointState { return state.New(name, now) },
		func(cur events.EndpointState) (events.EndpointState, bool, error) {
			next, l, ok := state.AcquireLease(settings, cur, holder, s.now())
			if !ok {
				return cur, false, nil
			}
			lease = l
			return next, true, nil
		})
	if err != nil {
		s.log.Warn("acquire trial lease failed", "endpoint", name, "err", err)
		return "", false
	}
	if !wrote {
		return "", false
	}
	s.view.Put(st)
	return lease.ID, true
}

// releaseLease gives back a lease taken for a call that never went out.
func (s *Service) releaseLease(name, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := s.now()
	st, wrote, err := s.store.Update(ctx, name, func() events.EndpointState { return state.New(name, now) },
		func(cur events.EndpointState) (events.EndpointState, bool, error) {
			next, ok := state.ReleaseLease(cur, id, s.now())
			return next, ok, nil
		})
	if err != nil {
		s.log.Warn("release trial lease failed", "endpoint", name, "lease", id, "err", err)
		return
	}
	if wrote {
		s.view.Put(st)
	}
}

// upstreamBody returns the request body for an endpoint: the model
// rewritten to the upstream name when the alias map changes it.
func upstreamBody(body []byte, asked, upstreamModel string) ([]byte, error) {
	if asked == upstreamModel {
		return body, nil
	}
	b, err := sjson.SetBytes(body, "model", upstreamModel)
	if err != nil {
		return nil, fmt.Errorf("rewrite model to %q: %w", upstreamModel, err)
	}
	return b, nil
}

// durableBody turns off streaming for a durable job: its record holds one
// chat completion, not a stream.
func durableBody(body []byte, cr *events.ChatRequest) ([]byte, error) {
	if !cr.Stream {
		return body, nil
	}
	b, err := sjson.SetBytes(body, "stream", false)
	if err == nil {
		b, err = sjson.DeleteBytes(b, "stream_options")
	}
	if err != nil {
		return nil, fmt.Errorf("turn off streaming: %w", err)
	}
	return b, nil
}

// outcomeID is the event id of one upstream call: unique per delivery and
// attempt, so a redelivered job's new calls never collapse into old ones.
func outcomeID(r *run, n int) string {
	return r.job.ID + "-" + strconv.Itoa(r.delivery) + "-" + strconv.Itoa(n)
}

// replyStatus is the HTTP status an interactive reply gets for a result.
func replyStatus(res result) (int, string, string) {
	switch res.kind {
	case kindSucceeded:
		return res.status, "", ""
	case kindCallerError:
		return lane.StatusFor(res.status), lane.TypeInvalidRequest, ""
	case kindNoModel:
		return http.StatusNotFound, lane.TypeInvalidRequest, lane.CodeModelNotServed
	case kindExpired:
		return http.StatusGatewayTimeout, lane.TypeUnavailable, lane.CodeDeadline
	case kindWait:
		return http.StatusServiceUnavailable, lane.TypeUnavailable, lane.CodeNoEndpoint
	case kindAbandoned:
		return http.StatusServiceUnavailable, lane.TypeUnavailable, lane.CodeCancelled
	case kindStreamBroken:
		return http.StatusBadGateway, lane.TypeUpstream, lane.CodeStreamBroken
	}
	return http.StatusBadGateway, lane.TypeUpstream, lane.CodeUpstreamFailed
}
