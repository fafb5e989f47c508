// Package stack composes the whole of Switchboard in one process: an
// embedded NATS server with JetStream, every service, and (when the config
// names no endpoints) three built-in mock endpoints. It is `switchboard dev`
// and the harness of end-to-end tests.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/switchboard-llm/switchboard/services/internal/admin"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// Options configure a stack.
type Options struct {
	// Config is the configuration; with no endpoints, three mock endpoints
	// (fast, slow, flaky) are started and configured.
	Config *config.Config
	// NATSListen is where the embedded NATS server accepts clients
	// (default 127.0.0.1:4222; "127.0.0.1:0" picks a free port).
	NATSListen string
	// StoreDir holds JetStream data ("" = a temporary directory).
	StoreDir string
	// AdminListen serves /metrics for every service ("" = none).
	AdminListen string
	Log         *slog.Logger
	// Out receives the banner: what runs where.
	Out io.Writer
	// DevTimings applies DevTimings to the configuration.
	DevTimings bool
}

// MockEndpoint is one built-in mock endpoint.
type MockEndpoint struct {
	Name   string
	URL    string // base URL, ending in /v1
	Server *mock.Server
	ln     net.Listener
}

// Stack is the whole system in one process.
type Stack struct {
	opts  Options
	cfg   *config.Config
	log   *slog.Logger
	reg   *prometheus.Registry
	Mocks []*MockEndpoint
	// GatewayURL is the gateway's base URL once Run started it.
	GatewayURL string
	// gatewayLn is the gateway's listener, bound before the group runs: the
	// gateway closes it when it stops, Run when the group never starts.
	gatewayLn net.Listener
}

// New prepares a stack; Run starts it.
func New(o Options) (*Stack, error) {
	if o.Config == nil {
		o.Config = config.Default()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.NATSListen == "" {
		o.NATSListen = config.DefaultNATSListen
	}
	s := &Stack{opts: o, cfg: o.Config, log: o.Log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if len(s.cfg.Endpoints) == 0 {
		if err := s.addMocks(); err != nil {
			return nil, err
		}
	}
	if o.DevTimings {
		DevTimings(s.cfg)
	}
	if err := s.cfg.Validate(); err != nil {
		s.closeMocks()
		return nil, err
	}
	return s, nil
}

// DevTimings make the demo move at a human pace: probes every 3 s (a
// failing endpoint is re-checked faster), breakers that recover in 10 s.
func DevTimings(c *config.Config) {
	c.Health.CheckInterval = 3 * time.Second
	c.Health.Timeout = 2500 * time.Millisecond
	c.Breaker.RecoveryTimeout = 10 * time.Second
	c.Breaker.MaxRecoveryTimeout = 60 * time.Second
	c.Health.RecheckInterval = 500 * time.Millisecond
	for i := range c.Endpoints {
		c.Endpoints[i].CheckInterval = c.Health.CheckInterval
		c.Endpoints[i].Timeout = c.Health.Timeout
		c.Endpoints[i].RecheckInterval = c.Health.RecheckInterval
	}
}

// addMocks starts listeners for the three built-in mock endpoints and
// configures them as the stack's endpoints.
func (s *Stack) addMocks() error {
	for _, mc := range []mock.Config{mock.Fast("fast"), mock.Slow("slow"), mock.Flaky("flaky")} {
		mc.Models = []string{"gpt-4.1-mini", "gpt-4.1"}
		srv, err := mock.New(mc)
		if err != nil {
			return fmt.Errorf("mock %s: %w", mc.Name, err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("mock %s: listen: %w", mc.Name, err)
		}
		url := "http://" + ln.Addr().String() + "/v1"
		s.Mocks = append(s.Mocks, &MockEndpoint{Name: mc.Name, URL: url, Server: srv, ln: ln})
		s.cfg.Endpoints = append(s.cfg.Endpoints, config.Endpoint{
			Name: mc.Name, BaseURL: url, Models: mc.Models, HealthPath: "/health",
			Aliases: map[string]string{"fast": "gpt-4.1-mini", "smart": "gpt-4.1"},
		})
	}
	s.cfg.Endpoints[0].Tier = 1
	s.cfg.Endpoints[1].Tier = 2
	s.cfg.Endpoints[2].Tier = 3
	return nil
}

func (s *Stack) closeMocks() {
	for _, m := range s.Mocks {
		m.ln.Close()
		m.Server.Close()
	}
}

// Config is the stack's effective configuration (mock endpoints included).
func (s *Stack) Config() *config.Config { return s.cfg }

// Run starts NATS, the mocks and every service, and runs until ctx ends.
// Ordering: the embedded NATS server starts first and stops last, after
// every service has returned (oklog/run interrupts do not wait for each
// other, so the server is outside the group).
func (s *Stack) Run(ctx context.Context) error {
	srv, err := natsx.StartServer(natsx.ServerOptions{Name: "switchboard-dev", Listen: s.opts.NATSListen, StoreDir: s.opts.StoreDir})
	if err != nil {
		s.closeMocks()
		return err
	}
	defer srv.Shutdown()
	s.cfg.NATS.URL = srv.ClientURL()

	nc, err := nats.Connect(srv.ClientURL(), nats.Name("switchboard-dev"), nats.MaxReconnects(-1))
	if err != nil {
		s.closeMocks()
		return fmt.Errorf("connect to embedded nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		s.closeMocks()
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = natsx.Provision(pctx, js, s.cfg.NATS)
	cancel()
	if err != nil {
		s.closeMocks()
		return err
	}

	var g run.Group
	// Mock endpoints.
	for _, m := range s.Mocks {
		mctx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { return m.Server.Run(mctx, m.ln) }, func(error) { cancel() })
	}
	// Services.
	if err := s.addServices(&g, nc, js); err != nil {
		s.closeMocks()
		return err
	}
	// Admin: metrics of every service.
	if s.opts.AdminListen != "" {
		a := &admin.Server{Addr: s.opts.AdminListen, Gatherer: s.reg, Log: s.log}
		if err := a.Listen(); err != nil {
			s.closeMocks()
			s.gatewayLn.Close()
			return err
		}
		fmt.Fprintf(s.opts.Out, "  metrics     %s/metrics\n", a.URL())
		actx, cancel := context.WithCancel(context.Background())
		g.Add(func() error { return a.Run(actx) }, func(error) { cancel() })
	}
	s.banner(srv)
	// Until the caller stops us.
	g.Add(func() error { <-ctx.Done(); return nil }, func(error) {})
	err = g.Run()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (s *Stack) banner(srv *natsx.Server) {
	w := s.opts.Out
	fmt.Fprintf(w, "  nats        %s  (subscribe: nats sub 'switchboard.>' --server %s)\n", srv.ClientURL(), srv.ClientURL())
	fmt.Fprintf(w, "  gateway     %s/  (status page; OpenAI-compatible API at %s/v1)\n", s.GatewayURL, s.GatewayURL)
	for _, m := range s.Mocks {
		fmt.Fprintf(w, "  mock        %-6s %s\n", m.Name, m.URL)
	}
	for _, ep := range s.cfg.Endpoints {
		fmt.Fprintf(w, "  endpoint    %-10s %s  models=%v probes=%v every %s\n", ep.Name, ep.BaseURL, ep.Models, ep.Probes, ep.CheckInterval)
	}
	fmt.Fprintln(w, "  press Ctrl-C to stop")
}
