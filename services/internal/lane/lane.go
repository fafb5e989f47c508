// Package lane is the contract between the gateway and the request workers
// for the interactive lane (the OpenAI-compatible API), plus the small
// durable-lane conventions both sides share. The gateway imports it to build
// requests and read replies; the workers import it to read requests and
// build replies. Nothing here does I/O except PublishCancel.
//
// # Interactive request
//
// The gateway publishes one core NATS message on
// events.SubjectJobInteractive (the workers subscribe in queue group
// events.QueueWorkers, so exactly one worker takes it). Its body is the
// JobSubmitted CloudEvent in structured mode (see NewRequest); its Reply is a
// unique inbox the gateway subscribed to before publishing (nc.NewInbox()).
// The job's Deadline is the gateway's own timeout: the worker never works
// past it. A request without a reply subject is dropped by the worker.
//
// # Replies, non-stream
//
// Exactly one message on the inbox: headers HeaderStatus (the HTTP status
// for the client), HeaderEndpoint, HeaderAttempts, Content-Type; body = the
// upstream response body on success, unmodified, or an OpenAI-style error
// JSON (ErrorBody) otherwise. Statuses: 200 (or whatever 2xx the upstream
// gave); the upstream's own 4xx for a caller error (400/404/413/422, body =
// the upstream's error JSON when it is one); 400 for a request the worker
// could not read; 404 when no configured endpoint serves the model; 502 when
// every attempt failed; 503 when no endpoint can take the call now or
// before the deadline (with Retry-After when an endpoint reopens at a known
// time), when the worker already runs its limit of interactive calls
// (CodeWorkerBusy, Retry-After 1: the worker answers at once instead of
// holding the call), and when the call was cancelled or the worker is
// stopping. A worker that refuses a call it never started, because it is
// busy or stopping, sets HeaderRefused: the gateway then sends the request
// again, to whichever worker the queue group picks, up to RefusedTries
// times in all; 504 when the deadline passed while the call ran.
//
// # Replies, stream ("stream": true in the chat request)
//
//   - StreamStart: headers as above (status 200), empty body. Sent only once
//     the upstream stream produced its first event, so that every failover
//     happens before it.
//   - StreamData, any number: body = raw SSE bytes exactly as the upstream
//     sent them (e.g. "data: {...}\n\n"), batched as they were read, but
//     whole events only: a message holds one or more complete events (an
//     event the upstream broke off in the middle is never sent), so that an
//     error event the gateway appends starts on an event boundary. The
//     gateway writes the bytes through in order and flushes.
//   - then exactly one of StreamEnd (empty body; the upstream sent
//     "data: [DONE]") or StreamError (HeaderStatus set to what the status
//     would have been, e.g. 502 or 504; body = ErrorBody, code
//     CodeStreamBroken, CodeDeadline or CodeCancelled): the upstream broke
//     after the first event, and the gateway must show the client an error
//     event, never a normal end.
//   - If every attempt fails before the first event, the only message is an
//     error reply exactly like the non-stream one (4xx/5xx status and
//     ErrorBody) with HeaderStream = StreamError. Since no StreamStart came
//     first, the gateway can still answer with that HTTP status.
//
// All messages of one call come from one worker connection, so NATS keeps
// them in order.
//
// # Cancellation
//
// When the client goes away, the gateway calls PublishCancel(nc, inbox):
// one message on SubjectCancel whose body is the reply inbox. Every worker
// holds one plain subscription to SubjectCancel and stops the call whose
// inbox that is, if it has it (closing the upstream connection). This costs
// one subscription per worker process instead of a subscribe/unsubscribe
// per call (which, in a cluster, is interest propagated to every node on
// every request); cancels are rare, so the fan-out to all workers is cheap.
// A cancel that arrives before the worker started the call, or after it
// finished, is ignored: the Deadline still bounds the work.
package lane

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-llm/switchboard/events"
)

// Reply headers (contract between gateway and workers).
const (
	// HeaderStatus is the HTTP status the gateway answers the client with.
	HeaderStatus = "Switchboard-Status"
	// HeaderEndpoint names the endpoint that served the call (the last one
	// tried when every attempt failed; empty when none was tried).
	HeaderEndpoint = "Switchboard-Endpoint"
	// HeaderAttempts is the number of upstream calls made.
	HeaderAttempts = "Switchboard-Attempts"
	// HeaderStream is the phase of a streamed reply (StreamStart ...);
	// absent on a non-stream reply.
	HeaderStream = "Switchboard-Stream"
	// HeaderRetryAfter, on a 503, is how many whole seconds until an
	// endpoint may take the call again; the gateway copies it to the HTTP
	// Retry-After header.
	HeaderRetryAfter = "Retry-After"
	// HeaderContentType is the media type of the body.
	HeaderContentType = "Content-Type"
	// HeaderJobID is the job id the worker ran the call as (for logs and
	// the X-Request-Id a gateway may return).
	HeaderJobID = "Switchboard-Job-Id"
	// HeaderRefused ("1") marks a 503 from a worker that refused the call
	// without starting it (it runs its limit of interactive calls, or it is
	// stopping): another worker may take it at once.
	HeaderRefused = "Switchboard-Refused"
)

