package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/switchboard-llm/switchboard/services/internal/config"
)

func env(vars map[string]string) config.LookupEnv {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

var testEnv = env(map[string]string{"OPENAI_KEY": "sk-test-secret-123", "RELAY_URL": "https://relay.example.com/v1"})

const good = `# a good config
nats:
  url: nats://127.0.0.1:4222
endpoints:
  - name: openai
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_KEY}
    models: [gpt-4.1-mini, gpt-4.1]
    aliases:
      fast: gpt-4.1-mini
    tier: 1
  - name: relay
    base_url: ${RELAY_URL}
    models: [gpt-4.1-mini]
    health_path: /health
    quota_group: shared
    tier: 2
`

func TestParseGoodConfigFillsSeedDefaults(t *testing.T) {
	c, err := config.Parse("good.yaml", []byte(good), testEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Endpoints[0].APIKey.Value(); got != "sk-test-secret-123" {
		t.Errorf("api_key = %q, want the env value", got)
	}
	if got := c.Endpoints[1].BaseURL; got != "https://relay.example.com/v1" {
		t.Errorf("base_url = %q", got)
	}
	want := config.Health{
		CheckInterval: 30 * time.Second, Timeout: 10 * time.Second, HealthyThreshold: 3, UnhealthyThreshold: 3,
		LatencyThresholdMS: 5000, DegradedThresholdMS: 3000, EWMAAlpha: 0.3,
	}
	if diff := cmp.Diff(want, c.Health); diff != "" {
		t.Errorf("health defaults (-seed +got):\n%s", diff)
	}
	b := c.Breaker
	if b.FailureThreshold != 5 || b.RecoveryTimeout != 60*time.Second || b.HalfOpenRequests != 3 {
		t.Errorf("breaker defaults = %+v, want the seed's 5 / 60s / 3", b)
	}
	if diff := cmp.Diff([]string{"models"}, c.Endpoints[0].Probes); diff != "" {
		t.Errorf("openai probes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"health", "models"}, c.Endpoints[1].Probes); diff != "" {
		t.Errorf("relay probes (-want +got):\n%s", diff)
	}
	if m, ok := c.Endpoints[0].ServedModel("fast"); !ok || m != "gpt-4.1-mini" {
		t.Errorf("ServedModel(fast) = %q, %v", m, ok)
	}
	if _, ok := c.Endpoints[1].ServedModel("gpt-4.1"); ok {
		t.Error("relay claims to serve gpt-4.1")
	}
}

// TestBadConfigs is the table of bad configs with their exact messages.
func TestBadConfigs(t *testing.T) {
	ep := func(extra string) string {
		return "endpoints:\n  - name: a\n    base_url: http://127.0.0.1:9001/v1\n    models: [m]\n" + extra
	}
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"yaml syntax", "health: [\n", "bad.yaml:1: sequence end token ']' not found"},
		{"unknown field", "nats:\n  replicass: 3\n", `bad.yaml:2: nats.replicass: unknown field "replicass"`},
		{"wrong type", "health:\n  healthy_threshold: many\n", `bad.yaml:2: health.healthy_threshold: "many" is not a valid integer`},
		{"bad duration", "breaker:\n  recovery_timeout: soon\n", `bad.yaml:2: breaker.recovery_timeout: "soon" is not a duration (use e.g. 500ms, 30s, 5m)`},
		{"bad endpoint name", "endpoints:\n  - name: my endpoint\n    base_url: http://x/v1\n    models: [m]\n",
			`bad.yaml:2: endpoints[0].name: name "my endpoint" must match [A-Za-z0-9_-]+ (at most 128 characters)`},
		{"duplicate endpoint", ep("  - name: a\n    base_url: http://y/v1\n    models: [m]\n"),
			`bad.yaml:5: endpoints[1].name: "a" is also the name of endpoints[0]`},
		{"relative base_url", "endpoints:\n  - name: a\n    base_url: /v1\n    models: [m]\n",
			`bad.yaml:3: endpoints[0].base_url: "/v1" is not an absolute http(s) URL`},
		{"no models", "endpoints:\n  - name: a\n    base_url: http://x/v1\n",
			"bad.yaml:2: endpoints[0].models: at least one model is required"},
		{"unset env", ep("    api_key: ${NOT_SET_ANYWHERE}\n"),
			"bad.yaml:5: endpoints[0].api_key: environment variable NOT_SET_ANYWHERE is not set"},
		{"literal key", ep("    api_key: sk-live-abcdef\n"),
			"bad.yaml:5: endpoints[0].api_key: must be an ${ENV_VAR} reference; a literal secret does not belong in a config file"},
		{"alias to unknown model", ep("    aliases:\n      fast: gpt-9\n"),
			`bad.yaml:6: endpoints[0].aliases.fast: maps to "gpt-9", which is not in models`},
		{"health probe without path", ep("    probes: [health]\n"),
			"bad.yaml:5: endpoints[0].probes[0]: the health probe needs health_path"},
		{"timeout over interval", ep("    check_interval: 5s\n    timeout: 10s\n"),
			"bad.yaml:6: endpoints[0].timeout: must be positive and at most the check interval (5s), got 10s"},
		{"degraded over unhealthy", "health:\n  degraded_threshold_ms: 6000\n",
			"bad.yaml:2: health.degraded_threshold_ms: must be between 1 and latency_threshold_ms (5000) exclusive, got 6000"},
		{"negative threshold", "breaker:\n  failure_threshold: -1\n", "bad.yaml:2: breaker.failure_threshold: must be at least 1, got -1"},
		{"error rate over 1", "breaker:\n  error_rate_threshold: 1.5\n", "bad.yaml:2: breaker.error_rate_threshold: must be in (0, 1], got 1.5"},
		{"even replicas", "nats:\n  replicas: 2\n", "bad.yaml:2: nats.replicas: must be 1, 3 or 5, got 2"},
		{"unknown strategy", "worker:\n  strategy: random\n",
			`bad.yaml:2: worker.strategy: "random" is not one of latency_weighted, lowest_latency, tier, cheapest`},
		{"bad listen", "gateway:\n  listen: 8080\n", `bad.yaml:2: gateway.listen: "8080" is not host:port`},
		{"gateway key without name", "gateway:\n  api_keys:\n    - key: ${OPENAI_KEY}\n", "bad.yaml:3: gateway.api_keys[0].name: is required"},
		{"user without password", "nats:\n  user: svc\n", "bad.yaml:2: nats.password: is required with nats.user"},
		{"health max age under the duplicate window", "nats:\n  streams:\n    health_max_age: 1m\n",
			"bad.yaml:3: nats.streams.health_max_age: must be at least 2m0s, the stream's duplicate window, got 1m0s"},
		{"status max age under the duplicate window", "nats:\n  streams:\n    status_max_age: 90s\n",
			"bad.yaml:3: nats.streams.status_max_age: must be at least 2m0s, the stream's duplicate window, got 1m30s"},
		{"duplicate window over job_ttl", "nats:\n  streams:\n    job_ttl: 5m\n    duplicate_window: 10m\n",
			"bad.yaml:4: nats.streams.duplicate_window: must be at most job_ttl (5m0s): a stream's duplicate window cannot be longer than its max age; got 10m0s"},
		{"duplicate window over dlq_max_age", "nats:\n  streams:\n    dlq_max_age: 1h\n    duplicate_window: 2h\n",
			"bad.yaml:4: nats.streams.duplicate_window: must be at most dlq_max_age (1h0m0s): a stream's duplicate window cannot be longer than its max age; got 2h0m0s"},
		{"trial lease not longer than a call", "breaker:\n  trial_lease_ttl: 10s\nworker:\n  request_timeout: 5m\n",
			"bad.yaml:2: breaker.trial_lease_ttl: must be longer than worker.request_timeout (5m0s), or a trial call outlives its lease and more than half_open_requests trials run at once; got 10s"},
		{"negative weight", ep("    weight: -1\n"), "bad.yaml:5: endpoints[0].weight: must be positive (0 or unset: the default, 1), got -1"},
		{"jitter of 1", "prober:\n  jitter: 1\n", "bad.yaml:2: prober.jitter: must be in [0, 1) (0: no jitter), got 1"},
		{"callback timeout under a second", "worker:\n  callback_timeout: 500ms\n", "bad.yaml:2: worker.callback_timeout: must be at least 1s, got 500ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse("bad.yaml", []byte(tt.yaml), testEnv)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse error = %v (%T), want *config.Error", err, err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error:\n got  %s\n want %s", got, tt.want)
			}
		})
	}
}

