package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/switchboard-llm/switchboard/services/internal/admin"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// deps is what a service needs from the process that runs it.
type deps struct {
	Cfg *config.Config
	NC  *nats.Conn
	JS  jetstream.JetStream
	Log *slog.Logger
	Reg *prometheus.Registry
}

// runner is a long-lived service.
type runner interface {
	Run(ctx context.Context) error
}

// newRegistry is a Prometheus registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serve runs one service as its own process: connect to NATS, provision the
// streams and buckets, serve metrics on adminListen, and run the service
// until SIGINT or SIGTERM.
func serve(g *globals, cfg *config.Config, name, adminListen string, build func(deps) (runner, error)) error {
	log := g.logger().With("service", name)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nc, js, err := connect(ctx, cfg, "switchboard-"+name, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = natsx.Provision(pctx, js, cfg.NATS)
	cancel()
	if err != nil {
		return err
	}
	reg := newRegistry()
	svc, err := build(deps{Cfg: cfg, NC: nc, JS: js, Log: log, Reg: reg})
	if err != nil {
		return err
	}

	var g2 run.Group
	// The service itself.
	{
		sctx, cancel := context.WithCancel(context.Background())
		g2.Add(func() error { return svc.Run(sctx) }, func(error) { cancel() })
	}
	// Admin server: metrics, healthz, readyz.
	if adminListen != "" {
		a := &admin.Server{Addr: adminListen, Gatherer: reg, Log: log,
			Ready: func() error {
				if !nc.IsConnected() {
					return fmt.Errorf("nats: %s", nc.Status())
				}
				return nil
			}}
		if err := a.Listen(); err != nil {
			return err
		}
		log.Info("admin listening", "url", a.URL())
		actx, cancel := context.WithCancel(context.Background())
		g2.Add(func() error { return a.Run(actx) }, func(error) { cancel() })
	}
	// Signals.
	g2.Add(func() error {
		<-ctx.Done()
		log.Info("shutting down")
		return nil
	}, func(error) { stop() })
	return g2.Run()
}
