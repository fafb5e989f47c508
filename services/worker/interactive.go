package worker

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
)

// handleInteractive serves one interactive call (lane package doc): the
// same routing and failover as a durable job, nothing stored, the answer
// sent to the request's reply inbox.
func (s *Service) handleInteractive(m *nats.Msg) {
	if m.Reply == "" {
		s.log.Warn("interactive request without a reply subject dropped")
		return
	}
	env, err := events.Decode(m.Data)
	var job *events.JobSubmitted
	if err == nil {
		var ok bool
		if job, ok = env.Data.(*events.JobSubmitted); !ok {
			err = fmt.Errorf("event type %s is not %s", env.Type, events.TypeJobSubmitted)
		}
	}
	if err != nil {
		s.met.jobs.WithLabelValues(string(events.JobFailed), string(events.LaneInteractive)).Inc()
		s.reply(m.Reply, lane.Reply{Status: http.StatusBadRequest, ContentType: lane.ContentTypeJSON,
			Body: lane.ErrorBody("invalid interactive request: "+err.Error(), lane.TypeInvalidRequest, lane.CodeInvalidRequest)})
		return
	}
	s.met.inflight.WithLabelValues(string(events.LaneInteractive)).Inc()
	defer s.met.inflight.WithLabelValues(string(events.LaneInteractive)).Dec()

	cr, _ := events.ParseChatRequest(job.Request) // Decode validated it
	deadline := s.now().Add(s.cfg.RequestTimeout)
	if job.Deadline != nil {
		deadline = *job.Deadline
	}
	budget := job.MaxAttempts
	if budget == 0 {
		budget = s.cfg.MaxAttempts
	}

	ctx, cancel := context.WithCancelCause(s.hard)
	s.mu.Lock()
	s.inflight[m.Reply] = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.inflight, m.Reply)
		s.mu.Unlock()
		cancel(nil)
	}()
	ctx, dcancel := context.WithDeadline(ctx, deadline)
	defer dcancel()

	r := &run{job: job, lane: events.LaneInteractive, model: cr.Model, body: job.Request, stream: cr.Stream,
		deadline: deadline, budget: budget, delivery: 1}
	if cr.Stream {
		r.sink = &natsSink{s: s, subject: m.Reply, job: job.ID}
	}
	res := s.execute(ctx, r)
	defer s.flushOutcomes(r)

	now := s.now()
	status := jobStatusOf(res.kind)
	s.met.jobs.WithLabelValues(string(status), string(events.LaneInteractive)).Inc()
	if !job.SubmittedAt.IsZero() {
		s.met.duration.WithLabelValues(string(events.LaneInteractive)).Observe(now.Sub(job.SubmittedAt).Seconds())
	}

	rep := lane.Reply{Endpoint: res.endpoint, Attempts: len(r.attempts), JobID: job.ID, ContentType: lane.ContentTypeJSON}
	if r.started { // a stream went out: it ends with end or error, never as a plain reply
		if res.kind == kindSucceeded {
			rep.Stream, rep.ContentType = lane.StreamEnd, ""
		} else {
			status, typ, code := replyStatus(res)
			rep.Status, rep.Stream = status, lane.StreamError
			rep.Body = lane.ErrorBody(errMessage(res), typ, code)
		}
		s.reply(m.Reply, rep)
		return
	}
	code, typ, ecode := replyStatus(res)
	rep.Status = code
	switch {
	case res.kind == kindSucceeded:
		rep.Body = res.response
	case res.kind == kindCallerError && lane.IsErrorBody(res.response):
		rep.Body = res.response // the upstream's own error, as OpenAI clients expect it
	default:
		rep.Body = lane.ErrorBody(errMessage(res), typ, ecode)
	}
	if res.kind == kindWait {
		rep.RetryAfter = res.retryAt.Sub(now)
	}
	if cr.Stream && res.kind != kindSucceeded {
		rep.Stream = lane.StreamError
	}
	s.reply(m.Reply, rep)
}

func errMessage(res result) string {
	if res.err != nil && res.err.Message != "" {
		return res.err.Message
	}
	return "the call failed"
}

// jobStatusOf is the status an interactive call is counted under.
func jobStatusOf(k kind) events.JobStatus {
	switch k {
	case kindSucceeded:
		return events.JobSucceeded
	case kindExpired:
		return events.JobExpired
	case kindAbandoned, kindCancelled:
		return events.JobCancelled
	}
	return events.JobFailed
}

// refuseInteractive answers a call that arrived while the worker stops.
func (s *Service) refuseInteractive(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	s.reply(m.Reply, lane.Reply{Status: http.StatusServiceUnavailable, ContentType: lane.ContentTypeJSON,
		RetryAfter: time.Second, Refused: true,
		Body: lane.ErrorBody("the worker is shutting down; retry", lane.TypeUnavailable, lane.CodeNoEndpoint)})
}

// refuseBusy answers a call that arrived while this worker runs as many
// interactive calls as it takes (limit): 503, retry in a second.
func (s *Service) refuseBusy(m *nats.Msg, limit int) {
	s.met.busy.Inc()
	if m.Reply == "" {
		return
	}
	s.reply(m.Reply, lane.Reply{Status: http.StatusServiceUnavailable, ContentType: lane.ContentTypeJSON,
		RetryAfter: time.Second, Refused: true,
		Body: lane.ErrorBody(fmt.Sprintf("the worker is running its limit of %d interactive calls; retry", limit),
			lane.TypeUnavailable, lane.CodeWorkerBusy)})
}

// cancelInteractive stops the call whose reply inbox is reply, if this
// worker runs it.
func (s *Service) cancelInteractive(reply string) {
	s.mu.Lock()
	c := s.inflight[reply]
	s.mu.Unlock()
	if c != nil {
		c(errClientGone)
	}
}

func (s *Service) reply(subject string, r lane.Reply) {
	if err := s.o.NC.PublishMsg(r.Msg(subject)); err != nil {
		s.log.Warn("send interactive reply", "subject", subject, "err", err)
	}
}

// natsSink relays a stream to the gateway's reply inbox.
type natsSink struct {
	s       *Service
	subject string
	job     string
}

func (k *natsSink) start(endpoint string, attempts int) error {
	return k.s.o.NC.PublishMsg(lane.Reply{Status: http.StatusOK, Endpoint: endpoint, Attempts: attempts,
		Stream: lane.StreamStart, ContentType: lane.ContentTypeSSE, JobID: k.job}.Msg(k.subject))
}

func (k *natsSink) data(b []byte) error {
	return k.s.o.NC.PublishMsg(lane.Reply{Stream: lane.StreamData, Body: b}.Msg(k.subject))
}