// RefusedTries is how many times in all the gateway sends a call that
// workers refuse (HeaderRefused).
const RefusedTries = 3

// Stream phases, the values of HeaderStream.
const (
	StreamStart = "start"
	StreamData  = "data"
	StreamEnd   = "end"
	StreamError = "error"
)

// SubjectCancel is where the gateway announces that the client of an
// interactive call went away; the body is the call's reply inbox.
const SubjectCancel = "switchboard.jobs.interactive.cancel"

// Error codes in ErrorBody, for errors the worker produces itself.
const (
	CodeInvalidRequest = "invalid_request"       // 400: the request could not be read
	CodeModelNotServed = "model_not_found"       // 404: no configured endpoint serves the model
	CodeInternal       = "internal_error"        // 500: the worker failed
	CodeUpstreamFailed = "upstream_failed"       // 502: every attempt failed
	CodeNoEndpoint     = "no_endpoint_available" // 503: no endpoint admits the call now
	CodeWorkerBusy     = "workers_busy"          // 503: the worker runs its limit of interactive calls
	CodeDeadline       = "deadline_exceeded"     // 504: the job's deadline passed
	CodeStreamBroken   = "stream_broken"         // the upstream stream broke after its first event
	CodeCancelled      = "cancelled"             // the gateway cancelled the call
)

// Error types in ErrorBody.
const (
	TypeInvalidRequest = "invalid_request_error" // OpenAI's type for the caller's errors
	TypeUpstream       = "upstream_error"        // endpoint failures
	TypeUnavailable    = "service_unavailable"   // no endpoint, deadline
	TypeServer         = "server_error"          // the worker's own failure
)

// Content types of reply bodies.
const (
	ContentTypeJSON = "application/json"  // non-stream bodies and error bodies
	ContentTypeSSE  = "text/event-stream" // the Content-Type of a StreamStart
)

// maxErrorMessageLen bounds the message in ErrorBody.
const maxErrorMessageLen = 1024

// ErrorJSON is the OpenAI-style error body.
type ErrorJSON struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the "error" object of ErrorJSON.
type ErrorDetail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code,omitempty"`
}

// ErrorBody marshals an OpenAI-style error JSON.
func ErrorBody(message, typ, code string) []byte {
	if len(message) > maxErrorMessageLen {
		i := maxErrorMessageLen
		for i > 0 && !utf8.RuneStart(message[i]) {
			i--
		}
		message = message[:i] + "..."
	}
	b, _ := json.Marshal(ErrorJSON{Error: ErrorDetail{Message: message, Type: typ, Code: code}})
	return b
}

