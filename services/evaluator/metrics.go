package evaluator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// Event results, the result label of switchboard_evaluator_events_total.
const (
	ResultApplied    = "applied"     // this replica applied the event (as delivered, or catching up)
	ResultDuplicate  = "duplicate"   // the event was already applied: acknowledged only
	ResultDeadLetter = "dead_letter" // undecodable or invalid: dead-lettered
	ResultIgnored    = "ignored"     // for an endpoint not in the config
	ResultError      = "error"       // NATS trouble: negatively acknowledged, redelivered later
)

type metrics struct {
	health          *prometheus.GaugeVec
	breaker         *prometheus.GaugeVec
	transitions     *prometheus.CounterVec
	events          *prometheus.CounterVec
	lag             prometheus.Histogram
	conflicts       prometheus.Counter
	republished     prometheus.Counter
	publishFailures prometheus.Counter
	// consumerRestarts counts health consumers lost and created again.
	consumerRestarts prometheus.Counter
	// staleSeqs counts records found ahead of SWITCHBOARD_HEALTH.
	staleSeqs prometheus.Counter
}

// newMetrics makes the evaluator's metrics and registers them on reg (none
// when reg is nil).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		health: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchboard_endpoint_health",
			Help: "Endpoint health: 1 for the endpoint's current state, 0 for the others.",
		}, []string{"endpoint", "state"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchboard_endpoint_breaker",
			Help: "Endpoint circuit breaker: 1 for the breaker's current state, 0 for the others.",
		}, []string{"endpoint", "state"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_endpoint_transitions_total",
			Help: "Status changes written by this evaluator, by kind (health, breaker, throttle, override).",
		}, []string{"endpoint", "kind", "from", "to"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_evaluator_events_total",
			Help: "Probe results and request outcomes handled by this evaluator, by type and result.",
		}, []string{"type", "result"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchboard_evaluator_lag_seconds",
			Help:    "Time from an event's publication (its CloudEvent time) to the KV write that applied it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_evaluator_cas_conflicts_total",
			Help: "Endpoint record writes that lost the compare-and-set race and were retried.",
		}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_evaluator_republished_total",
			Help: "Status changes published by a later pass because their writer could not (or died first).",
		}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_evaluator_publish_failures_total",
			Help: "Status-change publishes that failed; the change stays pending in the record.",
		}),
		consumerRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_evaluator_consumer_restarts_total",
			Help: "Times this evaluator found the health consumer gone (deleted, lost in a server restart) and created it again.",
		}),
		staleSeqs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_evaluator_stale_applied_seq_total",
			Help: "Records whose applied_seq was beyond SWITCHBOARD_HEALTH's last sequence (the stream was recreated or lost writes) and was moved back.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.health, m.breaker, m.transitions, m.events, m.lag, m.conflicts, m.republished, m.publishFailures,
			m.consumerRestarts, m.staleSeqs} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

var (
	healthStates  = []events.Health{events.HealthUnknown, events.HealthHealthy, events.HealthDegraded, events.HealthUnhealthy}
	breakerStates = []events.Breaker{events.BreakerClosed, events.BreakerOpen, events.BreakerHalfOpen}
)

// observe sets the state gauges from a record.
func (m *metrics) observe(st events.EndpointState) {
	for _, h := range healthStates {
		m.health.WithLabelValues(st.Endpoint, string(h)).Set(b2f(st.Health == h))
	}
	for _, b := range breakerStates {
		m.breaker.WithLabelValues(st.Endpoint, string(b)).Set(b2f(st.Breaker == b))
	}
}

// transition counts the transitions of one change.
func (m *metrics) transition(ep string, ch state.Change) {
	if t := ch.Health; t != nil {
		m.transitions.WithLabelValues(ep, "health", t.From, t.To).Inc()
	}
	if t := ch.Breaker; t != nil {
		m.transitions.WithLabelValues(ep, "breaker", t.From, t.To).Inc()
	}
	if t := ch.Override; t != nil {
		m.transitions.WithLabelValues(ep, "override", t.From, t.To).Inc()
	}
	if t := ch.Throttle; t != nil {
		m.transitions.WithLabelValues(ep, "throttle", throttleWord(t.From != nil), throttleWord(t.To != nil)).Inc()
	}
}

func throttleWord(on bool) string {
	if on {
		return "throttled"
	}
	return "none"
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
