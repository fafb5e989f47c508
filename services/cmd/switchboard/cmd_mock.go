package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/mock"
)

// mockFlags are the flags of `switchboard mock`. Fault flags override the
// preset only when given.
type mockFlags struct {
	listen, name, apiKeyEnv, preset string
	models                          []string
	seed                            int64
	streamChunks                    int
	streamDelay                     time.Duration

	latency, latencyMin, latencyMax, retryAfter time.Duration
	errorRate, rateLimitRate, hangRate          float64
	malformedRate, truncateRate                 float64
	errorStatus                                 int
	applyToHealth, down                         bool
	outageEvery, outageFor, outageOffset        time.Duration
	outageMode                                  string
}

func newMockCmd() *cobra.Command {
	var fl mockFlags
	cmd := &cobra.Command{
		Use:   "mock",
		Short: "Run an OpenAI-compatible mock endpoint with fault injection",
		Long: `Run an OpenAI-compatible endpoint that answers from memory and fails on
purpose: for demos, tests and benchmarks of Switchboard (or of any client).

It serves, under any path prefix (so http://HOST/v1 and http://HOST/e17/v1 both
work as base URLs):

  GET  .../health              {"status":"ok"}, no API key needed
  GET  .../models              the --models list
  POST .../chat/completions    a deterministic reply, "mock <name>: <first 64
                               characters of the last user message>", or a
                               server-sent event stream with "stream": true

Faults apply to models and chat completions; health checks fail during outages
and at --error-rate. Rates are shares of requests between 0 and 1, drawn from
--seed, so a run with the same seed and the same requests fails the same way:

  --latency, --latency-min/--latency-max   added delay: fixed plus a random extra
  --error-rate, --error-status             OpenAI error answers (default 500)
  --rate-limit-rate, --retry-after         429 with Retry-After (default 1s)
  --hang-rate                              no answer until the client gives up
  --malformed-rate                         200 with a body that is no answer
  --truncate-rate                          answer cut off, connection aborted
  --outage-every/--outage-for/--outage-offset
                                           down for FOR of every EVERY, from start
  --outage-mode                            status (503), reset, or hang

A --preset sets a starting point that the other flags override:
  fast   5-20 ms latency, no faults
  slow   800-1500 ms latency
  flaky  20-250 ms, half the requests and health checks fail with 503,
         10% get 429, and down for 20 s of every minute

Faults can be changed while it runs, through the admin API on the same port:
GET/PUT/PATCH /_mock/faults, GET /_mock/stats, POST /_mock/down and /_mock/up.
With --api-key-env the key is read from that environment variable and required
as "Authorization: Bearer KEY" everywhere but health (the admin API included).

It stops cleanly on SIGINT or SIGTERM, releasing hung requests.`,
		Example: `  # A healthy endpoint on the default port
  switchboard mock

  # A flaky one on another port, with its own name
  switchboard mock --listen 127.0.0.1:9003 --name flaky --preset flaky

  # Every other call fails with 503, every tenth is throttled for 5 s
  switchboard mock --error-rate 0.5 --error-status 503 --rate-limit-rate 0.1 --retry-after 5s

  # Require a key, then take the endpoint down and up again at runtime
  MOCK_KEY=sk-test switchboard mock --api-key-env MOCK_KEY &
  curl -H "Authorization: Bearer sk-test" -X POST localhost:9001/_mock/down
  curl -H "Authorization: Bearer sk-test" -X POST localhost:9001/_mock/up`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := fl.config(cmd)
			if err != nil {
				return err
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			srv, err := mock.New(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", fl.listen)
			if err != nil {
				return fmt.Errorf("mock: listen: %w", err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(cmd.OutOrStdout(), "mock endpoint %q listening on http://%s/v1 (models %s, admin at /_mock/)\n",
				cfg.Name, ln.Addr(), strings.Join(cfg.Models, ", "))
			return srv.Run(ctx, ln)
		},
	}

	f := cmd.Flags()
	f.StringVar(&fl.listen, "listen", "127.0.0.1:9001", "address to listen on")
	f.StringVar(&fl.name, "name", mock.DefaultName, "endpoint name, in the X-Mock-Endpoint header and in replies")
	f.StringSliceVar(&fl.models, "models", mock.DefaultModels, "models served, comma-separated")
	f.StringVar(&fl.apiKeyEnv, "api-key-env", "", "require the API key held in this environment variable")
	f.Int64Var(&fl.seed, "seed", 0, "seed for fault draws (default: the preset's, else 0)")
	f.StringVar(&fl.preset, "preset", "", "starting point: fast, slow or flaky")
	f.IntVar(&fl.streamChunks, "stream-chunks", mock.DefaultStreamChunks, "content chunks in a streamed reply")
	f.DurationVar(&fl.streamDelay, "stream-delay", 0, "pause before each streamed chunk")

	f.DurationVar(&fl.latency, "latency", 0, "fixed latency added to every answer")
	f.DurationVar(&fl.latencyMin, "latency-min", 0, "lower bound of a random extra latency")
	f.DurationVar(&fl.latencyMax, "latency-max", 0, "upper bound of a random extra latency")
	f.Float64Var(&fl.errorRate, "error-rate", 0, "share of requests (0..1) answered with --error-status")
	f.IntVar(&fl.errorStatus, "error-status", 500, "status of injected errors (4xx or 5xx)")
	f.BoolVar(&fl.applyToHealth, "apply-to-health", true, "let --error-rate fail health checks too")
	f.Float64Var(&fl.rateLimitRate, "rate-limit-rate", 0, "share of requests (0..1) answered with 429")
	f.DurationVar(&fl.retryAfter, "retry-after", time.Second, "Retry-After of injected 429s")
	f.Float64Var(&fl.hangRate, "hang-rate", 0, "share of requests (0..1) never answered")
	f.Float64Var(&fl.malformedRate, "malformed-rate", 0, "share of answers (0..1) that are 200s with a broken body")
	f.Float64Var(&fl.truncateRate, "truncate-rate", 0, "share of answers (0..1) cut off mid-body")
	f.DurationVar(&fl.outageEvery, "outage-every", 0, "period of scheduled outages (0: one outage)")
	f.DurationVar(&fl.outageFor, "outage-for", 0, "length of each scheduled outage")
	f.DurationVar(&fl.outageOffset, "outage-offset", 0, "start of the first outage, from startup")
	f.StringVar(&fl.outageMode, "outage-mode", string(mock.OutageStatus), "behaviour during outages: status (503), reset or hang")
	f.BoolVar(&fl.down, "down", false, "start down (until POST /_mock/up)")
	return cmd
}

// config builds the mock's config: the preset, then every flag that was given.
func (fl *mockFlags) config(cmd *cobra.Command) (mock.Config, error) {
	var cfg mock.Config
	switch fl.preset {
	case "":
	case "fast":
		cfg = mock.Fast(fl.name)
	case "slow":
		cfg = mock.Slow(fl.name)
	case "flaky":
		cfg = mock.Flaky(fl.name)
	default:
		return cfg, fmt.Errorf("mock: --preset %q: want fast, slow or flaky", fl.preset)
	}
	cfg.Name = fl.name
	cfg.Models = fl.models
	changed := cmd.Flags().Changed
	if changed("seed") || fl.preset == "" {
		cfg.Seed = fl.seed
	}
	cfg.StreamChunks = fl.streamChunks
	if changed("stream-delay") {
		cfg.StreamDelay = fl.streamDelay
	}
	if fl.apiKeyEnv != "" {
		cfg.APIKey = os.Getenv(fl.apiKeyEnv)
		if cfg.APIKey == "" {
			return cfg, fmt.Errorf("mock: --api-key-env: environment variable %s is empty or unset", fl.apiKeyEnv)
		}
	}

	ft := &cfg.Faults
	for _, o := range []struct {
		flag  string
		apply func()
	}{
		{"latency", func() { ft.Latency = mock.Duration(fl.latency) }},
		{"latency-min", func() { ft.LatencyMin = mock.Duration(fl.latencyMin) }},
		{"latency-max", func() { ft.LatencyMax = mock.Duration(fl.latencyMax) }},
		{"error-rate", func() { ft.ErrorRate = fl.errorRate }},
		{"error-status", func() { ft.ErrorStatus = fl.errorStatus }},
		{"apply-to-health", func() { ft.ApplyToHealth = &fl.applyToHealth }},
		{"rate-limit-rate", func() { ft.RateLimitRate = fl.rateLimitRate }},
		{"retry-after", func() { ft.RetryAfter = mock.Duration(fl.retryAfter) }},
		{"hang-rate", func() { ft.HangRate = fl.hangRate }},
		{"malformed-rate", func() { ft.MalformedRate = fl.malformedRate }},
		{"truncate-rate", func() { ft.TruncateRate = fl.truncateRate }},
		{"outage-mode", func() { ft.OutageMode = mock.OutageMode(fl.outageMode) }},
		{"down", func() { ft.Down = fl.down }},
	} {
		if changed(o.flag) {
			o.apply()
		}
	}
	if changed("outage-every") || changed("outage-for") || changed("outage-offset") {
		ft.Outages = []mock.Outage{{
			Every:  mock.Duration(fl.outageEvery),
			For:    mock.Duration(fl.outageFor),
			Offset: mock.Duration(fl.outageOffset),
		}}
	}
	return cfg, nil
}
