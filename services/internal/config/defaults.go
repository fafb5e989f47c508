package config

import (
	"os"
	"time"
)

// Defaults of the seed article (check interval 30 s, timeout 10 s, healthy and
// unhealthy thresholds 3, latency 5000 ms, degraded 3000 ms, breaker failure
// threshold 5, recovery timeout 60 s, half-open requests 3) and of what
// Switchboard adds.
const (
	DefaultCheckInterval       = 30 * time.Second
	DefaultTimeout             = 10 * time.Second
	DefaultHealthyThreshold    = 3
	DefaultUnhealthyThreshold  = 3
	DefaultLatencyThresholdMS  = 5000
	DefaultDegradedThresholdMS = 3000
	DefaultEWMAAlpha           = 0.3

	DefaultFailureThreshold   = 5
	DefaultRecoveryTimeout    = 60 * time.Second
	DefaultMaxRecoveryTimeout = 10 * time.Minute
	DefaultHalfOpenRequests   = 3
	DefaultErrorRateThreshold = 0.5
	DefaultErrorRateWindow    = 60 * time.Second
	DefaultMinRequests        = 20
	// TrialLeaseMargin is how much longer than worker.request_timeout a
	// trial lease lives by default (breaker.trial_lease_ttl unset).
	TrialLeaseMargin = 30 * time.Second

	// DefaultJitter spreads probe intervals by ±10% (prober.jitter unset).
	DefaultJitter = 0.1

	// DefaultDuplicateWindow is the duplicate window of the streams that
	// carry commands and results (nats.streams.duplicate_window unset), cut
	// to the shortest of their max ages.
	DefaultDuplicateWindow = 10 * time.Minute
	// EventDuplicateWindow is the fixed duplicate window of
	// SWITCHBOARD_HEALTH and SWITCHBOARD_STATUS: their max ages must be at
	// least as long.
	EventDuplicateWindow = 2 * time.Minute

	DefaultGatewayListen = "127.0.0.1:8080"
	// Admin ports (/metrics, /healthz, /readyz) of the services that have no
	// HTTP port of their own; the gateway serves them on its own port.
	DefaultProberAdmin    = "127.0.0.1:9101"
	DefaultEvaluatorAdmin = "127.0.0.1:9102"
	DefaultWorkerAdmin    = "127.0.0.1:9103"
	DefaultNATSListen     = "127.0.0.1:4222"
)

// Default returns a configuration with every default filled and no endpoints.
func Default() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "local"
	}
	return sanitizeToken(h)
}

// sanitizeToken maps s to [A-Za-z0-9_-]+ so it can sit in a source or subject.
func sanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	return string(b)
}

func setDur(d *time.Duration, v time.Duration) {
	if *d == 0 {
		*d = v
	}
}

func setInt(i *int, v int) {
	if *i == 0 {
		*i = v
	}
}

func setFloat(f *float64, v float64) {
	if *f == 0 {
		*f = v
	}
}

