package events

// CloudEvent types (contract). Each has a JSON Schema in schemas/ whose $id is
// the event's dataschema (see DataSchema).
const (
	TypeProbeResult    = "switchboard.probe.result.v1"
	TypeRequestOutcome = "switchboard.request.outcome.v1"
	TypeStatusChanged  = "switchboard.endpoint.status_changed.v1"
	TypeJobSubmitted   = "switchboard.chat.job.submitted.v1"
	TypeJobFinished    = "switchboard.chat.job.finished.v1"
)

// SchemaBase prefixes every dataschema URI; schemas/<type>.json has $id
// SchemaBase + <type> + ".json".
const SchemaBase = "https://schemas.switchboard.dev/"

// DataSchema returns the dataschema URI of an event type.
func DataSchema(eventType string) string { return SchemaBase + eventType + ".json" }

// Types lists every event type this version of the contract knows.
func Types() []string {
	return []string{TypeProbeResult, TypeRequestOutcome, TypeStatusChanged, TypeJobSubmitted, TypeJobFinished}
}

// ProbeKind is what a probe exercised.
type ProbeKind string

const (
	// ProbeHealth is GET {base}/health: cheap reachability.
	ProbeHealth ProbeKind = "health"
	// ProbeModels is GET {base}/models: the key works and the configured
	// models exist; spends no tokens.
	ProbeModels ProbeKind = "models"
	// ProbeCompletion is a tiny real chat completion (costs tokens).
	ProbeCompletion ProbeKind = "completion"
)

// ProbeOutcome is the verdict of one probe.
type ProbeOutcome string

const (
	ProbePass ProbeOutcome = "pass"
	ProbeFail ProbeOutcome = "fail"
	// ProbeInconclusive never counts for or against an endpoint: the relay
	// refused the probe, a quota window, a prober-side timeout or error.
	ProbeInconclusive ProbeOutcome = "inconclusive"
)

// RequestResult is the verdict of one upstream chat call.
type RequestResult string

const (
	RequestSuccess RequestResult = "success"
	RequestError   RequestResult = "error"
)

// ErrorClass classifies why a probe or upstream call did not succeed. The
// evaluator decides what each class does to an endpoint (DESIGN §2).
type ErrorClass string

const (
	ClassNone           ErrorClass = ""
	ClassTimeout        ErrorClass = "timeout"         // no answer within the timeout: endpoint failure
	ClassConnect        ErrorClass = "connect"         // refused, reset, unreachable: endpoint failure
	ClassDNS            ErrorClass = "dns"             // name did not resolve: endpoint failure
	ClassTLS            ErrorClass = "tls"             // handshake or certificate: endpoint failure
	ClassHTTP5xx        ErrorClass = "http_5xx"        // endpoint failure
	ClassHTTP4xx        ErrorClass = "http_4xx"        // other 4xx (408, 409, ...): endpoint failure
	ClassHTTP429        ErrorClass = "http_429"        // throttling: cooldown, never a breaker failure by itself
	ClassAuth           ErrorClass = "auth"            // 401/403: the key is wrong; unhealthy at once
	ClassBadBody        ErrorClass = "bad_body"        // malformed 200: endpoint failure
	ClassStreamBroken   ErrorClass = "stream_broken"   // stream ended without its terminator: endpoint failure
	ClassModelMissing   ErrorClass = "model_missing"   // models probe: a configured model is not listed
	ClassClientError    ErrorClass = "client_error"    // 400/404/413/422: the caller's fault, never counts
	ClassCallerCanceled ErrorClass = "caller_canceled" // the caller's deadline or cancel: never counts
	ClassInternal       ErrorClass = "internal"        // our side failed (prober/worker bug or config)
)

// Health is an endpoint's health (the seed's ServiceStatus).
type Health string

const (
	HealthUnknown   Health = "unknown"
	HealthHealthy   Health = "healthy"
	HealthDegraded  Health = "degraded"
	HealthUnhealthy Health = "unhealthy"
)

// Breaker is an endpoint's circuit-breaker state.
type Breaker string

const (
	BreakerClosed   Breaker = "closed"
	BreakerOpen     Breaker = "open"
	BreakerHalfOpen Breaker = "half_open"
)

// Override is an operator's override of an endpoint's breaker.
type Override string

const (
	OverrideNone        Override = "none"
	OverrideDrain       Override = "drain"        // take no new work; probes go on
	OverrideForceOpen   Override = "force_open"   // breaker held open
	OverrideForceClosed Override = "force_closed" // breaker held closed
)

// Lane is how a job reached a worker.
type Lane string

const (
	LaneDurable     Lane = "durable"
	LaneInteractive Lane = "interactive"
)

// Priority of a durable job; it is also the last token of its submit subject.
type Priority string

const (
	PriorityHigh   Priority = "high"
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// Priorities in the order workers serve them.
func Priorities() []Priority { return []Priority{PriorityHigh, PriorityNormal, PriorityLow} }

// JobStatus is the status in a job record.
type JobStatus string

const (
	JobQueued    JobStatus = "queued"
	JobRunning   JobStatus = "running"
	JobSucceeded JobStatus = "succeeded"
	JobFailed    JobStatus = "failed"
	JobCancelled JobStatus = "cancelled"
	JobExpired   JobStatus = "expired"
)

// Terminal reports whether s is a final status.
func (s JobStatus) Terminal() bool {
	return s == JobSucceeded || s == JobFailed || s == JobCancelled || s == JobExpired
}
