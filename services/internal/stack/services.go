package stack

import (
	"context"
	"fmt"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"

	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/gateway"
	"github.com/switchboard-llm/switchboard/services/prober"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// addServices adds every service of the system to the group. Each gets its
// own context, cancelled by the group's interrupt, and a child logger; all
// share the stack's connection and metrics registry.
func (s *Stack) addServices(g *run.Group, nc *nats.Conn, js jetstream.JetStream) error {
	// Evaluator: turns probe results and outcomes into endpoint state.
	ev, err := evaluator.New(evaluator.Options{Config: s.cfg, NC: nc, JS: js, Log: s.log.With("service", "evaluator"), Registerer: s.reg})
	if err != nil {
		return fmt.Errorf("evaluator: %w", err)
	}
	s.add(g, ev)

	// Prober.
	p, err := prober.New(prober.Options{Config: s.cfg, NC: nc, JS: js, Log: s.log.With("service", "prober"), Registerer: s.reg})
	if err != nil {
		return fmt.Errorf("prober: %w", err)
	}
	s.add(g, p)

	// Request worker: durable jobs and the interactive lane.
	w, err := worker.New(worker.Options{Config: s.cfg, NC: nc, JS: js, Log: s.log.With("service", "worker"), Registerer: s.reg})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	s.add(g, w)

	// Gateway: HTTP. Its listener is bound here so that a bad address fails
	// before anything runs and the banner can print the real port.
	ln, err := net.Listen("tcp", s.cfg.Gateway.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen %s: %w", s.cfg.Gateway.Listen, err)
	}
	gw, err := gateway.New(gateway.Options{Config: s.cfg, NC: nc, JS: js, Log: s.log.With("service", "gateway"),
		Registerer: s.reg, Gatherer: s.reg, Listener: ln})
	if err != nil {
		ln.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	s.GatewayURL = "http://" + ln.Addr().String()
	s.gatewayLn = ln
	s.add(g, gw)
	return nil
}

type runner interface {
	Run(ctx context.Context) error
}

func (s *Stack) add(g *run.Group, r runner) {
	ctx, cancel := context.WithCancel(context.Background())
	g.Add(func() error { return r.Run(ctx) }, func(error) { cancel() })
}
