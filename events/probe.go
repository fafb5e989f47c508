package events

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
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
	if p.IntervalMS < 0 {
		errs = append(errs, fmt.Errorf("interval_ms %d must not be negative", p.IntervalMS))
	}
	errs = appendStatusAndError(errs, p.StatusCode, p.Error)
	if p.StartedAt.IsZero() {
		errs = append(errs, errors.New("started_at is missing"))
	}
	return errors.Join(errs...)
}

// MaxErrorLen is the most characters the error message of a probe result,
// a request outcome or an attempt may have (the schemas' maxLength).
// Producers cut theirs well below it.
const MaxErrorLen = 2048

// appendStatusAndError checks what the schemas require of status_code
// (absent, or an HTTP status 100-599) and error (at most MaxErrorLen
// characters).
func appendStatusAndError(errs []error, status int, msg string) []error {
	if status != 0 && (status < 100 || status > 599) {
		errs = append(errs, fmt.Errorf("status_code %d is not an HTTP status (100-599)", status))
	}
	if len(msg) > MaxErrorLen && utf8.RuneCountInString(msg) > MaxErrorLen {
		errs = append(errs, fmt.Errorf("error has %d characters, at most %d allowed", utf8.RuneCountInString(msg), MaxErrorLen))
	}
	return errs
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
