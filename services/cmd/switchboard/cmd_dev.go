package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/stack"
)

func newDevCmd(g *globals) *cobra.Command {
	var natsListen, storeDir, adminListen string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole system in one process on an embedded NATS server",
		Long: `Run an embedded NATS server with JetStream and every Switchboard service in
one process. Without --config, three built-in mock endpoints are started
(fast, slow and flaky) and probed every 3 s, with breakers that recover in
10 s, so that you can watch the system react.

The embedded NATS server listens on 127.0.0.1:4222 by default, so the nats
CLI and other programs can attach (nats sub 'switchboard.>'). Ctrl-C stops
everything cleanly.`,
		Example: `  switchboard dev
  switchboard dev --config switchboard.yaml --store-dir ./data
  nats sub 'switchboard.probe.>'    # in another terminal`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg *config.Config
			if g.configPath != "" {
				var err error
				if cfg, err = config.Load(g.configPath); err != nil {
					return err
				}
			} else {
				cfg = config.Default()
			}
			st, err := stack.New(stack.Options{
				Config: cfg, NATSListen: natsListen, StoreDir: storeDir, AdminListen: adminListen,
				Log: g.logger(), Out: cmd.OutOrStdout(), DevTimings: g.configPath == "",
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintln(cmd.OutOrStdout(), "switchboard dev")
			return st.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&natsListen, "nats-listen", config.DefaultNATSListen, "host:port of the embedded NATS server")
	f.StringVar(&storeDir, "store-dir", "", "JetStream store directory (default: a temporary directory)")
	f.StringVar(&adminListen, "admin-listen", "127.0.0.1:9090", "host:port serving /metrics of every service (empty: off)")
	return cmd
}
