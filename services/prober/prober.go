package prober

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
)

// ErrInvalidOptions is wrapped by every error New and Once return for bad
// Options.
var ErrInvalidOptions = errors.New("invalid prober options")

// Options configures a Prober.
type Options struct {
	// Config is the whole loaded config; the prober reads Endpoints and Prober.
	Config *config.Config
	// NC is accepted for the shape every service shares; the prober publishes
	// through JS only.
	NC *nats.Conn
	// JS publishes the results. Required by New, unused by Once.
	JS jetstream.JetStream
	// Log receives probe results (debug), outcome changes and publish
	// errors. Nil discards.
	Log *slog.Logger
	// Registerer receives the metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// HTTPClient makes the probes; nil means upstream.NewClient sized for
	// prober.max_concurrent. Redirects are never followed either way.
	HTTPClient *http.Client
	// Rand draws the jitter and the first round's spread; nil means a
	// randomly seeded generator. Only the scheduler goroutine uses it.
	Rand *rand.Rand
}

// Prober probes endpoints on a schedule and publishes the results.
type Prober struct {
	log           *slog.Logger
	vantage       string
	pub           natsx.Publisher
	client        *http.Client
	tasks         []*task
	maxConcurrent int
	jitter        float64
	rnd           *rand.Rand
	m             *metrics
	pubErrLog     throttledLog
	// drainTimeout is a field so that tests can shrink it.
	drainTimeout time.Duration

	running atomic.Bool
	// completed counts finished probes, published the results JetStream
	// acknowledged; tests and the benchmark wait on them.
	completed atomic.Int64
	published atomic.Int64
}

// Tuning of the publishing side. Each publish waits for JetStream's ack (an
// fsync with sync_interval always, a replication round with R3), so several
// are kept in flight: 32 keep up with 2,000 results a second where NATS can.
const (
	publishers     = 32
	publishTimeout = 5 * time.Second
	drainTimeout   = 5 * time.Second
)

// New checks o and returns a Prober; it starts no goroutine. The config
// must be validated (config.Load, Parse or Validate): New checks only what
// the config cannot know, such as that there is something to probe.
func New(o Options) (*Prober, error) {
	if o.JS == nil {
		return nil, fmt.Errorf("%w: JS is required to publish results", ErrInvalidOptions)
	}
	return newProber(o)
}