func TestEveryProblemIsReportedInLineOrder(t *testing.T) {
	y := "nats:\n  replicas: 4\nendpoints:\n  - name: a.b\n    base_url: ftp://x\n    models: [m]\nworker:\n  concurrency: -3\n"
	_, err := config.Parse("multi.yaml", []byte(y), testEnv)
	want := strings.Join([]string{
		"multi.yaml:2: nats.replicas: must be 1, 3 or 5, got 4",
		`multi.yaml:4: endpoints[0].name: name "a.b" must match [A-Za-z0-9_-]+ (at most 128 characters)`,
		`multi.yaml:5: endpoints[0].base_url: "ftp://x" is not an absolute http(s) URL`,
		"multi.yaml:8: worker.concurrency: must be at least 1, got -3",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("error:\n%v\nwant:\n%s", err, want)
	}
}

func TestSecretsNeverPrint(t *testing.T) {
	c, err := config.Parse("good.yaml", []byte(good), testEnv)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		fmt.Sprint(c.Endpoints[0]), fmt.Sprintf("%+v", c.Endpoints[0]), fmt.Sprintf("%#v", c.Endpoints[0]),
		fmt.Sprintf("%v", c.Endpoints[0].APIKey),
	} {
		if strings.Contains(s, "sk-test-secret-123") {
			t.Errorf("secret printed: %s", s)
		}
	}
	b, _ := c.Endpoints[0].APIKey.MarshalJSON()
	if string(b) != `"[redacted]"` {
		t.Errorf("MarshalJSON = %s", b)
	}
	// An error about a key never quotes the key.
	_, err = config.Parse("bad.yaml", []byte("endpoints:\n  - name: a\n    base_url: http://x/v1\n    models: [m]\n    api_key: sk-live-abcdef\n"), testEnv)
	if err == nil || strings.Contains(err.Error(), "sk-live-abcdef") {
		t.Errorf("error leaks or is missing: %v", err)
	}
}

func TestLoadFileAndEmptyFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "empty.yaml")
	if err := os.WriteFile(p, []byte("# nothing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(p)
	if err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if c.Health.CheckInterval != 30*time.Second || c.File != p {
		t.Errorf("empty file config = %+v", c.Health)
	}
	if _, err := config.Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file error = %v", err)
	}
}

// TestZeroAndUnset: where 0 means something it is kept, where it means the
// default the default is filled, and defaults that depend on other fields
// follow them.
func TestZeroAndUnset(t *testing.T) {
	parse := func(t *testing.T, y string) *config.Config {
		t.Helper()
		c, err := config.Parse("c.yaml", []byte(y), testEnv)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("jitter 0 is no jitter", func(t *testing.T) {
		if j := parse(t, "prober:\n  jitter: 0\n").Prober.Jitter; j == nil || *j != 0 {
			t.Errorf("jitter = %v, want 0", j)
		}
		if j := parse(t, "").Prober.Jitter; j == nil || *j != config.DefaultJitter {
			t.Errorf("unset jitter = %v, want %v", j, config.DefaultJitter)
		}
	})
	t.Run("weight 0 is the default", func(t *testing.T) {
		c := parse(t, "endpoints:\n  - {name: a, base_url: http://x/v1, models: [m], weight: 0}\n")
		if w := c.Endpoints[0].Weight; w != 1 {
			t.Errorf("weight = %v, want 1", w)
		}
	})
	t.Run("the duplicate window fits the shortest max age", func(t *testing.T) {
		if d := parse(t, "").NATS.Streams.DuplicateWindow; d != config.DefaultDuplicateWindow {
			t.Errorf("duplicate_window = %s, want %s", d, config.DefaultDuplicateWindow)
		}
		if d := parse(t, "nats:\n  streams:\n    job_ttl: 5m\n").NATS.Streams.DuplicateWindow; d != 5*time.Minute {
			t.Errorf("duplicate_window with job_ttl 5m = %s, want 5m", d)
		}
	})
	t.Run("the trial lease outlives a call", func(t *testing.T) {
		if d := parse(t, "").Breaker.TrialLeaseTTL; d != 120*time.Second+config.TrialLeaseMargin {
			t.Errorf("trial_lease_ttl = %s, want request_timeout 2m + 30s", d)
		}
		if d := parse(t, "worker:\n  request_timeout: 5m\n").Breaker.TrialLeaseTTL; d != 5*time.Minute+config.TrialLeaseMargin {
			t.Errorf("trial_lease_ttl with request_timeout 5m = %s, want 5m30s", d)
		}
	})
}
