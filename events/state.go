package events

import (
	"errors"
	"fmt"
	"time"
)

// EndpointState is the record the evaluator keeps per endpoint in the KV
// bucket switchboard-endpoints (key = endpoint name), and the "state after"
// of a status-change event (contract, DESIGN §2).
//
// Writers change it only by compare-and-set on the KV revision.
type EndpointState struct {
	Endpoint    string    `json:"endpoint"`
	Health      Health    `json:"health"`
	HealthSince time.Time `json:"health_since"`

	Breaker      Breaker    `json:"breaker"`
	BreakerSince time.Time  `json:"breaker_since"`
	OpenedAt     *time.Time `json:"opened_at,omitempty"`
	OpenUntil    *time.Time `json:"open_until,omitempty"`
	// OpenCount counts opens since the breaker last closed; the recovery
	// timeout grows with it.
	OpenCount int `json:"open_count"`
	// HalfOpen is the trial bookkeeping while the breaker is half-open.
	HalfOpen *HalfOpen `json:"half_open,omitempty"`

	// ThrottledUntil is set by 429s (Retry-After or a reset hint) for the
	// endpoint and its quota group; it is only ever extended.
	ThrottledUntil *time.Time `json:"throttled_until,omitempty"`
	Override       Override   `json:"override"`
	OverrideReason string     `json:"override_reason,omitempty"`

	ConsecutiveSuccesses int `json:"consecutive_successes"`
	ConsecutiveFailures  int `json:"consecutive_failures"`
	// BreakerFailures counts consecutive endpoint failures toward the
	// breaker's failure threshold.
	BreakerFailures int `json:"breaker_failures"`
	// Window is the sliding window of request outcomes behind ErrorRate.
	Window    []WindowBucket `json:"window,omitempty"`
	ErrorRate float64        `json:"error_rate"`

	LatencyEWMAMS float64 `json:"latency_ewma_ms"`
	TTFTEWMAMS    float64 `json:"ttft_ewma_ms,omitempty"`

	LastProbe     *ProbeView `json:"last_probe,omitempty"`
	LastError     *ErrorView `json:"last_error,omitempty"`
	LastSuccessAt *time.Time `json:"last_success_at,omitempty"`
	// Vantages is the latest probe of each kind from each vantage, keyed
	// "<vantage>/<kind>" (e.g. "eu-west/models"); the probe quorum is
	// judged per kind over these views.
	Vantages map[string]ProbeView `json:"vantages,omitempty"`

	Requests uint64 `json:"requests"`
	Failures uint64 `json:"failures"`

	// UpdatedAt is the record's clock: the time of the last signal or tick
	// applied to it. It never goes backwards.
	UpdatedAt time.Time `json:"updated_at"`
	// AppliedSeq is the SWITCHBOARD_HEALTH stream sequence of the last event
	// applied to the record: the evaluator applies each endpoint's events
	// exactly once and in stream order, whichever replica receives them.
	AppliedSeq uint64 `json:"applied_seq,omitempty"`
	// Pending holds status changes written with the record whose event may
	// not be published yet (Revision 0 = made by the write that stored this
	// record; readers fill it in). Any evaluator replica publishes them, in
	// revision order, before it writes the record again.
	Pending []StatusChanged `json:"pending,omitempty"`
	// Revision is the KV revision the record was read at (or, in a
	// status-change event, written at). It is filled in by readers, not
	// stored: a KV revision is not known before the write.
	Revision uint64 `json:"revision,omitempty"`
}

// HalfOpen is the trial bookkeeping of one half-open period. The period
// admits half_open_requests - Successes - len(Leases) more trials.
type HalfOpen struct {
	// Period identifies the half-open period (the OpenCount it began at);
	// a lease from another period is void.
	Period int       `json:"period"`
	Since  time.Time `json:"since"`
	// Successes counts trial successes: successful calls under a lease and
	// passing probes; half_open_requests of them close the breaker.
	Successes int `json:"successes"`
	// Granted counts leases granted in this period (it never decreases;
	// lease ids are numbered by it).
	Granted int `json:"granted"`
	// Leases are the trial slots currently held.
	Leases []Lease `json:"leases,omitempty"`
}

