// Package config is Switchboard's one YAML configuration file: every
// service reads its own part. Load parses, fills defaults (the seed's, see
// Default), expands ${ENV} references and validates the whole file before
// anything starts; every error names the file, the line and the field.
package config

import (
	"time"
)

// Config is the whole configuration file.
type Config struct {
	NATS      NATS       `yaml:"nats"`
	Endpoints []Endpoint `yaml:"endpoints"`
	Health    Health     `yaml:"health"`
	Breaker   Breaker    `yaml:"breaker"`
	Prober    Prober     `yaml:"prober"`
	Evaluator Evaluator  `yaml:"evaluator"`
	Worker    Worker     `yaml:"worker"`
	Gateway   Gateway    `yaml:"gateway"`

	// File is the path the config was loaded from ("" for built-in ones).
	File string `yaml:"-"`
}

// NATS says how services reach NATS and how streams are provisioned.
type NATS struct {
	// URL of the NATS servers (comma-separated); `${ENV}` allowed. Empty in
	// `switchboard dev` means the embedded server.
	URL          string `yaml:"url"`
	User         string `yaml:"user"`
	Password     Secret `yaml:"password"`
	Token        Secret `yaml:"token"`
	NKeySeedFile string `yaml:"nkey_seed_file"`
	CredsFile    string `yaml:"creds_file"`
	TLS          *TLS   `yaml:"tls"`

	// Replicas of every stream and bucket: 1 in development, 3 in production.
	Replicas int      `yaml:"replicas"`
	Embedded Embedded `yaml:"embedded"`
	Streams  Streams  `yaml:"streams"`
}

// TLS for the NATS connection.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// Embedded configures the embedded nats-server of `switchboard dev`.
type Embedded struct {
	// Listen is host:port for clients; "" means in-process only.
	Listen string `yaml:"listen"`
	// StoreDir holds JetStream data; "" means a fresh temporary directory.
	StoreDir string `yaml:"store_dir"`
}

// Streams sets retention of the streams and buckets.
type Streams struct {
	HealthMaxAge  time.Duration `yaml:"health_max_age"`
	StatusMaxAge  time.Duration `yaml:"status_max_age"`
	ResultsMaxAge time.Duration `yaml:"results_max_age"`
	DLQMaxAge     time.Duration `yaml:"dlq_max_age"`
	// DuplicateWindow is the duplicate window of SWITCHBOARD_JOBS,
	// SWITCHBOARD_RESULTS and SWITCHBOARD_DLQ. It can be no longer than any
	// of their max ages; unset, it is DefaultDuplicateWindow or the
	// shortest of them.
	DuplicateWindow time.Duration `yaml:"duplicate_window"`
	JobTTL          time.Duration `yaml:"job_ttl"`
	// HealthFsync makes a single-replica SWITCHBOARD_HEALTH stream (probe
	// results and request outcomes: telemetry, each superseded by the next)
	// fsync every write like every other stream. By default it flushes
	// asynchronously. Ignored with replicas > 1 (the Raft log covers it).
	HealthFsync bool `yaml:"health_fsync"`
}

// Endpoint is one OpenAI-compatible base URL (DESIGN §2).
type Endpoint struct {
	Name    string `yaml:"name"`
	BaseURL string `yaml:"base_url"`
	// APIKey must be an ${ENV} reference; it is resolved at load and never
	// printed, logged or published.
	APIKey Secret   `yaml:"api_key"`
	Models []string `yaml:"models"`
	// Aliases maps a model name callers use to one of Models.
	Aliases map[string]string `yaml:"aliases"`
	// Weight scales the endpoint's share under the latency_weighted
	// strategy; 0 (or unset) means the default, 1.
	Weight float64 `yaml:"weight"`
	// Tier orders endpoints for the tier strategy: 1 is primary.
	Tier         int     `yaml:"tier"`
	PricePerMTok float64 `yaml:"price_per_mtok"`
	// QuotaGroup names endpoints sharing one upstream rate limit: a 429 on
	// one throttles all.
	QuotaGroup string `yaml:"quota_group"`
	// HealthPath, when set, is probed with GET {base_url}{health_path}.
	HealthPath string `yaml:"health_path"`
	// Probes lists the probe kinds to run; default: health (when
	// health_path is set) and models.
	Probes []string `yaml:"probes"`
	// CompletionModel is the model of the completion probe (default: the
	// first of Models).
	CompletionModel string `yaml:"completion_model"`
	// CheckInterval and Timeout override health.check_interval/timeout.
	CheckInterval time.Duration `yaml:"check_interval"`
	Timeout       time.Duration `yaml:"timeout"`
	// RecheckInterval overrides health.recheck_interval.
	RecheckInterval time.Duration `yaml:"recheck_interval"`
}

// Health holds the seed's health-check settings.
type Health struct {
	CheckInterval time.Duration `yaml:"check_interval"`
	// RecheckInterval is the interval of a probe whose last result was a
	// failure (Envoy's unhealthy interval): failures are confirmed, and
	// recoveries seen, within a fraction of check_interval. 0 means
	// check_interval/6, at least 500ms.
	RecheckInterval    time.Duration `yaml:"recheck_interval"`
	Timeout            time.Duration `yaml:"timeout"`
	HealthyThreshold   int           `yaml:"healthy_threshold"`
	UnhealthyThreshold int           `yaml:"unhealthy_threshold"`
	// LatencyThresholdMS: a success slower than this counts as a failure.
	LatencyThresholdMS int `yaml:"latency_threshold_ms"`
	// DegradedThresholdMS: an EWMA latency above this makes an endpoint degraded.
	DegradedThresholdMS int `yaml:"degraded_threshold_ms"`
	// EWMAAlpha weighs a new latency sample (the seed: 0.3).
	EWMAAlpha float64 `yaml:"ewma_alpha"`
	// ProbeQuorum is how many vantages must see a probe fail before it
	// counts; 0 means a majority of the vantages currently reporting.
	ProbeQuorum int `yaml:"probe_quorum"`
}

