package mock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is one mock endpoint. Its methods are safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	handler http.Handler
	start   time.Time
	seed    uint64

	nameHeader  []string // X-Mock-Endpoint value, shared by every response
	apiKey      string
	models      map[string]string // each model to itself: lookups by []byte return the string
	modelsBody  []byte
	replyPrefix string // "mock <name>: "
	outageBody  []byte

	// faults is read lock-free by every request; mu serialises the writers
	// so that read-modify-write updates (PATCH, down, up) do not race.
	faults atomic.Pointer[faultState]
	mu     sync.Mutex

	seq atomic.Uint64 // numbers the requests that draw random faults
	ids atomic.Uint64 // completion ids

	// closed ends when Close is called; waits select on its Done channel.
	closed      context.Context
	closeCancel context.CancelFunc

	stats counters
}

// New validates cfg, applies defaults and returns a server. Outage schedules
// are measured from the time New is called (by cfg.Now).
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		start:       cfg.Now(),
		seed:        uint64(cfg.Seed),
		nameHeader:  []string{cfg.Name},
		apiKey:      cfg.APIKey,
		models:      make(map[string]string, len(cfg.Models)),
		replyPrefix: "mock " + cfg.Name + ": ",
	}
	s.closed, s.closeCancel = context.WithCancel(context.Background())
	s.handler = http.HandlerFunc(s.serveHTTP)

	b := []byte(`{"object":"list","data":[`)
	for i, m := range cfg.Models {
		s.models[m] = m
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendString(b, m)
		b = append(b, `,"object":"model","created":`...)
		b = appendInt(b, s.start.Unix())
		b = append(b, `,"owned_by":"mock"}`...)
	}
	s.modelsBody = append(b, "]}\n"...)
	s.outageBody = appendError(nil, fmt.Sprintf("The mock endpoint %q is down (injected outage).", cfg.Name),
		"server_error", "", "service_unavailable")

	s.faults.Store(newFaultState(cfg.Faults, cfg.Name))
	return s, nil
}

// Handler returns the OpenAI-compatible API, routed by path suffix so that
// any prefix works, plus the admin API under /_mock/.
//
// Faults that cut a connection (truncation, hangs released by Close) panic
// with http.ErrAbortHandler, which net/http turns into an aborted
// connection: serve the handler with net/http and do not wrap it in
// middleware that recovers panics. Call Close before shutting down an
// http.Server that serves it: hung requests end only then.
func (s *Server) Handler() http.Handler { return s.handler }

// SetFaults replaces the faults at once for all following requests.
// It panics if f is invalid, which is a programming error: check
// untrusted input with [Faults.Validate] first, as the admin API does.
func (s *Server) SetFaults(f Faults) {
	if err := f.Validate(); err != nil {
		panic(fmt.Sprintf("mock: SetFaults: %v", err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.Store(newFaultState(f, s.cfg.Name))
}

// Faults returns a copy of the current faults.
func (s *Server) Faults() Faults { return s.faults.Load().spec.clone() }

// updateFaults applies change to a copy of the current faults and stores
// the result if it is valid.
func (s *Server) updateFaults(change func(*Faults) error) (Faults, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults.Load().spec.clone()
	if err := change(&f); err != nil {
		return Faults{}, err
	}
	if err := f.Validate(); err != nil {
		return Faults{}, err
	}
	s.faults.Store(newFaultState(f, s.cfg.Name))
	return f.clone(), nil
}

// Stats returns a snapshot of the request counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// Close releases every waiting request: hung requests are aborted, latency
// and stream delays end early. Requests that arrive afterwards are still
// served, without waits. Close is idempotent.
func (s *Server) Close() { s.closeCancel() }

// shutdownTimeout bounds how long Run waits for in-flight requests.
const shutdownTimeout = 5 * time.Second

// Run serves on ln until ctx is done, then closes s (releasing hung
// requests) and shuts the HTTP server down, waiting up to 5 s for in-flight
// requests. It returns nil after a clean shutdown. ln is closed on return.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	select {
	case err := <-served:
		s.Close()
		return fmt.Errorf("mock %q: serve %s: %w", s.cfg.Name, ln.Addr(), err)
	case <-ctx.Done():
	}

	// Hung requests never end on their own, and Shutdown waits for them.
	s.Close()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("mock %q: shut down: %w", s.cfg.Name, err)
	}
	return nil
}

