package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
)

// DefaultShutdownGrace is how long Run lets in-flight requests finish by
// default once its context ended.
const DefaultShutdownGrace = 10 * time.Second

// Options configure a Gateway.
type Options struct {
	// Config is the whole loaded config; the gateway reads Gateway,
	// Endpoints and Worker.RequestTimeout.
	Config *config.Config
	NC     *nats.Conn
	JS     jetstream.JetStream
	Log    *slog.Logger
	// Registerer receives the gateway's metrics (nil = no metrics);
	// Gatherer is what /metrics serves (nil = 404).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Listener, when set, is served instead of listening on
	// Config.Gateway.Listen; Run closes it.
	Listener net.Listener
	// RequestTimeout bounds an interactive call (its job's deadline);
	// default Config.Gateway.RequestTimeout, else
	// Config.Worker.RequestTimeout.
	RequestTimeout time.Duration
	// ShutdownGrace bounds how long Run lets in-flight requests finish
	// after its context ended; then they are cut (interactive calls are
	// cancelled at the workers). Default DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Gateway is the HTTP gateway service.
type Gateway struct {
	cfg     *config.Config
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	gather  prometheus.Gatherer
	ln      net.Listener
	now     func() time.Time
	timeout time.Duration
	grace   time.Duration
	maxBody int64
	source  string

	models     ModelSet
	modelsJSON []byte
	keys       *keyring
	metrics    *metrics
	parser     *Parser
	enc        jobEventEncoder
	inbox      *inbox
	handler    http.Handler

	// Set by Run before it serves.
	jobs *Jobs
	view *endpointkv.View

	stopOnce sync.Once
	stopping chan struct{}  // closed when Run begins to shut down
	requests requestTracker // every request Run's server is handling
}

// New validates o and builds the gateway; it starts nothing.
func New(o Options) (*Gateway, error) {
	switch {
	case o.Config == nil:
		return nil, errors.New("gateway: Options.Config is nil")
	case o.NC == nil:
		return nil, errors.New("gateway: Options.NC is nil")
	case o.JS == nil:
		return nil, errors.New("gateway: Options.JS is nil")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = o.Config.Gateway.RequestTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = o.Config.Worker.RequestTimeout
	}
	if o.RequestTimeout <= 0 {
		return nil, errors.New("gateway: no request timeout: set Options.RequestTimeout, gateway.request_timeout or worker.request_timeout")
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = DefaultShutdownGrace
	}
	gc := o.Config.Gateway
	if gc.MaxBodyBytes <= 0 {
		return nil, fmt.Errorf("gateway: gateway.max_body_bytes is %d", gc.MaxBodyBytes)
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("gateway: register metrics: %w", err)
	}
	models := ModelsOf(o.Config.Endpoints)
	g := &Gateway{
		cfg: o.Config, nc: o.NC, js: o.JS, log: o.Log.With("component", "gateway"), gather: o.Gatherer,
		ln: o.Listener, now: o.Now, timeout: o.RequestTimeout, grace: o.ShutdownGrace, maxBody: gc.MaxBodyBytes,
		source:     "/gateway/" + gc.Instance,
		models:     models,
		modelsJSON: modelsBody(models, o.Now().Unix()),
		keys:       newKeyring(gc.APIKeys),
		metrics:    m,
		parser:     &Parser{Models: models, Now: o.Now},
		enc:        newJobEventEncoder("/gateway/" + gc.Instance),
		inbox:      newInbox(o.NC),
		stopping:   make(chan struct{}),
	}
	g.handler = g.routes()
	return g, nil
}

// Run opens the buckets, starts following endpoint state, subscribes the
// interactive reply inbox and serves HTTP until ctx ends. Then it stops
// taking connections, ends event streams and long-polls, and lets
// in-flight calls finish within the shutdown grace; calls still running
// then are cut (their request contexts end, so interactive calls are
// cancelled at the workers), which is logged and is still a clean
// shutdown. Run returns only after every handler returned, and then nil;
// an error only if it could not start or serving failed.
func (g *Gateway) Run(ctx context.Context) error {
	jobs, err := OpenJobs(ctx, g.js, g.source)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	jobs.Now = g.now
	ekv, err := endpointkv.Open(ctx, g.js)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.jobs = jobs
	g.view = endpointkv.NewView(ekv.KV, g.log, nil)

	ln := g.ln
	if ln == nil {
		if ln, err = net.Listen("tcp", g.cfg.Gateway.Listen); err != nil {
			return fmt.Errorf("gateway: listen %s: %w", g.cfg.Gateway.Listen, err)
		}
	}
	if err := g.inbox.subscribe(); err != nil {
		ln.Close()
		return fmt.Errorf("gateway: %w", err)
	}
	defer g.inbox.close() // after Shutdown: in-flight calls still get their replies

	// The endpoint view lives until Run returns.
	vctx, vcancel := context.WithCancel(context.Background())
	vdone := make(chan struct{})
	go func() {
		defer close(vdone)
		g.view.Run(vctx)
	}()
	defer func() { vcancel(); <-vdone }()

	// Every request's context derives from base: cutting the calls at the
	// end of the grace is cancelling it.
	base, cut := context.WithCancel(context.Background())
	defer cut()
	srv := &http.Server{
		Handler:           g.requests.wrap(g.handler),
		BaseContext:       func(net.Listener) context.Context { return base },
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	g.log.Info("gateway listening", "url", "http://"+ln.Addr().String(), "endpoints", len(g.cfg.Endpoints),
		"auth", g.keys.enabled())

	var runErr error
	select {
	case err := <-served:
		runErr = fmt.Errorf("gateway: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	// Shutdown, in order: end streams and long-polls, stop taking
	// connections, let calls finish within the grace, cut the rest, and
	// wait for every handler before the deferred inbox and view close
	// under them.
	g.stopOnce.Do(func() { close(g.stopping) })
	sctx, cancel := context.WithTimeout(context.Background(), g.grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		g.log.Warn("shutdown grace over; cutting in-flight requests", "grace", g.grace, "requests", g.requests.count())
		cut()
		srv.Close()
	}
	g.requests.closeAndWait()
	if runErr == nil {
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			runErr = fmt.Errorf("gateway: serve %s: %w", ln.Addr(), serr)
		}
	}
	g.log.Info("gateway stopped")
	return runErr
}

// requestTracker counts the requests being handled so that Run can wait
// for them (http.Server.Close does not); once closed it refuses new ones,
// so that a request racing the shutdown cannot start after the wait began.
type requestTracker struct {
	mu     sync.Mutex
	closed bool
	n      int
	wg     sync.WaitGroup
}

// wrap tracks every request h serves; one arriving after closeAndWait
// began is answered 503.
func (t *requestTracker) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !t.add() {
			w.Header().Set("Connection", "close")
			w.Header().Set("Retry-After", "1")
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "shutting_down",
				Message: "the gateway is shutting down; retry"})
			return
		}
		defer t.done()
		h.ServeHTTP(w, r)
	})
}

