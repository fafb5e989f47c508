package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// globals are the flags every subcommand shares.
type globals struct {
	configPath string
	natsURL    string
	logLevel   string
	logJSON    bool
}

func (g *globals) register(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVarP(&g.configPath, "config", "c", os.Getenv("SWITCHBOARD_CONFIG"),
		"config file (YAML); env SWITCHBOARD_CONFIG")
	f.StringVar(&g.natsURL, "nats-url", os.Getenv("NATS_URL"),
		"NATS server URL(s), overrides nats.url; env NATS_URL")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.BoolVar(&g.logJSON, "log-json", false, "log JSON lines instead of text")
}

// load reads the config file, or the defaults when none is given, and
// applies the --nats-url override.
func (g *globals) load() (*config.Config, error) {
	var cfg *config.Config
	if g.configPath == "" {
		cfg = config.Default()
	} else {
		var err error
		if cfg, err = config.Load(g.configPath); err != nil {
			return nil, err
		}
	}
	if g.natsURL != "" {
		cfg.NATS.URL = g.natsURL
	}
	return cfg, nil
}

// loadWithEndpoints is load for services that cannot run without endpoints.
func (g *globals) loadWithEndpoints() (*config.Config, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("no endpoints configured: give a config file with --config (see README, Configuration)")
	}
	return cfg, nil
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(g.logLevel))); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if g.logJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// connect connects to NATS (with a 10 s bound) and returns JetStream on it.
func connect(ctx context.Context, cfg *config.Config, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := natsx.Connect(cctx, cfg.NATS, name, log, extra...)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// withNATS is what every operator command does around its work: load the
// config, connect to NATS as name, and run fn until it returns or SIGINT or
// SIGTERM ends its context.
func (g *globals) withNATS(ctx context.Context, name string, fn func(ctx context.Context, cfg *config.Config, js jetstream.JetStream) error) error {
	cfg, err := g.load()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	nc, js, err := connect(ctx, cfg, "switchboard-"+name, g.logger())
	if err != nil {
		return err
	}
	defer nc.Close()
	return fn(ctx, cfg, js)
}
