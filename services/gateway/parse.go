package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nuid"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// JobRequest is the body of POST /v1/jobs and of `switchboard submit --file`
// (schema schemas.JobRequest).
type JobRequest struct {
	// ID is the job id and idempotency key; when the Idempotency-Key
	// header is given too, the two must be equal.
	ID string `json:"id,omitempty"`
	// Request is an OpenAI chat-completions request body.
	Request  json.RawMessage `json:"request"`
	Priority events.Priority `json:"priority,omitempty"`
	// Deadline is an RFC 3339 time; Timeout a Go duration from submission.
	// At most one of them.
	Deadline    string            `json:"deadline,omitempty"`
	Timeout     string            `json:"timeout,omitempty"`
	MaxAttempts int               `json:"max_attempts,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	CallbackURL string            `json:"callback_url,omitempty"`
}

// ModelSet is the set of model names callers may ask for: every model and
// alias of every configured endpoint.
type ModelSet map[string]struct{}

// ModelsOf returns the models and aliases endpoints serve.
func ModelsOf(endpoints []config.Endpoint) ModelSet {
	s := ModelSet{}
	for _, ep := range endpoints {
		for _, m := range ep.Models {
			s[m] = struct{}{}
		}
		for a := range ep.Aliases {
			s[a] = struct{}{}
		}
	}
	return s
}

// Has reports whether some endpoint serves model.
func (s ModelSet) Has(model string) bool {
	_, ok := s[model]
	return ok
}

// Sorted lists the models in order.
func (s ModelSet) Sorted() []string {
	out := make([]string, 0, len(s))
	for m := range s {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// Parser turns job request bodies into jobs, refusing bad ones with an
// *Error that carries the HTTP status and the reason.
type Parser struct {
	// Models are the models a job may ask for; nil accepts any model (the
	// workers refuse one no endpoint serves).
	Models ModelSet
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// NewID returns a fresh job id: 22 characters of [0-9A-Za-z], unique
// across processes.
func NewID() string { return nuid.Next() }

// Parse validates body (a JobRequest) against its JSON Schema and the job
// invariants and returns the job to submit, stamped now. idempotencyKey, when
// set, is the job id. A refusal is an *Error: 400 for a malformed request
// (with every violation), 422 for a model no endpoint serves.
func (p *Parser) Parse(body []byte, idempotencyKey string) (*events.JobSubmitted, error) {
	if len(body) == 0 {
		return nil, badRequest("", "invalid_request", "the request body is empty: want a job request, JSON")
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		return nil, badRequest("", "invalid_json", "the request body is not valid JSON: %v", err)
	}
	var jr JobRequest
	// Lenient decode first, for clearer messages on the common mistakes
	// than the schema's; the schema below is the authority.
	_ = json.Unmarshal(body, &jr)
	if jr.Deadline != "" && jr.Timeout != "" {
		return nil, badRequest("timeout", "invalid_request", "give deadline or timeout, not both")
	}
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	submitted := now().UTC()
	var deadline *time.Time
	switch {
	case jr.Deadline != "":
		d, err := time.Parse(time.RFC3339Nano, jr.Deadline)
		if err != nil {
			return nil, badRequest("deadline", "invalid_deadline", "deadline %q is not an RFC 3339 time", jr.Deadline)
		}
		if !d.After(submitted) {
			return nil, badRequest("deadline", "invalid_deadline", "deadline %s is in the past (now %s)",
				d.Format(time.RFC3339), submitted.Format(time.RFC3339))
		}
		d = d.UTC()
		deadline = &d
	case jr.Timeout != "":
		t, err := time.ParseDuration(jr.Timeout)
		if err != nil || t <= 0 {
			return nil, badRequest("timeout", "invalid_timeout", "timeout %q is not a positive duration such as 90s or 5m", jr.Timeout)
		}
		d := submitted.Add(t)
		deadline = &d
	}

	if err := schemas.Validate(schemas.JobRequest, body); err != nil {
		var se *schemas.Error
		if errors.As(err, &se) {
			return nil, badRequest(param(se), "invalid_request", "invalid job request: %s", strings.Join(se.Violations, "; "))
		}
		return nil, badRequest("", "invalid_request", "invalid job request: %v", err)
	}
	if err := json.Unmarshal(body, &jr); err != nil {
		return nil, badRequest("", "invalid_request", "invalid job request: %v", err)
	}

	id := jr.ID
	if idempotencyKey != "" {
		if err := events.CheckName("Idempotency-Key", idempotencyKey); err != nil {
			return nil, badRequest("Idempotency-Key", "invalid_idempotency_key", "%v", err)
		}
		if id != "" && id != idempotencyKey {
			return nil, badRequest("id", "invalid_request",
				"the Idempotency-Key header %q differs from the body's id %q", idempotencyKey, id)
		}
		id = idempotencyKey
	}
	if id == "" {
		id = NewID()
	}

	cr, err := events.ParseChatRequest(jr.Request)
	if err != nil {
		return nil, badRequest("request", "invalid_request", "request %v", err)
	}
	if p.Models != nil && !p.Models.Has(cr.Model) {
		return nil, &Error{Status: http.StatusUnprocessableEntity, Type: typeInvalidRequest, Param: "request.model",
			Code: "model_not_found", Message: "model " + quote(cr.Model) + " is not served by any configured endpoint (see GET /v1/models)"}
	}
	prio := jr.Priority
	if prio == "" {
		prio = events.PriorityNormal
	}
	job := &events.JobSubmitted{
		ID: id, Priority: prio, Request: jr.Request, Deadline: deadline, MaxAttempts: jr.MaxAttempts,
		Metadata: jr.Metadata, CallbackURL: jr.CallbackURL, SubmittedAt: submitted,
	}
	if err := job.Validate(); err != nil {
		return nil, badRequest("", "invalid_request", "invalid job: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return job, nil
}

// param names the field of the first schema violation, e.g. "request.model".
func param(se *schemas.Error) string {
	if len(se.Violations) == 0 {
		return ""
	}
	v := se.Violations[0]
	ptr, _, _ := strings.Cut(v, ": ")
	ptr = strings.Trim(ptr, "/")
	return strings.ReplaceAll(ptr, "/", ".")
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