func (t *requestTracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.n++
	t.wg.Add(1)
	return true
}

func (t *requestTracker) done() {
	t.mu.Lock()
	t.n--
	t.mu.Unlock()
	t.wg.Done()
}

func (t *requestTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

func (t *requestTracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}

// ready reports whether the gateway can serve: NATS connected and the
// endpoint view loaded.
func (g *Gateway) ready() error {
	if !g.nc.IsConnected() {
		return fmt.Errorf("nats: %s", g.nc.Status())
	}
	if g.view == nil {
		return errors.New("starting")
	}
	select {
	case <-g.view.Ready():
		return nil
	default:
		return errors.New("endpoint state not loaded yet")
	}
}

// routes builds the HTTP API.
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	v1 := func(pattern, route string, h http.HandlerFunc) { mux.Handle(pattern, g.instrument(route, true, h)) }
	open := func(pattern, route string, h http.HandlerFunc) { mux.Handle(pattern, g.instrument(route, false, h)) }

	v1("POST /v1/chat/completions", routeChat, g.serveChat)
	v1("GET /v1/models", routeModels, g.serveModels)
	v1("POST /v1/jobs", routeJobSubmit, g.serveSubmit)
	v1("GET /v1/jobs/{id}", routeJobGet, g.serveJob)
	v1("DELETE /v1/jobs/{id}", routeJobCancel, g.serveCancel)
	v1("GET /v1/endpoints", routeEndpoints, g.serveEndpoints)
	v1("GET /v1/events", routeEvents, g.serveEvents)
	v1("/v1/", routeOther, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Type: typeNotFound, Code: "unknown_route",
			Message: "no route " + r.Method + " " + r.URL.Path + " (see docs/api.md)"})
	})

	open("GET /{$}", routeStatus, g.serveStatus)
	open("GET /status/events", routeEvents, g.serveStatusEvents)
	open("GET /healthz", routeHealth, func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	open("GET /readyz", routeHealth, func(w http.ResponseWriter, _ *http.Request) {
		if err := g.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if g.gather != nil {
		mh := promhttp.HandlerFor(g.gather, promhttp.HandlerOpts{})
		open("GET /metrics", routeMetrics, mh.ServeHTTP)
	}
	return mux
}

// instrument counts and times a route and, for /v1 routes when keys are
// configured, requires a valid bearer key.
func (g *Gateway) instrument(route string, v1 bool, h http.HandlerFunc) http.Handler {
	auth := v1 && g.keys.enabled()
	clients := map[string]prometheus.Counter{}
	if auth {
		for _, name := range g.keys.names {
			clients[name] = g.metrics.clients.WithLabelValues(name)
		}
	}
	duration := g.metrics.duration.WithLabelValues(route)
	requests := &routeCounter{route: route, vec: g.metrics.requests}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriter{ResponseWriter: w}
		key := ""
		if auth {
			name, e := g.keys.check(r)
			if e != nil {
				writeError(&sw, e)
				requests.inc(sw.code)
				g.log.Info("unauthorized request", "route", route, "remote", r.RemoteAddr, "reason", e.Code)
				return
			}
			key = name
			clients[name].Inc()
		}
		h(&sw, r)
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		requests.inc(code)
		duration.Observe(time.Since(start).Seconds())
		if g.log.Enabled(r.Context(), slog.LevelDebug) {
			g.log.Debug("request", "route", route, "method", r.Method, "path", r.URL.Path, "code", code,
				"key", key, "ms", float64(time.Since(start).Microseconds())/1000)
		}
	})
}

// contextUntil returns a context that also ends when stop is closed.
func contextUntil(parent context.Context, stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() { // ends with ctx, which the caller's cancel ends at the latest
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