func setStr(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

// setDefaults fills every zero field with its default.
func (c *Config) setDefaults() {
	n := &c.NATS
	setInt(&n.Replicas, 1)
	s := &n.Streams
	setDur(&s.HealthMaxAge, 24*time.Hour)
	setDur(&s.StatusMaxAge, 7*24*time.Hour)
	setDur(&s.ResultsMaxAge, 24*time.Hour)
	setDur(&s.DLQMaxAge, 14*24*time.Hour)
	setDur(&s.JobTTL, 24*time.Hour)
	setDur(&s.DuplicateWindow, min(DefaultDuplicateWindow, s.JobTTL, s.ResultsMaxAge, s.DLQMaxAge))

	h := &c.Health
	setDur(&h.CheckInterval, DefaultCheckInterval)
	setDur(&h.Timeout, DefaultTimeout)
	setInt(&h.HealthyThreshold, DefaultHealthyThreshold)
	setInt(&h.UnhealthyThreshold, DefaultUnhealthyThreshold)
	setInt(&h.LatencyThresholdMS, DefaultLatencyThresholdMS)
	setInt(&h.DegradedThresholdMS, DefaultDegradedThresholdMS)
	setFloat(&h.EWMAAlpha, DefaultEWMAAlpha)

	b := &c.Breaker
	setInt(&b.FailureThreshold, DefaultFailureThreshold)
	setDur(&b.RecoveryTimeout, DefaultRecoveryTimeout)
	setDur(&b.MaxRecoveryTimeout, DefaultMaxRecoveryTimeout)
	setInt(&b.HalfOpenRequests, DefaultHalfOpenRequests)
	setFloat(&b.ErrorRateThreshold, DefaultErrorRateThreshold)
	setDur(&b.ErrorRateWindow, DefaultErrorRateWindow)
	setInt(&b.MinRequests, DefaultMinRequests)

	p := &c.Prober
	setStr(&p.Vantage, hostname())
	if p.Jitter == nil {
		j := DefaultJitter
		p.Jitter = &j
	}
	setInt(&p.MaxConcurrent, 64)
	setStr(&p.Completion.Prompt, "Reply with the single word: OK")
	setInt(&p.Completion.MaxTokens, 256)
	setStr(&p.AdminListen, DefaultProberAdmin)

	e := &c.Evaluator
	setStr(&e.Instance, hostname())
	setDur(&e.TickInterval, 500*time.Millisecond)
	setStr(&e.AdminListen, DefaultEvaluatorAdmin)
	setStr(&e.Consume, ConsumePinned)

	w := &c.Worker
	setStr(&w.Instance, hostname())
	setInt(&w.Concurrency, 32)
	setStr(&w.Strategy, StrategyLatencyWeighted)
	setInt(&w.MaxAttempts, 3)
	setDur(&w.JobTimeout, 10*time.Minute)
	setDur(&w.RequestTimeout, 120*time.Second)
	setDur(&w.AckWait, 60*time.Second)
	setInt(&w.MaxDeliver, 5)
	setInt(&w.MaxAckPending, 1024)
	setDur(&w.CallbackTimeout, 10*time.Second)
	setStr(&w.AdminListen, DefaultWorkerAdmin)
	// After the worker's: a trial lease outlives the call it admits.
	setDur(&b.TrialLeaseTTL, w.RequestTimeout+TrialLeaseMargin)

	g := &c.Gateway
	setStr(&g.Listen, DefaultGatewayListen)
	setStr(&g.Instance, hostname())
	if g.MaxBodyBytes == 0 {
		g.MaxBodyBytes = 1 << 20
	}

	for i := range c.Endpoints {
		ep := &c.Endpoints[i]
		setFloat(&ep.Weight, 1)
		setInt(&ep.Tier, 1)
		setDur(&ep.CheckInterval, h.CheckInterval)
		setDur(&ep.Timeout, h.Timeout)
		if h.RecheckInterval > 0 {
			setDur(&ep.RecheckInterval, min(h.RecheckInterval, ep.CheckInterval))
		}
		setDur(&ep.RecheckInterval, min(ep.CheckInterval, max(ep.CheckInterval/6, 500*time.Millisecond)))
		if ep.Probes == nil {
			if ep.HealthPath != "" {
				ep.Probes = append(ep.Probes, "health")
			}
			ep.Probes = append(ep.Probes, "models")
		}
		if ep.CompletionModel == "" && len(ep.Models) > 0 {
			ep.CompletionModel = ep.Models[0]
		}
	}
}

// Endpoint returns the endpoint named name, or nil.
func (c *Config) Endpoint(name string) *Endpoint {
	for i := range c.Endpoints {
		if c.Endpoints[i].Name == name {
			return &c.Endpoints[i]
		}
	}
	return nil
}

// ServedModel maps a model a caller asked for to the upstream model ep
// serves it as, and reports whether ep serves it at all.
func (ep *Endpoint) ServedModel(model string) (string, bool) {
	if up, ok := ep.Aliases[model]; ok {
		return up, true
	}
	for _, m := range ep.Models {
		if m == model {
			return m, true
		}
	}
	return "", false
}