func newProber(o Options) (*Prober, error) {
	if o.Config == nil {
		return nil, fmt.Errorf("%w: Config is required", ErrInvalidOptions)
	}
	cfg := o.Config
	pc := cfg.Prober
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no endpoints are configured", ErrInvalidOptions)
	}
	jitter := config.DefaultJitter
	if pc.Jitter != nil {
		jitter = *pc.Jitter
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(slog.String("vantage", pc.Vantage))
	p := &Prober{
		log:           log,
		vantage:       pc.Vantage,
		pub:           natsx.Publisher{JS: o.JS, Source: "/prober/" + pc.Vantage},
		maxConcurrent: pc.MaxConcurrent,
		jitter:        jitter,
		rnd:           o.Rand,
		m:             newMetrics(),
		drainTimeout:  drainTimeout,
	}
	if p.rnd == nil {
		p.rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	hosts := map[string]bool{}
	for i := range cfg.Endpoints {
		ep, kinds := newEndpoint(&cfg.Endpoints[i], pc.Completion)
		if len(kinds) == 0 {
			log.Warn("endpoint has no probe to run", slog.String("endpoint", ep.name),
				slog.Any("probes", cfg.Endpoints[i].Probes), slog.Bool("completion_enabled", pc.Completion.Enabled))
		}
		hosts[ep.host] = true
		for _, k := range kinds {
			p.tasks = append(p.tasks, newTask(ep, k, p.m))
		}
	}

	client := o.HTTPClient
	if client == nil {
		client = upstream.NewClient(pc.MaxConcurrent)
		if t, ok := client.Transport.(*http.Transport); ok {
			// Keep a connection to every endpoint host between rounds.
			t.MaxIdleConns = max(t.MaxIdleConns, 2*len(hosts))
		}
	}
	c := *client // a copy, so the caller's client keeps its redirect policy
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	p.client = &c

	if o.Registerer != nil {
		if err := p.m.register(o.Registerer); err != nil {
			return nil, fmt.Errorf("prober: register metrics: %w", err)
		}
	}
	return p, nil
}

// newEndpoint reads what the prober needs of a configured (validated)
// endpoint and the probe kinds to run on it, in the order health, models,
// completion.
func newEndpoint(c *config.Endpoint, comp config.Completion) (*endpoint, []events.ProbeKind) {
	base := strings.TrimRight(c.BaseURL, "/")
	host := ""
	if u, err := url.Parse(c.BaseURL); err == nil {
		host = u.Host
	}
	// The completion probe asks for the model as the endpoint serves it: a
	// completion_model that is an alias is mapped like a caller's model.
	model := c.CompletionModel
	if served, ok := c.ServedModel(model); ok {
		model = served
	}
	ep := &endpoint{
		name:            c.Name,
		host:            host,
		key:             c.APIKey,
		models:          slices.Clone(c.Models),
		healthURL:       base + c.HealthPath,
		modelsURL:       base + "/models",
		chatURL:         base + "/chat/completions",
		completionModel: model,
		interval:        c.CheckInterval,
		recheck:         c.RecheckInterval,
		timeout:         c.Timeout,
	}
	if ep.recheck <= 0 || ep.recheck > ep.interval {
		ep.recheck = ep.interval
	}
	var kinds []events.ProbeKind
	for _, k := range []events.ProbeKind{events.ProbeHealth, events.ProbeModels, events.ProbeCompletion} {
		if !slices.Contains(c.Probes, string(k)) {
			continue
		}
		if k == events.ProbeCompletion && !comp.Enabled {
			continue // it costs tokens: only with prober.completion.enabled
		}
		kinds = append(kinds, k)
	}
	ep.setChatBodies(comp.Prompt, comp.MaxTokens)
	return ep, kinds
}

// Run probes until ctx ends. It then cancels the probes in flight, waits for
// them, publishes the results not yet published (for up to 5 s) and
// returns nil. Run may be
// called once.
func (p *Prober) Run(ctx context.Context) error {
	if p.pub.JS == nil {
		return errors.New("prober: Run needs Options.JS; use Once to probe without NATS")
	}
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("prober: Run called twice")
	}
	p.log.Info("prober started", slog.Int("probes", len(p.tasks)), slog.Int("max_concurrent", p.maxConcurrent))

	// Publishers outlive ctx so that the results of the last round still go
	// out; drainCtx ends them drainTimeout after the outbox is closed.
	drainCtx, stopDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDrain()
	out := newOutbox(len(p.tasks), p.supersededResult)
	var pubs sync.WaitGroup
	for range max(1, min(publishers, len(p.tasks))) {
		pubs.Go(func() { p.publishLoop(drainCtx, out) })
	}

	// Probes: max_concurrent workers take due tasks from the scheduler,
	// which returns when ctx ends. Each probe's context is a child of ctx,
	// so the probes in flight end at once; then the workers end.
	// done has room for every task, so a worker never blocks on it, even
	// after the scheduler returned.
	work := make(chan *task)
	done := make(chan *task, len(p.tasks))
	var workers sync.WaitGroup
	for range min(p.maxConcurrent, len(p.tasks)) {
		workers.Go(func() { p.worker(ctx, work, done, out) })
	}
	p.schedule(ctx, work, done)
	close(work)
	workers.Wait()

	// Only now may the outbox close: every probe has put its result.
	out.close()
	t := time.AfterFunc(p.drainTimeout, stopDrain)
	pubs.Wait()
	t.Stop()
	p.client.CloseIdleConnections()
	p.log.Info("prober stopped", slog.Int64("probes", p.completed.Load()), slog.Int64("published", p.published.Load()))
	return nil
}

// supersededResult counts and logs (throttled) a result that a newer one
// of its pair replaced before NATS took it.
func (p *Prober) supersededResult() {
	p.m.publishErrors.WithLabelValues(reasonSuperseded).Inc()
	p.pubErrLog.log(p.log, "probe result superseded before it was published: NATS is slower than the probes")
}

// Once runs every probe the prober would run on the named endpoints (all
// of them when names is empty) once, at most prober.max_concurrent at a time,
// and returns the results in config order without publishing them. It needs
// no NATS: Options.JS may be nil.
func Once(ctx context.Context, o Options, names ...string) ([]events.ProbeResult, error) {
	p, err := newProber(o)
	if err != nil {
		return nil, err
	}
	tasks := p.tasks
	if len(names) > 0 {
		known := map[string]bool{}
		for _, t := range p.tasks {
			known[t.ep.name] = true
		}
		for _, n := range names {
			if !known[n] && o.Config.Endpoint(n) == nil {
				all := make([]string, 0, len(o.Config.Endpoints))
				for _, e := range o.Config.Endpoints {
					all = append(all, e.Name)
				}
				return nil, fmt.Errorf("probe endpoint %q: no such endpoint (configured: %s)", n, strings.Join(all, ", "))
			}
		}
		tasks = slices.DeleteFunc(slices.Clone(tasks), func(t *task) bool { return !slices.Contains(names, t.ep.name) })
	}
	results := make([]events.ProbeResult, len(tasks))
	sem := make(chan struct{}, p.maxConcurrent)
	var wg sync.WaitGroup
	for i, t := range tasks {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return nil, fmt.Errorf("probe endpoints: %w", ctx.Err())
		}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = *p.probe(ctx, t, time.Now())
		})
	}
	wg.Wait()
	p.client.CloseIdleConnections()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("probe endpoints: %w", err)
	}
	return results, nil
}
