package main

import (
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/worker"
)

func newWorkerCmd(g *globals) *cobra.Command {
	var adminListen string
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a request worker: take chat jobs, route them to healthy endpoints, fail over",
		Long: `Run one request worker. It takes durable jobs from the SWITCHBOARD_JOBS work
queue (shared durable consumers workers-high, workers-normal and workers-low;
high priority first) and interactive calls from switchboard.jobs.interactive
(queue group "workers"), chooses an endpoint that serves the model and whose
breaker admits a call (healthy before degraded before unknown, then
worker.strategy), calls it, and fails over to the next endpoint on an
endpoint failure within the job's attempt budget and deadline.

Every upstream call is published as a switchboard.request.outcome.v1 event for
the state evaluator. Every durable job ends in exactly one terminal record in
KV switchboard-jobs and one switchboard.chat.job.finished.v1 event, and its
callback URL, if any, gets a signed POST (Switchboard-Signature, HMAC-SHA256
with worker.callback_secret).

Run any number of workers: they share the consumers, and a worker killed
mid-job loses nothing (the job is redelivered after worker.ack_wait).
Settings come from the worker section of the config file (concurrency,
strategy, max_attempts, job_timeout, request_timeout, ack_wait, max_deliver,
max_ack_pending, callback_secret, admin_listen). SIGINT or SIGTERM stops taking
jobs, lets running ones finish for up to 10 s and NAKs the rest for other
workers.`,
		Example: `  # One worker against a local NATS, metrics on :9102
  switchboard worker --config switchboard.yaml --admin-listen 127.0.0.1:9102

  # Against a cluster
  NATS_URL=nats://n1:4222,nats://n2:4222 switchboard worker -c /etc/switchboard.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadWithEndpoints()
			if err != nil {
				return err
			}
			if adminListen == "" {
				adminListen = cfg.Worker.AdminListen
			}
			return serve(g, cfg, "worker", adminListen, func(d deps) (runner, error) {
				return worker.New(worker.Options{Config: d.Cfg, NC: d.NC, JS: d.JS, Log: d.Log, Registerer: d.Reg})
			})
		},
	}
	cmd.Flags().StringVar(&adminListen, "admin-listen", "", "host:port of /metrics, /healthz and /readyz (default worker.admin_listen; empty: none)")
	return cmd
}