// Breaker holds the circuit-breaker settings.
type Breaker struct {
	FailureThreshold int           `yaml:"failure_threshold"`
	RecoveryTimeout  time.Duration `yaml:"recovery_timeout"`
	// MaxRecoveryTimeout caps the recovery timeout, which doubles with each
	// re-open without a close in between.
	MaxRecoveryTimeout time.Duration `yaml:"max_recovery_timeout"`
	HalfOpenRequests   int           `yaml:"half_open_requests"`
	// ErrorRateThreshold opens the breaker when the error rate over
	// ErrorRateWindow reaches it with at least MinRequests requests.
	ErrorRateThreshold float64       `yaml:"error_rate_threshold"`
	ErrorRateWindow    time.Duration `yaml:"error_rate_window"`
	MinRequests        int           `yaml:"min_requests"`
	// TrialLeaseTTL is how long a half-open trial lease lives if its holder
	// never reports. It must be longer than worker.request_timeout, or a
	// trial call could outlive its lease; the default is request_timeout +
	// TrialLeaseMargin.
	TrialLeaseTTL time.Duration `yaml:"trial_lease_ttl"`
}

// Prober configures the prober service.
type Prober struct {
	// Vantage names this prober in event sources (/prober/<vantage>).
	Vantage string `yaml:"vantage"`
	// Jitter spreads probes: each interval is scaled by 1±jitter. Unset
	// (nil) means DefaultJitter; 0 means no jitter.
	Jitter        *float64   `yaml:"jitter"`
	MaxConcurrent int        `yaml:"max_concurrent"`
	Completion    Completion `yaml:"completion"`
	AdminListen   string     `yaml:"admin_listen"`
}

// Completion configures the completion probe (off by default: it costs tokens).
type Completion struct {
	Enabled bool   `yaml:"enabled"`
	Prompt  string `yaml:"prompt"`
	// MaxTokens is large enough for reasoning models to answer at all.
	MaxTokens int `yaml:"max_tokens"`
}

// Evaluator configures the state-evaluator service.
type Evaluator struct {
	Instance string `yaml:"instance"`
	// TickInterval is how often time-driven transitions are checked.
	TickInterval time.Duration `yaml:"tick_interval"`
	// Consume is how replicas share the health events: "pinned" (one replica
	// applies them, the others stand by and take over within seconds when it
	// stops) or "shared" (every replica takes events; compare-and-set keeps
	// them correct, but they redo each other's work). Every replica must use
	// the same mode.
	Consume     string `yaml:"consume"`
	AdminListen string `yaml:"admin_listen"`
}

// How evaluator replicas share the health events.
const (
	ConsumePinned = "pinned"
	ConsumeShared = "shared"
)

// Routing strategies of the workers.
const (
	StrategyLatencyWeighted = "latency_weighted"
	StrategyLowestLatency   = "lowest_latency"
	StrategyTier            = "tier"
	StrategyCheapest        = "cheapest"
)

// Worker configures the request workers.
type Worker struct {
	Instance    string `yaml:"instance"`
	Concurrency int    `yaml:"concurrency"`
	Strategy    string `yaml:"strategy"`
	// MaxAttempts is a job's default attempt budget.
	MaxAttempts int `yaml:"max_attempts"`
	// JobTimeout is a job's default deadline, from submission.
	JobTimeout time.Duration `yaml:"job_timeout"`
	// RequestTimeout bounds one upstream call.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	AckWait        time.Duration `yaml:"ack_wait"`
	MaxDeliver     int           `yaml:"max_deliver"`
	// MaxAckPending caps concurrent durable jobs cluster-wide.
	MaxAckPending int `yaml:"max_ack_pending"`
	// CallbackSecret signs job callbacks (HMAC-SHA256); ${ENV} reference.
	CallbackSecret Secret `yaml:"callback_secret"`
	// CallbackTimeout bounds one callback POST; a worker that died while
	// POSTing hands the callback on after CallbackTimeout + 5 s.
	CallbackTimeout time.Duration `yaml:"callback_timeout"`
	AdminListen     string        `yaml:"admin_listen"`
}

// Gateway configures the HTTP gateway.
type Gateway struct {
	Listen string `yaml:"listen"`
	// APIKeys are the bearer tokens clients may use; none means no auth.
	APIKeys      []APIKey `yaml:"api_keys"`
	MaxBodyBytes int64    `yaml:"max_body_bytes"`
	Instance     string   `yaml:"instance"`
	// RequestTimeout is an interactive call's deadline; 0 = the worker's
	// request_timeout.
	RequestTimeout time.Duration `yaml:"request_timeout"`
}

// APIKey is one client key of the gateway.
type APIKey struct {
	Name string `yaml:"name"`
	Key  Secret `yaml:"key"`
}
