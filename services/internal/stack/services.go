package stack

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"

	"github.com/switchboard-llm/switchboard/services/prober"
)

// addServices adds every service of the system to the group. Each gets its
// own context, cancelled by the group's interrupt, and a child logger; all
// share the stack's connection and metrics registry.
func (s *Stack) addServices(g *run.Group, nc *nats.Conn, js jetstream.JetStream) error {
	// Prober.
	{
		p, err := prober.New(prober.Options{Config: s.cfg, NC: nc, JS: js, Log: s.log.With("service", "prober"), Registerer: s.reg})
		if err != nil {
			return fmt.Errorf("prober: %w", err)
		}
		s.add(g, p)
	}
	return nil
}

type runner interface {
	Run(ctx context.Context) error
}

func (s *Stack) add(g *run.Group, r runner) {
	ctx, cancel := context.WithCancel(context.Background())
	g.Add(func() error { return r.Run(ctx) }, func(error) { cancel() })
}
