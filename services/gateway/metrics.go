package gateway

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Route labels of the request metrics.
const (
	routeChat      = "chat_completions"
	routeModels    = "models"
	routeJobSubmit = "jobs_submit"
	routeJobGet    = "jobs_get"
	routeJobCancel = "jobs_cancel"
	routeEndpoints = "endpoints"
	routeEvents    = "events"
	routeStatus    = "status_page"
	routeHealth    = "health"
	routeMetrics   = "metrics"
	routeOther     = "other"
)

type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	clients     *prometheus.CounterVec
	submitted   *prometheus.CounterVec
	interactive *prometheus.HistogramVec
	lane        *prometheus.CounterVec
	refused     prometheus.Counter

	// Resolved children of the hot path, so that counting a call does not
	// hash label values.
	firstReply [2]prometheus.Observer // by stream false, true
	results    map[string]prometheus.Counter
}

// Results of an interactive call (the result label).
var laneResults = []string{"ok", "error", "no_workers", "timeout", "client_gone", "stream_broken", "bad_reply"}

// result counts an interactive call's result.
func (m *metrics) result(r string) { m.results[r].Inc() }

// routeCounter counts one route's requests by code; the child of each code
// is resolved once.
type routeCounter struct {
	route string
	vec   *prometheus.CounterVec
	codes [600]atomic.Pointer[prometheus.Counter]
}

func (rc *routeCounter) inc(code int) {
	if code < 0 || code >= len(rc.codes) {
		rc.vec.WithLabelValues(rc.route, codeLabel(code)).Inc()
		return
	}
	c := rc.codes[code].Load()
	if c == nil {
		cc := rc.vec.WithLabelValues(rc.route, codes[code])
		c = &cc
		rc.codes[code].Store(c)
	}
	(*c).Inc()
}

// codes holds the label value of every HTTP status, so that counting one
// does not format it.
var codes = func() [600]string {
	var c [600]string
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeLabel(code int) string {
	if code >= 0 && code < len(codes) {
		return codes[code]
	}
	return strconv.Itoa(code)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_gateway_requests_total",
			Help: "HTTP requests the gateway answered, by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_gateway_request_duration_seconds",
			Help:    "Time from request to the end of the response, by route (streams and long-polls included).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"route"}),
		clients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_gateway_client_requests_total",
			Help: "Authenticated /v1 requests by API key name (the key itself never appears).",
		}, []string{"key"}),
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_jobs_submitted_total",
			Help: "Durable jobs accepted (acknowledged by JetStream) through the gateway, by priority; resubmissions of an existing job are not counted.",
		}, []string{"priority"}),
		interactive: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_gateway_interactive_first_reply_seconds",
			Help:    "Interactive lane: time from publishing the request to the workers to their first reply (the whole answer, or a stream's start).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"stream"}),
		lane: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_gateway_interactive_total",
			Help: "Interactive lane calls by result: ok, error (a worker's error reply), no_workers, timeout, client_gone, stream_broken, bad_reply.",
		}, []string{"result"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_gateway_interactive_refused_total",
			Help: "Interactive calls a worker refused without starting them (busy or stopping) and the gateway sent again.",
		}),
	}
	m.firstReply[0] = m.interactive.WithLabelValues("false")
	m.firstReply[1] = m.interactive.WithLabelValues("true")
	m.results = map[string]prometheus.Counter{}
	for _, r := range laneResults {
		m.results[r] = m.lane.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.clients, m.submitted, m.interactive, m.lane, m.refused} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// statusWriter records the status of a response. It keeps Flush,
// FlushError and Unwrap so streams and http.ResponseController work
// through it (a flush error, e.g. the client gone, reaches the caller).
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// FlushError flushes the wrapped writer and returns its error;
// http.ResponseController.Flush uses it in preference to Flush.
func (w *statusWriter) FlushError() error {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
