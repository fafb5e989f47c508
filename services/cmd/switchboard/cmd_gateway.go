package main

import (
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/gateway"
)

func newGatewayCmd(g *globals) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the HTTP gateway: job API, OpenAI-compatible API, endpoint table, events, status page",
		Long: `Run the HTTP gateway on gateway.listen (default 127.0.0.1:8080). It serves
(see docs/api.md):

  POST   /v1/jobs                 submit a durable job (202 once JetStream stored it)
  GET    /v1/jobs/{id}[?wait=30s] a job's record; wait long-polls until it finished
  DELETE /v1/jobs/{id}            cancel a job that has not finished
  POST   /v1/chat/completions     OpenAI-compatible chat, relayed to the workers
                                  over NATS (the interactive lane), stream or not
  GET    /v1/models               every model and alias the endpoints serve
  GET    /v1/endpoints            every endpoint's config (no keys) and state
  GET    /v1/events               server-sent events: status changes, and with
                                  ?job=ID that job's finished event
  GET    /                        status page; /healthz, /readyz, /metrics

OpenAI SDKs work against it by changing only the base URL to
http://HOST:PORT/v1. When gateway.api_keys is set, every /v1 route needs
"Authorization: Bearer <key>"; the key's name appears in logs and metrics,
never the key. Interactive calls time out after worker.request_timeout. Run
any number of gateways behind a load balancer: they keep no state of their own.
SIGINT or SIGTERM stops taking connections and lets calls in flight finish for
up to 10 s.`,
		Example: `  # One gateway on the default address
  switchboard gateway --config switchboard.yaml

  # On all interfaces, then call it with the OpenAI Python SDK
  switchboard gateway -c switchboard.yaml --listen 0.0.0.0:8080
  OPENAI_BASE_URL=http://localhost:8080/v1 OPENAI_API_KEY=$GATEWAY_KEY python app.py`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadWithEndpoints()
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Gateway.Listen = listen
			}
			// The gateway serves its own /metrics, so no admin server.
			return serve(g, cfg, "gateway", "", func(d deps) (runner, error) {
				return gateway.New(gateway.Options{Config: d.Cfg, NC: d.NC, JS: d.JS, Log: d.Log,
					Registerer: d.Reg, Gatherer: d.Reg})
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "host:port to serve on (default gateway.listen)")
	return cmd
}
