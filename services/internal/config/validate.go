package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

type validator struct {
	env      LookupEnv
	problems []Problem
}

func (v *validator) addf(field, format string, args ...any) {
	v.problems = append(v.problems, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
}

var envRefRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandString replaces ${VAR} references in s; an unset variable is a
// problem of field. The value is never put in a message.
func (v *validator) expandString(field, s string) string {
	return envRefRE.ReplaceAllStringFunc(s, func(ref string) string {
		name := envRefRE.FindStringSubmatch(ref)[1]
		val, ok := v.env(name)
		if !ok {
			v.addf(field, "environment variable %s is not set", name)
			return ""
		}
		return val
	})
}

// expandSecret resolves a secret: it must be exactly one ${VAR} reference,
// so that keys live in the environment, never in the file.
func (v *validator) expandSecret(field string, s *Secret) {
	raw := string(*s)
	if raw == "" {
		return
	}
	if m := envRefRE.FindStringSubmatch(raw); m == nil || m[0] != strings.TrimSpace(raw) {
		*s = ""
		v.addf(field, "must be an ${ENV_VAR} reference; a literal secret does not belong in a config file")
		return
	}
	*s = Secret(v.expandString(field, strings.TrimSpace(raw)))
}

// expand resolves every ${ENV} reference.
func (c *Config) expand(v *validator) {
	c.NATS.URL = v.expandString("nats.url", c.NATS.URL)
	c.NATS.User = v.expandString("nats.user", c.NATS.User)
	v.expandSecret("nats.password", &c.NATS.Password)
	v.expandSecret("nats.token", &c.NATS.Token)
	v.expandSecret("worker.callback_secret", &c.Worker.CallbackSecret)
	for i := range c.Endpoints {
		ep := &c.Endpoints[i]
		f := fmt.Sprintf("endpoints[%d]", i)
		ep.BaseURL = v.expandString(f+".base_url", ep.BaseURL)
		v.expandSecret(f+".api_key", &ep.APIKey)
	}
	for i := range c.Gateway.APIKeys {
		v.expandSecret(fmt.Sprintf("gateway.api_keys[%d].key", i), &c.Gateway.APIKeys[i].Key)
	}
}

// Validate checks a config built in code (Load and Parse validate already).
func (c *Config) Validate() error {
	v := validator{env: os.LookupEnv}
	c.setDefaults()
	c.validate(&v)
	if len(v.problems) == 0 {
		return nil
	}
	name := c.File
	if name == "" {
		name = "config"
	}
	return &Error{File: name, Problems: v.problems}
}

func (c *Config) validate(v *validator) {
	c.validateNATS(v)
	c.validateEndpoints(v)

	h := c.Health
	if h.HealthyThreshold < 1 {
		v.addf("health.healthy_threshold", "must be at least 1, got %d", h.HealthyThreshold)
	}
	if h.UnhealthyThreshold < 1 {
		v.addf("health.unhealthy_threshold", "must be at least 1, got %d", h.UnhealthyThreshold)
	}
	if h.CheckInterval < 0 {
		v.addf("health.check_interval", "must be positive, got %s", h.CheckInterval)
	}
	if h.Timeout < 0 {
		v.addf("health.timeout", "must be positive, got %s", h.Timeout)
	}
	if h.RecheckInterval < 0 || (h.RecheckInterval > 0 && h.RecheckInterval > h.CheckInterval) {
		v.addf("health.recheck_interval", "must be positive and at most check_interval (%s), got %s", h.CheckInterval, h.RecheckInterval)
	}
	if h.LatencyThresholdMS < 1 {
		v.addf("health.latency_threshold_ms", "must be at least 1, got %d", h.LatencyThresholdMS)
	}
	if h.DegradedThresholdMS < 1 || h.DegradedThresholdMS >= h.LatencyThresholdMS {
		v.addf("health.degraded_threshold_ms", "must be between 1 and latency_threshold_ms (%d) exclusive, got %d",
			h.LatencyThresholdMS, h.DegradedThresholdMS)
	}
	if h.EWMAAlpha <= 0 || h.EWMAAlpha > 1 {
		v.addf("health.ewma_alpha", "must be in (0, 1], got %v", h.EWMAAlpha)
	}
	if h.ProbeQuorum < 0 {
		v.addf("health.probe_quorum", "must not be negative, got %d", h.ProbeQuorum)
	}

	b := c.Breaker
	if b.FailureThreshold < 1 {
		v.addf("breaker.failure_threshold", "must be at least 1, got %d", b.FailureThreshold)
	}
	if b.RecoveryTimeout <= 0 {
		v.addf("breaker.recovery_timeout", "must be positive, got %s", b.RecoveryTimeout)
	}
	if b.MaxRecoveryTimeout < b.RecoveryTimeout {
		v.addf("breaker.max_recovery_timeout", "must be at least recovery_timeout (%s), got %s", b.RecoveryTimeout, b.MaxRecoveryTimeout)
	}
	if b.HalfOpenRequests < 1 {
		v.addf("breaker.half_open_requests", "must be at least 1, got %d", b.HalfOpenRequests)
	}
	if b.ErrorRateThreshold <= 0 || b.ErrorRateThreshold > 1 {
		v.addf("breaker.error_rate_threshold", "must be in (0, 1], got %v", b.ErrorRateThreshold)
	}
	if b.ErrorRateWindow <= 0 {
		v.addf("breaker.error_rate_window", "must be positive, got %s", b.ErrorRateWindow)
	}
	if b.MinRequests < 1 {
		v.addf("breaker.min_requests", "must be at least 1, got %d", b.MinRequests)
	}
	if b.TrialLeaseTTL <= 0 {
		v.addf("breaker.trial_lease_ttl", "must be positive, got %s", b.TrialLeaseTTL)
	} else if rt := c.Worker.RequestTimeout; b.TrialLeaseTTL <= rt {
		v.addf("breaker.trial_lease_ttl", "must be longer than worker.request_timeout (%s), or a trial call outlives its lease and more than half_open_requests trials run at once; got %s",
			rt, b.TrialLeaseTTL)
	}

	p := c.Prober
	if !events.ValidName(p.Vantage) {
		v.addf("prober.vantage", "%q must match [A-Za-z0-9_-]+", p.Vantage)
	}
	if p.Jitter != nil && (*p.Jitter < 0 || *p.Jitter >= 1) {
		v.addf("prober.jitter", "must be in [0, 1) (0: no jitter), got %v", *p.Jitter)
	}
	if p.MaxConcurrent < 1 {
		v.addf("prober.max_concurrent", "must be at least 1, got %d", p.MaxConcurrent)
	}
	if p.Completion.MaxTokens < 1 {
		v.addf("prober.completion.max_tokens", "must be at least 1, got %d", p.Completion.MaxTokens)
	}
	checkListen(v, "prober.admin_listen", p.AdminListen)

	e := c.Evaluator
	if !events.ValidName(e.Instance) {
		v.addf("evaluator.instance", "%q must match [A-Za-z0-9_-]+", e.Instance)
	}
	if e.Consume != ConsumePinned && e.Consume != ConsumeShared {
		v.addf("evaluator.consume", "%q is not one of %s, %s", e.Consume, ConsumePinned, ConsumeShared)
	}
	if e.TickInterval <= 0 {
		v.addf("evaluator.tick_interval", "must be positive, got %s", e.TickInterval)
	}
	checkListen(v, "evaluator.admin_listen", e.AdminListen)

	w := c.Worker
	if !events.ValidName(w.Instance) {
		v.addf("worker.instance", "%q must match [A-Za-z0-9_-]+", w.Instance)
	}
	switch w.Strategy {
	case StrategyLatencyWeighted, StrategyLowestLatency, StrategyTier, StrategyCheapest:
	default:
		v.addf("worker.strategy", "%q is not one of %s, %s, %s, %s", w.Strategy,
			StrategyLatencyWeighted, StrategyLowestLatency, StrategyTier, StrategyCheapest)
	}
	if w.Concurrency < 1 {
		v.addf("worker.concurrency", "must be at least 1, got %d", w.Concurrency)
	}
	if w.MaxAttempts < 1 || w.MaxAttempts > events.MaxJobAttempts {
		v.addf("worker.max_attempts", "must be in 1..%d, got %d", events.MaxJobAttempts, w.MaxAttempts)
	}
	if w.JobTimeout <= 0 {
		v.addf("worker.job_timeout", "must be positive, got %s", w.JobTimeout)
	}
	if w.RequestTimeout <= 0 {
		v.addf("worker.request_timeout", "must be positive, got %s", w.RequestTimeout)
	}
	if w.AckWait < 3e9 {
		v.addf("worker.ack_wait", "must be at least 3s, got %s", w.AckWait)
	}
	if w.MaxDeliver < 2 {
		v.addf("worker.max_deliver", "must be at least 2, got %d", w.MaxDeliver)
	}
	if w.MaxAckPending < 1 {
		v.addf("worker.max_ack_pending", "must be at least 1, got %d", w.MaxAckPending)
	}
	if w.CallbackTimeout < time.Second {
		v.addf("worker.callback_timeout", "must be at least 1s, got %s", w.CallbackTimeout)
	}
	checkListen(v, "worker.admin_listen", w.AdminListen)

	g := c.Gateway
	checkListen(v, "gateway.listen", g.Listen)
	if g.MaxBodyBytes < 1024 {
		v.addf("gateway.max_body_bytes", "must be at least 1024, got %d", g.MaxBodyBytes)
	}
	if g.RequestTimeout < 0 {
		v.addf("gateway.request_timeout", "must not be negative, got %s", g.RequestTimeout)
	}
	seen := map[string]int{}
	for i, k := range g.APIKeys {
		f := fmt.Sprintf("gateway.api_keys[%d]", i)
		if k.Name == "" {
			v.addf(f+".name", "is required")
		} else if j, dup := seen[k.Name]; dup {
			v.addf(f+".name", "%q is also the name of gateway.api_keys[%d]", k.Name, j)
		} else {
			seen[k.Name] = i
		}
		if !k.Key.IsSet() {
			v.addf(f+".key", "is required")
		}
	}
}

func checkListen(v *validator, field, addr string) {
	if addr == "" {
		return
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		v.addf(field, "%q is not host:port", addr)
	}
}

func (c *Config) validateNATS(v *validator) {
	n := c.NATS
	if n.Replicas < 1 || n.Replicas > 5 || n.Replicas%2 == 0 {
		v.addf("nats.replicas", "must be 1, 3 or 5, got %d", n.Replicas)
	}
	for _, u := range strings.Split(n.URL, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || pu.Host == "" {
			v.addf("nats.url", "%q is not a URL like nats://host:4222", u)
		}
	}
	if n.Token.IsSet() && (n.User != "" || n.CredsFile != "" || n.NKeySeedFile != "") {
		v.addf("nats.token", "use one of token, user/password, nkey_seed_file, creds_file")
	}
	if n.User != "" && !n.Password.IsSet() {
		v.addf("nats.password", "is required with nats.user")
	}
	if n.CredsFile != "" && n.NKeySeedFile != "" {
		v.addf("nats.creds_file", "use creds_file or nkey_seed_file, not both")
	}
	for field, path := range map[string]string{"nats.creds_file": n.CredsFile, "nats.nkey_seed_file": n.NKeySeedFile} {
		if path != "" {
			if _, err := os.Stat(path); err != nil {
				v.addf(field, "cannot read %q: %v", path, err)
			}
		}
	}
	if t := n.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			v.addf("nats.tls", "cert_file and key_file go together")
		}
		for field, path := range map[string]string{"nats.tls.ca_file": t.CAFile, "nats.tls.cert_file": t.CertFile, "nats.tls.key_file": t.KeyFile} {
			if path != "" {
				if _, err := os.Stat(path); err != nil {
					v.addf(field, "cannot read %q: %v", path, err)
				}
			}
		}
	}
	checkListen(v, "nats.embedded.listen", n.Embedded.Listen)
	s := n.Streams
	for field, d := range map[string]int64{
		"nats.streams.health_max_age": int64(s.HealthMaxAge), "nats.streams.status_max_age": int64(s.StatusMaxAge),
		"nats.streams.results_max_age": int64(s.ResultsMaxAge), "nats.streams.dlq_max_age": int64(s.DLQMaxAge),
		"nats.streams.duplicate_window": int64(s.DuplicateWindow), "nats.streams.job_ttl": int64(s.JobTTL),
	} {
		if d < 0 {
			v.addf(field, "must be positive")
		}
	}
	// A stream's duplicate window cannot be longer than its max age: the
	// server would refuse the stream when a service provisions it.
	for _, f := range []struct {
		field string
		d     time.Duration
	}{{"nats.streams.health_max_age", s.HealthMaxAge}, {"nats.streams.status_max_age", s.StatusMaxAge}} {
		if f.d > 0 && f.d < EventDuplicateWindow {
			v.addf(f.field, "must be at least %s, the stream's duplicate window, got %s", EventDuplicateWindow, f.d)
		}
	}
	shortest, name := s.JobTTL, "job_ttl"
	if s.ResultsMaxAge < shortest {
		shortest, name = s.ResultsMaxAge, "results_max_age"
	}
	if s.DLQMaxAge < shortest {
		shortest, name = s.DLQMaxAge, "dlq_max_age"
	}
	if s.DuplicateWindow > shortest && shortest > 0 {
		v.addf("nats.streams.duplicate_window", "must be at most %s (%s): a stream's duplicate window cannot be longer than its max age; got %s",
			name, shortest, s.DuplicateWindow)
	}
}