// Lease is one half-open trial slot, held by a worker for one upstream call.
// A lease whose holder died expires at ExpiresAt and frees its slot.
type Lease struct {
	ID        string    `json:"id"`
	Holder    string    `json:"holder"`
	GrantedAt time.Time `json:"granted_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// WindowBucket counts request outcomes that started in [Start, Start+width).
type WindowBucket struct {
	Start    time.Time `json:"start"`
	Requests int       `json:"requests"`
	Failures int       `json:"failures"`
}

// ProbeView is what one probe said, as the record remembers it.
type ProbeView struct {
	At         time.Time    `json:"at"`
	Vantage    string       `json:"vantage,omitempty"`
	Kind       ProbeKind    `json:"kind"`
	Outcome    ProbeOutcome `json:"outcome"`
	ErrorClass ErrorClass   `json:"error_class,omitempty"`
	LatencyMS  float64      `json:"latency_ms"`
	IntervalMS int64        `json:"interval_ms,omitempty"`
}

// ErrorView is the last error the record saw.
type ErrorView struct {
	At         time.Time  `json:"at"`
	Class      ErrorClass `json:"class"`
	Message    string     `json:"message,omitempty"`
	StatusCode int        `json:"status_code,omitempty"`
	Source     string     `json:"source,omitempty"`
}

// Validate checks the invariants every stored record keeps.
func (s *EndpointState) Validate() error {
	var errs []error
	if err := CheckName("endpoint", s.Endpoint); err != nil {
		errs = append(errs, err)
	}
	switch s.Health {
	case HealthUnknown, HealthHealthy, HealthDegraded, HealthUnhealthy:
	default:
		errs = append(errs, fmt.Errorf("health %q is unknown", s.Health))
	}
	switch s.Breaker {
	case BreakerClosed:
		if s.HalfOpen != nil {
			errs = append(errs, errors.New("closed breaker has half-open bookkeeping"))
		}
	case BreakerOpen:
		if s.OpenUntil == nil || s.OpenedAt == nil {
			errs = append(errs, errors.New("open breaker lacks opened_at or open_until"))
		}
		if s.HalfOpen != nil {
			errs = append(errs, errors.New("open breaker has half-open bookkeeping"))
		}
	case BreakerHalfOpen:
		if s.HalfOpen == nil {
			errs = append(errs, errors.New("half-open breaker lacks its bookkeeping"))
		}
	default:
		errs = append(errs, fmt.Errorf("breaker %q is unknown", s.Breaker))
	}
	switch s.Override {
	case OverrideNone, OverrideDrain, OverrideForceOpen, OverrideForceClosed:
	default:
		errs = append(errs, fmt.Errorf("override %q is unknown", s.Override))
	}
	if s.ConsecutiveSuccesses < 0 || s.ConsecutiveFailures < 0 || s.BreakerFailures < 0 || s.OpenCount < 0 {
		errs = append(errs, errors.New("a counter is negative"))
	}
	if s.ConsecutiveSuccesses > 0 && s.ConsecutiveFailures > 0 {
		errs = append(errs, errors.New("consecutive successes and failures are both non-zero"))
	}
	if s.ErrorRate < 0 || s.ErrorRate > 1 {
		errs = append(errs, fmt.Errorf("error_rate %v is outside [0,1]", s.ErrorRate))
	}
	return errors.Join(errs...)
}

// StatusChanged is the data of a switchboard.endpoint.status_changed.v1
// event, published on StatusSubject(Endpoint) after the write that made the
// change succeeded; its id (and Nats-Msg-Id) is "<endpoint>@<revision>".
type StatusChanged struct {
	Endpoint string `json:"endpoint"`
	// Revision is the KV revision of the write that made the change.
	Revision uint64 `json:"revision"`
	// What changed: at least one of these is set.
	Health   *Transition     `json:"health,omitempty"`
	Breaker  *Transition     `json:"breaker,omitempty"`
	Throttle *ThrottleChange `json:"throttle,omitempty"`
	Override *Transition     `json:"override,omitempty"`
	Cause    Cause           `json:"cause"`
	State    EndpointState   `json:"state"`
	At       time.Time       `json:"at"`
}

// Transition is a from -> to change of one state variable.
type Transition struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// ThrottleChange is a change of throttled_until (nil = not throttled).
type ThrottleChange struct {
	From *time.Time `json:"from,omitempty"`
	To   *time.Time `json:"to,omitempty"`
}

// CauseKind says what kind of signal caused a change.
type CauseKind string

const (
	CauseProbe    CauseKind = "probe"    // a probe result
	CauseOutcome  CauseKind = "outcome"  // a request outcome
	CauseTimer    CauseKind = "timer"    // time passed (recovery timeout, throttle end)
	CauseOperator CauseKind = "operator" // switchboard endpoint ...
	CauseQuota    CauseKind = "quota_group"
)

// Cause is the signal that made a change.
type Cause struct {
	Kind CauseKind `json:"kind"`
	// Reason says in words why the rule fired, e.g. "5 consecutive failures".
	Reason     string     `json:"reason"`
	EventID    string     `json:"event_id,omitempty"`
	EventType  string     `json:"event_type,omitempty"`
	Source     string     `json:"source,omitempty"`
	Endpoint   string     `json:"endpoint,omitempty"` // the quota-group member that got the 429
	ProbeKind  ProbeKind  `json:"probe_kind,omitempty"`
	Outcome    string     `json:"outcome,omitempty"`
	ErrorClass ErrorClass `json:"error_class,omitempty"`
	Error      string     `json:"error,omitempty"`
	StatusCode int        `json:"status_code,omitempty"`
}

// EventType implements Payload.
func (*StatusChanged) EventType() string { return TypeStatusChanged }

// Subject implements Payload.
func (c *StatusChanged) Subject() string { return StatusSubject(c.Endpoint) }

// ID is the event id (and Nats-Msg-Id) of the change, so duplicates collapse.
func (c *StatusChanged) ID() string { return fmt.Sprintf("%s@%d", c.Endpoint, c.Revision) }

// Validate implements Payload.
func (c *StatusChanged) Validate() error {
	var errs []error
	if err := CheckName("endpoint", c.Endpoint); err != nil {
		errs = append(errs, err)
	}
	if c.Revision == 0 {
		errs = append(errs, errors.New("revision is missing"))
	}
	if c.Health == nil && c.Breaker == nil && c.Throttle == nil && c.Override == nil {
		errs = append(errs, errors.New("nothing changed: none of health, breaker, throttle, override is set"))
	}
	if c.Cause.Kind == "" {
		errs = append(errs, errors.New("cause.kind is missing"))
	}
	if c.State.Endpoint != c.Endpoint {
		errs = append(errs, fmt.Errorf("state.endpoint %q differs from endpoint %q", c.State.Endpoint, c.Endpoint))
	}
	if err := c.State.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("state: %w", err))
	}
	return errors.Join(errs...)
}
