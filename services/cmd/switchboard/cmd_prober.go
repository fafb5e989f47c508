package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/prober"
)

func newProberCmd(g *globals) *cobra.Command {
	var (
		adminListen, vantage string
		once, asJSON         bool
	)
	cmd := &cobra.Command{
		Use:   "prober [--once [ENDPOINT...]]",
		Short: "Run the prober: probe every endpoint and publish the results",
		Long: `Run the prober. It probes every configured endpoint on its check_interval
(scaled by 1±prober.jitter each time, the first round within 2 s of start) and
publishes every result as a switchboard.probe.result.v1 event on
switchboard.probe.<endpoint>, with source /prober/<vantage>, for the state
evaluator.

Probe kinds, chosen per endpoint by its probes list:
  health      GET {base_url}{health_path}
  models      GET {base_url}/models: the key works and every configured model
              is listed; spends no tokens
  completion  a tiny streamed chat completion that measures time to first
              token; it costs tokens, so it runs only with
              prober.completion.enabled (max_tokens: prober.completion.max_tokens)

Each result is pass, fail or inconclusive with an error class (timeout,
connect, dns, tls, http_5xx, http_429, auth, bad_body, stream_broken,
model_missing, client_error, internal); see docs/prober.md. At most
prober.max_concurrent probes run at once. Run one prober per vantage point
(region, network): the evaluator counts a probe failure only when a quorum of
vantages agrees. API keys never appear in events, logs or errors.

With --once it probes the named endpoints (all without names) once, prints
the results and exits 1 if any probe failed. It needs no NATS.`,
		Example: `  # The prober of vantage eu-west, metrics on :9101
  switchboard prober --config switchboard.yaml --vantage eu-west --admin-listen 127.0.0.1:9101

  # Probe two endpoints once and print the results (no NATS needed)
  switchboard prober --config switchboard.yaml --once openai relay-a

  # The same as JSON lines, one probe result each
  switchboard prober -c switchboard.yaml --once --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && !once {
				return fmt.Errorf("endpoint names are only taken with --once (got %q)", args)
			}
			if asJSON && !once {
				return fmt.Errorf("--json goes with --once")
			}
			cfg, err := g.loadWithEndpoints()
			if err != nil {
				return err
			}
			if vantage != "" {
				if !events.ValidName(vantage) {
					return fmt.Errorf("--vantage %q must match [A-Za-z0-9_-]+", vantage)
				}
				cfg.Prober.Vantage = vantage
			}
			if once {
				return probeOnce(cmd.OutOrStdout(), g, cfg, asJSON, args)
			}
			if adminListen == "" {
				adminListen = cfg.Prober.AdminListen
			}
			return serve(g, cfg, "prober", adminListen, func(d deps) (runner, error) {
				return prober.New(prober.Options{Config: d.Cfg, NC: d.NC, JS: d.JS, Log: d.Log, Registerer: d.Reg})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&adminListen, "admin-listen", "", "host:port of /metrics, /healthz and /readyz (default prober.admin_listen; empty: none)")
	f.StringVar(&vantage, "vantage", "", "name of this vantage point in event sources (default prober.vantage, else the host name)")
	f.BoolVar(&once, "once", false, "probe once, print the results and exit (1 if any probe failed); no NATS")
	f.BoolVar(&asJSON, "json", false, "with --once: print JSON lines instead of a table")
	return cmd
}

// probeOnce probes once and prints the results.
func probeOnce(out io.Writer, g *globals, cfg *config.Config, asJSON bool, names []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results, err := prober.Once(ctx, prober.Options{Config: cfg, Log: g.logger().With("service", "prober")}, names...)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		if r.Outcome == events.ProbeFail {
			failed++
		}
	}
	if asJSON {
		enc := json.NewEncoder(out)
		for i := range results {
			if err := enc.Encode(&results[i]); err != nil {
				return fmt.Errorf("print results: %w", err)
			}
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ENDPOINT\tKIND\tOUTCOME\tCLASS\tSTATUS\tLATENCY\tTTFT\tERROR")
		for _, r := range results {
			status, ttft := "-", "-"
			if r.StatusCode != 0 {
				status = strconv.Itoa(r.StatusCode)
			}
			if r.TTFTMS > 0 {
				ttft = fmt.Sprintf("%.0fms", r.TTFTMS)
			}
			class := string(r.ErrorClass)
			if class == "" {
				class = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.0fms\t%s\t%s\n",
				r.Endpoint, r.Kind, r.Outcome, class, status, r.LatencyMS, ttft, r.Error)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("print results: %w", err)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d probes failed", failed, len(results))
	}
	return nil
}