// classify maps a path to its route and the method it accepts.
func classify(path string) (route, string) {
	if path == "/_mock" || strings.HasPrefix(path, "/_mock/") {
		return routeAdmin, ""
	}
	if len(path) > 1 {
		path = strings.TrimSuffix(path, "/")
	}
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return routeChat, http.MethodPost
	case strings.HasSuffix(path, "/models"):
		return routeModels, http.MethodGet
	case strings.HasSuffix(path, "/health"):
		return routeHealth, http.MethodGet
	}
	return routeUnknown, ""
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header()["X-Mock-Endpoint"] = s.nameHeader
	rt, method := classify(r.URL.Path)
	s.stats.routes[rt].Add(1)

	switch {
	case rt == routeAdmin:
		s.serveAdmin(w, r)
		return
	case rt == routeUnknown:
		s.writeError(w, http.StatusNotFound, "Unknown request URL: "+r.Method+" "+r.URL.Path+".",
			"invalid_request_error", "", "unknown_url")
		return
	case r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead):
		w.Header().Set("Allow", method)
		s.writeError(w, http.StatusMethodNotAllowed, "Method "+r.Method+" is not allowed on "+r.URL.Path+".",
			"invalid_request_error", "", "method_not_allowed")
		return
	}

	st := s.faults.Load()
	if st.anyOutage && st.inOutage(s.cfg.Now().Sub(s.start)) {
		s.outage(w, r, st)
		return
	}
	var n uint64
	if st.anyDraw {
		n = s.seq.Add(1)
	}
	if rt == routeHealth {
		if st.healthErrors && st.errorRate > 0 && s.draw(n, drawError) < st.errorRate {
			s.stats.faults[faultError].Add(1)
			s.writeJSON(w, st.errorStatus, st.errorBody)
			return
		}
		s.writeJSON(w, http.StatusOK, healthBody)
		return
	}
	if !s.authorized(w, r) {
		return
	}
	if rt == routeModels {
		if st.anyRequestFault && s.injectFaults(w, r, st, n) {
			return
		}
		s.writeBody(w, st, n, s.modelsBody)
		return
	}

	// Read the body before any wait: net/http notices a client hanging up
	// only once the body has been read.
	buf := getBuf()
	defer putBuf(buf)
	body, err := readBody(*buf, r.Body, maxRequestBody)
	*buf = body[:0] // keep the grown buffer
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			s.writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("The request body is larger than %d bytes.", maxRequestBody),
				"invalid_request_error", "", "request_too_large")
		}
		return // otherwise the client is gone
	}
	if st.anyRequestFault && s.injectFaults(w, r, st, n) {
		return
	}
	s.serveChat(w, r, st, n, buf, body)
}

// authorized checks the bearer key and answers 401 when it is wrong.
// The comparison takes the same time wherever the keys differ.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	if s.apiKey == "" {
		return true
	}
	got := r.Header.Get("Authorization")
	if got == "" {
		s.writeError(w, http.StatusUnauthorized,
			"You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
			"invalid_request_error", "", "invalid_api_key")
		return false
	}
	const scheme = "Bearer "
	ok := len(got) == len(scheme)+len(s.apiKey) && strings.EqualFold(got[:len(scheme)], scheme)
	if ok {
		var diff byte
		key := got[len(scheme):]
		for i := 0; i < len(key); i++ {
			diff |= key[i] ^ s.apiKey[i]
		}
		ok = diff == 0
	}
	if !ok {
		s.writeError(w, http.StatusUnauthorized, "Incorrect API key provided.",
			"invalid_request_error", "", "invalid_api_key")
	}
	return ok
}

// Shared header values, assigned directly to skip Header.Set's allocation.
// They must never be modified.
var (
	jsonContentType = []string{"application/json"}
	sseContentType  = []string{"text/event-stream"}
	noCache         = []string{"no-cache"}
	healthBody      = []byte(`{"status":"ok"}` + "\n")
)

func (s *Server) writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header()["Content-Type"] = jsonContentType
	s.stats.status(status)
	w.WriteHeader(status)
	w.Write(body) //nolint:errcheck // the client may be gone; nothing to do
}

func (s *Server) writeError(w http.ResponseWriter, status int, message, typ, param, code string) {
	buf := getBuf()
	*buf = appendError(*buf, message, typ, param, code)
	s.writeJSON(w, status, *buf)
	putBuf(buf)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 1<<20 {
		return // let large one-offs go
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}
