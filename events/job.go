package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"
	"unicode/utf8"
)

// Limits a job must respect.
const (
	MaxJobAttempts    = 20
	MaxMetadataKeys   = 32
	MaxMetadataLength = 1024
)

// JobSubmitted is the data of a switchboard.chat.job.submitted.v1 event. Its
// event id is the job id (the client's idempotency key, else generated), which
// is also the Nats-Msg-Id, so a resubmission within the stream's duplicate
// window is dropped by JetStream and one after it by the job record.
//
// Durable jobs are published on JobSubmitSubject(Priority); interactive ones
// are NATS requests on SubjectJobInteractive.
type JobSubmitted struct {
	ID       string   `json:"id"`
	Priority Priority `json:"priority,omitempty"`
	// Request is an OpenAI chat-completions request body, passed upstream as
	// is except for the model (alias mapping).
	Request json.RawMessage `json:"request"`
	// Deadline after which the job expires; zero means the worker default.
	Deadline *time.Time `json:"deadline,omitempty"`
	// MaxAttempts bounds upstream calls (failovers included); zero means
	// the worker default.
	MaxAttempts int               `json:"max_attempts,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	// CallbackURL receives the finished job, signed, when set.
	CallbackURL string    `json:"callback_url,omitempty"`
	SubmittedAt time.Time `json:"submitted_at"`
}

// EventType implements Payload.
func (*JobSubmitted) EventType() string { return TypeJobSubmitted }

// Subject implements Payload: the durable submit subject of the job.
func (j *JobSubmitted) Subject() string {
	p := j.Priority
	if p == "" {
		p = PriorityNormal
	}
	return JobSubmitSubject(p)
}

// Validate implements Payload. It parses the chat request too.
func (j *JobSubmitted) Validate() error {
	var errs []error
	if err := CheckName("id", j.ID); err != nil {
		errs = append(errs, err)
	}
	switch j.Priority {
	case "", PriorityHigh, PriorityNormal, PriorityLow:
	default:
		errs = append(errs, fmt.Errorf("priority %q is not one of high, normal, low", j.Priority))
	}
	if _, err := ParseChatRequest(j.Request); err != nil {
		errs = append(errs, fmt.Errorf("request: %w", err))
	}
	if j.MaxAttempts < 0 || j.MaxAttempts > MaxJobAttempts {
		errs = append(errs, fmt.Errorf("max_attempts %d is outside 0..%d", j.MaxAttempts, MaxJobAttempts))
	}
	if len(j.Metadata) > MaxMetadataKeys {
		errs = append(errs, fmt.Errorf("metadata has %d keys, at most %d allowed", len(j.Metadata), MaxMetadataKeys))
	}
	for k, v := range j.Metadata {
		if len(k) > MaxMetadataLength || len(v) > MaxMetadataLength {
			errs = append(errs, fmt.Errorf("metadata %q: keys and values are at most %d bytes", k, MaxMetadataLength))
			break
		}
	}
	if j.CallbackURL != "" {
		if u, err := url.Parse(j.CallbackURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("callback_url %q is not an absolute http(s) URL", j.CallbackURL))
		}
	}
	if j.SubmittedAt.IsZero() {
		errs = append(errs, errors.New("submitted_at is missing"))
	}
	if j.Deadline != nil && !j.SubmittedAt.IsZero() && !j.Deadline.After(j.SubmittedAt) {
		errs = append(errs, fmt.Errorf("deadline %s is not after submitted_at %s",
			j.Deadline.Format(time.RFC3339), j.SubmittedAt.Format(time.RFC3339)))
	}
	return errors.Join(errs...)
}

// ChatRequest is the part of an OpenAI chat-completions request Switchboard
// reads; the rest passes through untouched.
type ChatRequest struct {
	Model               string            `json:"model"`
	Messages            []json.RawMessage `json:"messages"`
	Stream              bool              `json:"stream,omitempty"`
	MaxTokens           *int              `json:"max_tokens,omitempty"`
	MaxCompletionTokens *int              `json:"max_completion_tokens,omitempty"`
}

// ParseChatRequest parses and checks a chat-completions request body.
func ParseChatRequest(body []byte) (*ChatRequest, error) {
	if len(body) == 0 {
		return nil, errors.New("is missing")
	}
	var r ChatRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("is not a valid chat-completions request: %w", err)
	}
	var errs []error
	if r.Model == "" {
		errs = append(errs, errors.New("model is missing"))
	}
	if len(r.Messages) == 0 {
		errs = append(errs, errors.New("messages is empty"))
	}
	if r.MaxTokens != nil && *r.MaxTokens < 1 {
		errs = append(errs, fmt.Errorf("max_tokens %d must be at least 1", *r.MaxTokens))
	}
	if r.MaxCompletionTokens != nil && *r.MaxCompletionTokens < 1 {
		errs = append(errs, fmt.Errorf("max_completion_tokens %d must be at least 1", *r.MaxCompletionTokens))
	}
	return &r, errors.Join(errs...)
}

// Attempt is one upstream call made for a job.
type Attempt struct {
	N          int           `json:"n"`
	Endpoint   string        `json:"endpoint"`
	Model      string        `json:"model"`
	Worker     string        `json:"worker,omitempty"`
	Outcome    RequestResult `json:"outcome"`
	ErrorClass ErrorClass    `json:"error_class,omitempty"`
	Error      string        `json:"error,omitempty"`
	StatusCode int           `json:"status_code,omitempty"`
	LatencyMS  float64       `json:"latency_ms"`
	StartedAt  time.Time     `json:"started_at"`
}

// JobError is why a job did not succeed.
type JobError struct {
	Class      ErrorClass `json:"class,omitempty"`
	Message    string     `json:"message"`
	StatusCode int        `json:"status_code,omitempty"`
}

// JobRecord is the record of a job in the KV bucket switchboard-jobs (key =
// job id) and, once terminal, the data of its finished event (contract).
type JobRecord struct {
	ID       string    `json:"id"`
	Status   JobStatus `json:"status"`
	Lane     Lane      `json:"lane"`
	Priority Priority  `json:"priority,omitempty"`
	// Model is the model the caller asked for (before alias mapping).
	Model       string            `json:"model"`
	Attempts    []Attempt         `json:"attempts,omitempty"`
	Endpoint    string            `json:"endpoint,omitempty"` // the endpoint that served it
	Response    json.RawMessage   `json:"response,omitempty"` // the upstream chat completion
	Error       *JobError         `json:"error,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	CallbackURL string            `json:"callback_url,omitempty"`
	Deadline    *time.Time        `json:"deadline,omitempty"`
	MaxAttempts int               `json:"max_attempts,omitempty"`
	// Deliveries counts how often JetStream delivered the job to a worker.
	Deliveries int `json:"deliveries,omitempty"`
	// DeadLetter says why the job went to the dead-letter stream, if it did.
	DeadLetter  string     `json:"dead_letter,omitempty"`
	SubmittedAt time.Time  `json:"submitted_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	UpdatedAt   time.Time  `json:"updated_at"`
}

// JobFinished is the data of a switchboard.chat.job.finished.v1 event: the
// job's terminal record, published once on JobDoneSubject(ID) with event id
// FinishedEventID(ID).
type JobFinished struct {
	JobRecord
}

// FinishedEventID is the event id (and Nats-Msg-Id) of a job's finished
// event, so that a second publish collapses.
func FinishedEventID(jobID string) string { return jobID + ".finished" }

// EventType implements Payload.
func (*JobFinished) EventType() string { return TypeJobFinished }

// Subject implements Payload.
func (f *JobFinished) Subject() string { return JobDoneSubject(f.ID) }

// Validate implements Payload.
func (f *JobFinished) Validate() error {
	var errs []error
	if err := CheckName("id", f.ID); err != nil {
		errs = append(errs, err)
	}
	if !f.Status.Terminal() {
		errs = append(errs, fmt.Errorf("status %q is not terminal", f.Status))
	}
	if f.Status == JobSucceeded && len(f.Response) == 0 {
		errs = append(errs, errors.New("succeeded job has no response"))
	}
	if f.Status != JobSucceeded && f.Error == nil {
		errs = append(errs, fmt.Errorf("%s job has no error", f.Status))
	}
	if f.FinishedAt == nil {
		errs = append(errs, errors.New("finished_at is missing"))
	}
	return errors.Join(append(errs, f.JobRecord.check()...)...)
}

// check returns what the job record schema requires beyond the finished
// event's own rules: the lane, the names, the attempts, the counters, the
// response (an object) and the metadata limits.
func (r *JobRecord) check() []error {
	var errs []error
	switch r.Lane {
	case LaneDurable, LaneInteractive:
	default:
		errs = append(errs, fmt.Errorf("lane %q is not one of durable, interactive", r.Lane))
	}
	switch r.Priority {
	case "", PriorityHigh, PriorityNormal, PriorityLow:
	default:
		errs = append(errs, fmt.Errorf("priority %q is not one of high, normal, low", r.Priority))
	}
	if r.Endpoint != "" {
		if err := CheckName("endpoint", r.Endpoint); err != nil {
			errs = append(errs, err)
		}
	}
	for i, a := range r.Attempts {
		var aerrs []error
		if a.N < 1 {
			aerrs = append(aerrs, fmt.Errorf("n %d must be at least 1", a.N))
		}
		if err := CheckName("endpoint", a.Endpoint); err != nil {
			aerrs = append(aerrs, err)
		}
		switch a.Outcome {
		case RequestSuccess, RequestError:
		default:
			aerrs = append(aerrs, fmt.Errorf("outcome %q is not one of success, error", a.Outcome))
		}
		if a.ErrorClass != ClassNone && !a.ErrorClass.Known() {
			aerrs = append(aerrs, fmt.Errorf("error_class %q is unknown", a.ErrorClass))
		}
		if a.LatencyMS < 0 {
			aerrs = append(aerrs, errors.New("latency_ms must not be negative"))
		}
		for _, err := range aerrs {
			errs = append(errs, fmt.Errorf("attempts[%d]: %w", i, err))
		}
	}
	if len(r.Response) > 0 && firstByte(r.Response) != '{' {
		errs = append(errs, errors.New("response is not a JSON object"))
	}
	if r.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("max_attempts %d must not be negative", r.MaxAttempts))
	}
	if r.Deliveries < 0 {
		errs = append(errs, fmt.Errorf("deliveries %d must not be negative", r.Deliveries))
	}
	if len(r.Metadata) > MaxMetadataKeys {
		errs = append(errs, fmt.Errorf("metadata has %d keys, at most %d allowed", len(r.Metadata), MaxMetadataKeys))
	}
	for k, v := range r.Metadata {
		if len(v) > MaxMetadataLength && utf8.RuneCountInString(v) > MaxMetadataLength {
			errs = append(errs, fmt.Errorf("metadata %q: values are at most %d characters", k, MaxMetadataLength))
			break
		}
	}
	return errs
}

// firstByte is the first byte of b that is not JSON white space (0 if none).
func firstByte(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}