var probeKinds = map[string]bool{
	string(events.ProbeHealth): true, string(events.ProbeModels): true, string(events.ProbeCompletion): true,
}

func (c *Config) validateEndpoints(v *validator) {
	names := map[string]int{}
	for i := range c.Endpoints {
		ep := &c.Endpoints[i]
		f := fmt.Sprintf("endpoints[%d]", i)
		if err := events.CheckName("name", ep.Name); err != nil {
			v.addf(f+".name", "%v", err)
		} else if j, dup := names[ep.Name]; dup {
			v.addf(f+".name", "%q is also the name of endpoints[%d]", ep.Name, j)
		} else {
			names[ep.Name] = i
		}
		if u, err := url.Parse(ep.BaseURL); ep.BaseURL == "" {
			v.addf(f+".base_url", "is required")
		} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.addf(f+".base_url", "%q is not an absolute http(s) URL", ep.BaseURL)
		} else if u.User != nil {
			v.addf(f+".base_url", "must not carry credentials; use api_key")
		}
		if len(ep.Models) == 0 {
			v.addf(f+".models", "at least one model is required")
		}
		models := map[string]bool{}
		for j, m := range ep.Models {
			if m == "" {
				v.addf(fmt.Sprintf("%s.models[%d]", f, j), "is empty")
			}
			models[m] = true
		}
		aliases := make([]string, 0, len(ep.Aliases))
		for a := range ep.Aliases {
			aliases = append(aliases, a)
		}
		sort.Strings(aliases)
		for _, a := range aliases {
			if !models[ep.Aliases[a]] {
				v.addf(f+".aliases."+a, "maps to %q, which is not in models", ep.Aliases[a])
			}
		}
		if ep.Weight < 0 {
			v.addf(f+".weight", "must be positive (0 or unset: the default, 1), got %v", ep.Weight)
		}
		if ep.Tier < 1 {
			v.addf(f+".tier", "must be at least 1 (1 is primary), got %d", ep.Tier)
		}
		if ep.PricePerMTok < 0 {
			v.addf(f+".price_per_mtok", "must not be negative, got %v", ep.PricePerMTok)
		}
		if ep.QuotaGroup != "" && !events.ValidName(ep.QuotaGroup) {
			v.addf(f+".quota_group", "%q must match [A-Za-z0-9_-]+", ep.QuotaGroup)
		}
		if ep.HealthPath != "" && !strings.HasPrefix(ep.HealthPath, "/") {
			v.addf(f+".health_path", "%q must start with /", ep.HealthPath)
		}
		for j, k := range ep.Probes {
			if !probeKinds[k] {
				v.addf(fmt.Sprintf("%s.probes[%d]", f, j), "%q is not one of health, models, completion", k)
			} else if k == string(events.ProbeHealth) && ep.HealthPath == "" {
				v.addf(fmt.Sprintf("%s.probes[%d]", f, j), "the health probe needs health_path")
			}
		}
		if ep.CompletionModel != "" && len(ep.Models) > 0 {
			if _, ok := ep.ServedModel(ep.CompletionModel); !ok {
				v.addf(f+".completion_model", "%q is not in models", ep.CompletionModel)
			}
		}
		if ep.CheckInterval <= 0 {
			v.addf(f+".check_interval", "must be positive, got %s", ep.CheckInterval)
		}
		if ep.RecheckInterval <= 0 || ep.RecheckInterval > ep.CheckInterval {
			v.addf(f+".recheck_interval", "must be positive and at most the check interval (%s), got %s", ep.CheckInterval, ep.RecheckInterval)
		}
		if ep.Timeout <= 0 || ep.Timeout > ep.CheckInterval {
			v.addf(f+".timeout", "must be positive and at most the check interval (%s), got %s", ep.CheckInterval, ep.Timeout)
		}
	}
}
