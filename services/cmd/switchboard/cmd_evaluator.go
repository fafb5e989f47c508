package main

import (
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/evaluator"
)

func newEvaluatorCmd(g *globals) *cobra.Command {
	var adminListen, instance string
	cmd := &cobra.Command{
		Use:   "evaluator",
		Short: "Run the state evaluator: endpoint health and circuit breakers from probes and traffic",
		Long: `Run the state evaluator. It consumes probe results and request outcomes from
the SWITCHBOARD_HEALTH stream (the durable consumer "evaluator", shared by every
replica), runs each endpoint's health and circuit-breaker state machine, keeps
the endpoint's record in the KV bucket switchboard-endpoints by compare-and-set,
and publishes switchboard.endpoint.status_changed.v1 on
switchboard.status.<endpoint> after every write that changed health, breaker,
throttle or override (id and Nats-Msg-Id <endpoint>@<revision>).

Run as many replicas as you like: each endpoint's events are applied exactly
once and in stream order whichever replica receives them, half-open trial
slots are leases in KV (half_open_requests across the whole cluster), and
time-driven transitions (open -> half_open after the recovery timeout, a
throttle ending) happen every evaluator.tick_interval without any traffic.

The rules and their settings (health.*, breaker.*) are in docs/evaluator.md.
Watch the result with 'switchboard status' and 'switchboard watch'.`,
		Example: `  # One replica, metrics on :9102
  switchboard evaluator --config switchboard.yaml --admin-listen 127.0.0.1:9102

  # A second replica elsewhere, against the same NATS cluster
  switchboard evaluator -c switchboard.yaml --instance eval-b`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadWithEndpoints()
			if err != nil {
				return err
			}
			if instance != "" {
				cfg.Evaluator.Instance = instance
				if err := cfg.Validate(); err != nil {
					return err
				}
			}
			if adminListen == "" {
				adminListen = cfg.Evaluator.AdminListen
			}
			return serve(g, cfg, "evaluator", adminListen, func(d deps) (runner, error) {
				return evaluator.New(evaluator.Options{Config: d.Cfg, NC: d.NC, JS: d.JS, Log: d.Log, Registerer: d.Reg})
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&adminListen, "admin-listen", "", "host:port of /metrics, /healthz and /readyz (default evaluator.admin_listen; empty: none)")
	f.StringVar(&instance, "instance", "", "name of this replica in event sources /evaluator/<instance> (default evaluator.instance, else the host name)")
	return cmd
}
