package worker

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the workers (all prefixed switchboard_).
type metrics struct {
	jobs            *prometheus.CounterVec   // jobs ended, by status and lane
	attempts        *prometheus.CounterVec   // upstream calls, by endpoint and outcome
	failovers       prometheus.Counter       // a failed call followed by another on the next candidate
	waits           prometheus.Counter       // durable jobs NAKed to wait for an endpoint
	expired         prometheus.Counter       // durable deliveries whose AckWait ran out before they started
	busy            prometheus.Counter       // interactive calls refused: the worker ran its limit
	inflight        *prometheus.GaugeVec     // jobs running now, by lane
	queueDepth      *prometheus.GaugeVec     // consumer NumPending, by priority (sampled)
	duration        *prometheus.HistogramVec // submit -> terminal, by lane
	upstreamLatency *prometheus.HistogramVec // one upstream call, by endpoint
	outcomeErrors   prometheus.Counter       // request-outcome events that could not be published
	callbacks       *prometheus.CounterVec   // callbacks, by result
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	buckets := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_jobs_total", Help: "Jobs that ended, by terminal status (or dead_letter) and lane.",
		}, []string{"status", "lane"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_job_attempts_total", Help: "Upstream calls made for jobs, by endpoint and outcome (success or the error class).",
		}, []string{"endpoint", "outcome"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_failovers_total", Help: "Failed upstream calls after which the job went on to another endpoint.",
		}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_job_waits_total", Help: "Durable jobs put back (NAK with delay) until an endpoint admits them.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_job_deliveries_expired_total", Help: "Durable job deliveries not started because their AckWait ran out first (JetStream redelivers them).",
		}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_interactive_refused_total", Help: "Interactive calls answered 503 workers_busy because this worker ran its limit of 8 x concurrency calls.",
		}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchboard_jobs_inflight", Help: "Jobs this worker is running now, by lane.",
		}, []string{"lane"}),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchboard_job_queue_depth", Help: "Durable jobs waiting in the queue (consumer NumPending, sampled every 5s), by priority.",
		}, []string{"priority"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchboard_job_duration_seconds", Help: "Time from submission to the terminal state, by lane.", Buckets: buckets,
		}, []string{"lane"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchboard_upstream_latency_seconds", Help: "Duration of one upstream chat call, by endpoint.", Buckets: buckets,
		}, []string{"endpoint"}),
		outcomeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_outcome_publish_errors_total", Help: "Request-outcome events that could not be published.",
		}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_job_callbacks_total", Help: "Job callback POSTs, by result: delivered, retried (a failed try with tries left), failed (given up on).",
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	r := func(c prometheus.Collector) prometheus.Collector {
		if err != nil {
			return c
		}
		var ex prometheus.Collector
		ex, err = register(reg, c)
		return ex
	}
	m.jobs = r(m.jobs).(*prometheus.CounterVec)
	m.attempts = r(m.attempts).(*prometheus.CounterVec)
	m.failovers = r(m.failovers).(prometheus.Counter)
	m.waits = r(m.waits).(prometheus.Counter)
	m.expired = r(m.expired).(prometheus.Counter)
	m.busy = r(m.busy).(prometheus.Counter)
	m.inflight = r(m.inflight).(*prometheus.GaugeVec)
	m.queueDepth = r(m.queueDepth).(*prometheus.GaugeVec)
	m.duration = r(m.duration).(*prometheus.HistogramVec)
	m.upstreamLatency = r(m.upstreamLatency).(*prometheus.HistogramVec)
	m.outcomeErrors = r(m.outcomeErrors).(prometheus.Counter)
	m.callbacks = r(m.callbacks).(*prometheus.CounterVec)
	for _, res := range []string{"delivered", "retried", "failed"} {
		m.callbacks.WithLabelValues(res) // every result is exported, from 0
	}
	if err != nil {
		return nil, fmt.Errorf("worker: register metrics: %w", err)
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name (several workers in one process, as in dev mode, share them).
func register(reg prometheus.Registerer, c prometheus.Collector) (prometheus.Collector, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector, nil
		}
		return c, err
	}
	return c, nil
}
