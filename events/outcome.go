package events

import (
	"errors"
	"fmt"
	"time"
)

// RequestOutcome is the data of a switchboard.request.outcome.v1 event: the
// result of one upstream chat call, published by a worker on
// OutcomeSubject(Endpoint) with source "/worker/<instance>".
type RequestOutcome struct {
	Endpoint string `json:"endpoint"`
	// Model is the upstream model name the call used (after alias mapping).
	Model      string        `json:"model"`
	JobID      string        `json:"job_id,omitempty"`
	Lane       Lane          `json:"lane"`
	Attempt    int           `json:"attempt"`
	Outcome    RequestResult `json:"outcome"`
	ErrorClass ErrorClass    `json:"error_class,omitempty"`
	// Error is a short human-readable reason. It never holds an API key.
	Error      string  `json:"error,omitempty"`
	StatusCode int     `json:"status_code,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
	TTFTMS     float64 `json:"ttft_ms,omitempty"`
	// ThrottledUntil is when a 429's Retry-After (or reset hint) ends.
	ThrottledUntil *time.Time `json:"throttled_until,omitempty"`
	// TrialLease is the half-open trial lease the call ran under, if any.
	TrialLease string    `json:"trial_lease,omitempty"`
	StartedAt  time.Time `json:"started_at"`
}

// EventType implements Payload.
func (*RequestOutcome) EventType() string { return TypeRequestOutcome }

// Subject implements Payload.
func (o *RequestOutcome) Subject() string { return OutcomeSubject(o.Endpoint) }

// Validate implements Payload.
func (o *RequestOutcome) Validate() error {
	var errs []error
	if err := CheckName("endpoint", o.Endpoint); err != nil {
		errs = append(errs, err)
	}
	if o.Model == "" {
		errs = append(errs, errors.New("model is empty"))
	}
	if o.JobID != "" {
		if err := CheckName("job_id", o.JobID); err != nil {
			errs = append(errs, err)
		}
	}
	switch o.Lane {
	case LaneDurable, LaneInteractive:
	default:
		errs = append(errs, fmt.Errorf("lane %q is not one of durable, interactive", o.Lane))
	}
	if o.Attempt < 1 {
		errs = append(errs, fmt.Errorf("attempt %d must be at least 1", o.Attempt))
	}
	switch o.Outcome {
	case RequestSuccess:
		if o.ErrorClass != ClassNone {
			errs = append(errs, fmt.Errorf("outcome success has error_class %q", o.ErrorClass))
		}
	case RequestError:
		if !o.ErrorClass.Known() {
			errs = append(errs, fmt.Errorf("outcome error needs a known error_class, got %q", o.ErrorClass))
		}
	default:
		errs = append(errs, fmt.Errorf("outcome %q is not one of success, error", o.Outcome))
	}
	if o.LatencyMS < 0 || o.TTFTMS < 0 {
		errs = append(errs, errors.New("latency_ms and ttft_ms must not be negative"))
	}
	errs = appendStatusAndError(errs, o.StatusCode, o.Error)
	if o.StartedAt.IsZero() {
		errs = append(errs, errors.New("started_at is missing"))
	}
	return errors.Join(errs...)
}
