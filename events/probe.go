package events

import (
	"errors"
	"fmt"
	"time"
)

// ProbeResult is the data of a switchboard.probe.result.v1 event, published
// on ProbeSubject(Endpoint) with source "/prober/<vantage>".
type ProbeResult struct {
	Endpoint   string       `json:"endpoint"`
	Vantage    string       `json:"vantage"`
	Kind       ProbeKind    `json:"kind"`
	Outcome    ProbeOutcome `json:"outcome"`
	ErrorClass ErrorClass   `json:"error_class,omitempty"`
	// Error is a short human-readable reason. It never holds an API key.
	Error      string  `json:"error,omitempty"`
	StatusCode int     `json:"status_code,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
	// TTFTMS is the time to the first token of a completion probe.
	TTFTMS float64 `json:"ttft_ms,omitempty"`
	// Model is the model a completion probe asked for.
	Model string `json:"model,omitempty"`
	// MissingModels lists configured models a models probe did not find.
	MissingModels []string `json:"missing_models,omitempty"`
	// ThrottledUntil is when a 429's Retry-After (or reset hint) ends.
	ThrottledUntil *time.Time `json:"throttled_until,omitempty"`
	// IntervalMS is the prober's interval for this endpoint, so that the
	// evaluator can tell a vantage that stopped reporting from one that passes.
	IntervalMS int64     `json:"interval_ms"`
	StartedAt  time.Time `json:"started_at"`
}

// EventType implements Payload.
func (*ProbeResult) EventType() string { return TypeProbeResult }

// Subject implements Payload.
func (p *ProbeResult) Subject() string { return ProbeSubject(p.Endpoint) }

// Validate implements Payload.
func (p *ProbeResult) Validate() error {
	var errs []error
	if err := CheckName("endpoint", p.Endpoint); err != nil {
		errs = append(errs, err)
	}
	if p.Vantage == "" {
		errs = append(errs, errors.New("vantage is empty"))
	}
	switch p.Kind {
	case ProbeHealth, ProbeModels, ProbeCompletion:
	default:
		errs = append(errs, fmt.Errorf("kind %q is not one of health, models, completion", p.Kind))
	}
	switch p.Outcome {
	case ProbePass:
		if p.ErrorClass != ClassNone {
			errs = append(errs, fmt.Errorf("outcome pass has error_class %q", p.ErrorClass))
		}
	case ProbeFail, ProbeInconclusive:
		if p.ErrorClass == ClassNone {
			errs = append(errs, fmt.Errorf("outcome %s needs an error_class", p.Outcome))
		}
	default:
		errs = append(errs, fmt.Errorf("outcome %q is not one of pass, fail, inconclusive", p.Outcome))
	}
	if p.ErrorClass != ClassNone && !p.ErrorClass.Known() {
		errs = append(errs, fmt.Errorf("error_class %q is unknown", p.ErrorClass))
	}
	if p.LatencyMS < 0 || p.TTFTMS < 0 {
		errs = append(errs, errors.New("latency_ms and ttft_ms must not be negative"))
	}
	if p.StartedAt.IsZero() {
		errs = append(errs, errors.New("started_at is missing"))
	}
	return errors.Join(errs...)
}

// Known reports whether c is one of the classes this contract defines.
func (c ErrorClass) Known() bool {
	switch c {
	case ClassTimeout, ClassConnect, ClassDNS, ClassTLS, ClassHTTP5xx, ClassHTTP4xx, ClassHTTP429,
		ClassAuth, ClassBadBody, ClassStreamBroken, ClassModelMissing, ClassClientError,
		ClassCallerCanceled, ClassInternal:
		return true
	}
	return false
}

// ClassOfStatus classifies an HTTP status that is not a success.
func ClassOfStatus(code int) ErrorClass {
	switch {
	case code == 429:
		return ClassHTTP429
	case code == 401 || code == 403:
		return ClassAuth
	case code == 400 || code == 404 || code == 413 || code == 422:
		return ClassClientError
	case code >= 500:
		return ClassHTTP5xx
	case code >= 400:
		return ClassHTTP4xx
	}
	return ClassBadBody // 1xx/3xx where a 200 was expected
}