// IsErrorBody reports whether b is an OpenAI-style error JSON (an object
// with an "error" object holding a message), as upstreams send with a 4xx.
func IsErrorBody(b []byte) bool {
	var e struct {
		Error *struct {
			Message *string `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal(b, &e) == nil && e.Error != nil && e.Error.Message != nil
}

// Reply is one message of a worker's reply to an interactive call.
type Reply struct {
	// Status is the HTTP status for the client (0 on data/end messages).
	Status int
	// Endpoint and Attempts say which endpoint served the call and how
	// many upstream calls it took.
	Endpoint string
	Attempts int
	// Stream is the phase of a streamed reply, "" for a non-stream reply.
	Stream string
	// ContentType of Body ("" = none).
	ContentType string
	// RetryAfter, on a 503, is when an endpoint may take the call again
	// (rounded up to whole seconds in the header; 0 = unknown).
	RetryAfter time.Duration
	// JobID is the job id the call ran as.
	JobID string
	// Refused: the worker refused the call without starting it
	// (HeaderRefused).
	Refused bool
	Body    []byte
}

// Msg builds the NATS message of r for the reply inbox subject.
func (r Reply) Msg(subject string) *nats.Msg {
	m := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: r.Body}
	if r.Status != 0 {
		m.Header.Set(HeaderStatus, strconv.Itoa(r.Status))
	}
	if r.Endpoint != "" {
		m.Header.Set(HeaderEndpoint, r.Endpoint)
	}
	if r.Attempts != 0 {
		m.Header.Set(HeaderAttempts, strconv.Itoa(r.Attempts))
	}
	if r.Stream != "" {
		m.Header.Set(HeaderStream, r.Stream)
	}
	if r.ContentType != "" {
		m.Header.Set(HeaderContentType, r.ContentType)
	}
	if r.RetryAfter > 0 {
		m.Header.Set(HeaderRetryAfter, strconv.FormatInt(int64((r.RetryAfter+time.Second-1)/time.Second), 10))
	}
	if r.JobID != "" {
		m.Header.Set(HeaderJobID, r.JobID)
	}
	if r.Refused {
		m.Header.Set(HeaderRefused, "1")
	}
	return m
}

// ErrBadReply is wrapped by ParseReply's errors.
var ErrBadReply = errors.New("malformed interactive reply")

// ParseReply reads a reply message. It rejects a message whose status or
// attempts header is not a number, whose stream phase is unknown, or that
// has neither a status nor a stream phase. Data and end messages carry no
// status; every other message does.
func ParseReply(m *nats.Msg) (Reply, error) {
	r := Reply{Body: m.Data}
	h := m.Header
	if h == nil {
		return r, fmt.Errorf("%w: no headers", ErrBadReply)
	}
	r.Endpoint = h.Get(HeaderEndpoint)
	r.Stream = h.Get(HeaderStream)
	r.ContentType = h.Get(HeaderContentType)
	r.JobID = h.Get(HeaderJobID)
	r.Refused = h.Get(HeaderRefused) == "1"
	if v := h.Get(HeaderStatus); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			return r, fmt.Errorf("%w: %s %q is not an HTTP status", ErrBadReply, HeaderStatus, v)
		}
		r.Status = n
	}
	if v := h.Get(HeaderAttempts); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return r, fmt.Errorf("%w: %s %q is not a count", ErrBadReply, HeaderAttempts, v)
		}
		r.Attempts = n
	}
	if v := h.Get(HeaderRetryAfter); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return r, fmt.Errorf("%w: %s %q is not whole seconds", ErrBadReply, HeaderRetryAfter, v)
		}
		r.RetryAfter = time.Duration(n) * time.Second
	}
	switch r.Stream {
	case "", StreamStart, StreamError:
		if r.Status == 0 {
			return r, fmt.Errorf("%w: %s is missing", ErrBadReply, HeaderStatus)
		}
	case StreamData, StreamEnd:
	default:
		return r, fmt.Errorf("%w: %s %q is not one of start, data, end, error", ErrBadReply, HeaderStream, r.Stream)
	}
	return r, nil
}

// Succeeded reports whether the reply is a successful non-stream reply or a
// stream start.
func (r Reply) Succeeded() bool { return r.Status >= 200 && r.Status < 300 && r.Stream != StreamError }

// NewRequest builds the interactive request for job: the JobSubmitted
// CloudEvent (event id = job id) on events.SubjectJobInteractive with the
// given reply inbox. source is "/gateway/<instance>".
func NewRequest(source string, job *events.JobSubmitted, reply string) (*nats.Msg, error) {
	if reply == "" {
		return nil, errors.New("interactive request: reply inbox is empty")
	}
	body, err := events.Encode(source, job.ID, job)
	if err != nil {
		return nil, fmt.Errorf("interactive request %s: %w", job.ID, err)
	}
	m := &nats.Msg{Subject: events.SubjectJobInteractive, Reply: reply, Header: nats.Header{}, Data: body}
	m.Header.Set(HeaderContentType, events.ContentType)
	return m, nil
}

// PublishCancel tells the workers that the client of the interactive call
// whose reply inbox is reply went away. It does not wait for anything.
func PublishCancel(nc *nats.Conn, reply string) error {
	if err := nc.Publish(SubjectCancel, []byte(reply)); err != nil {
		return fmt.Errorf("cancel interactive call: %w", err)
	}
	return nil
}

// StatusFor is the HTTP status an upstream status maps to in a failed
// reply: a caller error keeps its status, anything else is a 502.
func StatusFor(upstreamStatus int) int {
	switch upstreamStatus {
	case http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return upstreamStatus
	}
	return http.StatusBadGateway
}

// QueuedRecord is the job record of a job accepted on the durable lane and
// not yet taken by a worker: the gateway KV-Creates it after the PubAck, and
// a worker creates the same when it takes a job that has no record (one
// published straight to NATS).
func QueuedRecord(job *events.JobSubmitted, model string, now time.Time) events.JobRecord {
	p := job.Priority
	if p == "" {
		p = events.PriorityNormal
	}
	return events.JobRecord{
		ID: job.ID, Status: events.JobQueued, Lane: events.LaneDurable, Priority: p, Model: model,
		Metadata: job.Metadata, CallbackURL: job.CallbackURL, Deadline: job.Deadline,
		MaxAttempts: job.MaxAttempts, SubmittedAt: job.SubmittedAt, UpdatedAt: now.UTC(),
	}
}
