package prober

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
)

// Reasons in switchboard_probe_publish_errors_total.
const (
	reasonSuperseded = "superseded" // a newer result of its pair replaced it before NATS took it
	reasonPublish    = "publish"    // JetStream did not acknowledge in time, or refused
)

func outcomeIndex(o events.ProbeOutcome) int {
	switch o {
	case events.ProbeFail:
		return 1
	case events.ProbeInconclusive:
		return 2
	}
	return 0
}

// classLabel is the class label of a result: "none" for a pass.
func classLabel(c events.ErrorClass) string {
	if c == events.ClassNone {
		return "none"
	}
	return string(c)
}

// metrics are the prober's Prometheus metrics. They work unregistered,
// which is what Options.Registerer nil gives.
type metrics struct {
	probes        *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	ttft          *prometheus.HistogramVec
	publishErrors *prometheus.CounterVec
	published     prometheus.Counter
	inflight      prometheus.Gauge
	startDelay    prometheus.Histogram
}

// latencyBuckets span a fast health check to a slow completion.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newMetrics() *metrics {
	m := &metrics{
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_probes_total",
			Help: "Probes finished, by endpoint, kind, outcome and error class (none for a pass).",
		}, []string{"endpoint", "kind", "outcome", "class"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_probe_latency_seconds",
			Help:    "Probe latency, from sending the request to the end of the answer.",
			Buckets: latencyBuckets,
		}, []string{"endpoint", "kind", "outcome"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_probe_ttft_seconds",
			Help:    "Time to the first streamed event of completion probes.",
			Buckets: latencyBuckets,
		}, []string{"endpoint"}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_probe_publish_errors_total",
			Help: "Probe results not published: superseded (a newer result of the pair replaced it while NATS was slow) or publish (JetStream did not ack).",
		}, []string{"reason"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_probe_results_published_total",
			Help: "Probe results JetStream acknowledged.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_probes_inflight",
			Help: "Probes in flight (at most prober.max_concurrent).",
		}),
		startDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_probe_start_delay_seconds",
			Help:    "How late probes started after they were due; growth means max_concurrent is too small.",
			Buckets: []float64{.001, .01, .1, .5, 1, 5, 30},
		}),
	}
	for _, r := range []string{reasonSuperseded, reasonPublish} {
		m.publishErrors.WithLabelValues(r) // export zeros
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.probes, m.latency, m.ttft, m.publishErrors, m.published, m.inflight, m.startDelay} {
		errs = append(errs, r.Register(c))
	}
	return errors.Join(errs...)
}
