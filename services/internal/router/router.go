// Package router chooses the endpoint a chat call goes to (DESIGN §4): among
// the configured endpoints that serve the model (aliases included) and whose
// state admits a call now (breaker, throttle, operator override), prefer
// those this process has not just seen fail, then healthy before degraded
// before unknown before unhealthy, then apply the routing strategy.
//
// A Router reads endpoint state from a live view (a KV watch) and from Local,
// this process's own fast failure signals, which act before the evaluator's
// verdict has travelled through KV. It does no I/O and is safe for
// concurrent use.
package router

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// States is where the router reads endpoint records; endpointkv.View is one.
type States interface {
	Get(name string) (events.EndpointState, bool)
}

// Candidate is an endpoint chosen for one call.
type Candidate struct {
	Endpoint *config.Endpoint
	// Model is the upstream model name (after alias mapping).
	Model string
	// NeedsLease: the breaker is half-open and the call needs a trial lease
	// (state.AcquireLease) before it may go out.
	NeedsLease bool
	// State is the record the choice was made on (a fresh one when the
	// endpoint has none yet).
	State events.EndpointState
}

// Choice is the result of Choose.
type Choice struct {
	// OK says Candidate holds an endpoint to call.
	OK        bool
	Candidate Candidate
	// Served says some configured endpoint serves the model at all; when it
	// is false the job can never run.
	Served bool
	// Untried says some serving endpoint was not excluded; when it is false
	// every serving endpoint was already tried for this job.
	Untried bool
	// RetryAt, when !OK, is the earliest time an untried serving endpoint
	// may admit a call again (zero if none will by itself: drained,
	// force_open, or no untried endpoint).
	RetryAt time.Time
	// Reason says why nothing was chosen, e.g. `ep1: breaker open until ...`.
	Reason string
	// Others, when OK, counts the other untried endpoints that admit the
	// call now: where the job could fail over at once if this call fails.
	Others int
}

// Options configure a Router.
type Options struct {
	Config *config.Config
	States States
	// Local is the process's fast failure signal; nil makes a fresh one.
	Local *Local
	// Rand returns a number in [0, 1); nil uses math/rand/v2. Tests set it
	// to make latency_weighted choices deterministic.
	Rand func() float64
}

// Router chooses endpoints. See the package doc.
type Router struct {
	endpoints []config.Endpoint
	settings  state.Settings
	strategy  string
	states    States
	local     *Local
	rand      func() float64
}

// New makes a Router. It copies the endpoint list.
func New(o Options) (*Router, error) {
	if o.Config == nil {
		return nil, fmt.Errorf("router: Config is nil")
	}
	if o.States == nil {
		return nil, fmt.Errorf("router: States is nil")
	}
	switch o.Config.Worker.Strategy {
	case config.StrategyLatencyWeighted, config.StrategyLowestLatency, config.StrategyTier, config.StrategyCheapest:
	default:
		return nil, fmt.Errorf("router: strategy %q is not one of %s, %s, %s, %s", o.Config.Worker.Strategy,
			config.StrategyLatencyWeighted, config.StrategyLowestLatency, config.StrategyTier, config.StrategyCheapest)
	}
	r := &Router{
		endpoints: append([]config.Endpoint(nil), o.Config.Endpoints...),
		settings:  state.SettingsFrom(o.Config),
		strategy:  o.Config.Worker.Strategy,
		states:    o.States,
		local:     o.Local,
		rand:      o.Rand,
	}
	if r.local == nil {
		r.local = NewLocal(r.settings.QuotaGroups)
	}
	if r.rand == nil {
		r.rand = rand.Float64
	}
	return r, nil
}

// Local returns the router's fast failure signal.
func (r *Router) Local() *Local { return r.local }

// Settings returns the state-machine settings the router admits with.
func (r *Router) Settings() state.Settings { return r.settings }

// Serves reports whether any configured endpoint serves model.
func (r *Router) Serves(model string) bool {
	for i := range r.endpoints {
		if _, ok := r.endpoints[i].ServedModel(model); ok {
			return true
		}
	}
	return false
}

// Endpoint returns the configured endpoint called name, or nil.
func (r *Router) Endpoint(name string) *config.Endpoint {
	for i := range r.endpoints {
		if r.endpoints[i].Name == name {
			return &r.endpoints[i]
		}
	}
	return nil
}

// scored is an admitted endpoint with its ordering keys.
type scored struct {
	c       Candidate
	suspect bool
	rank    int
}

// Choose picks the endpoint for the next call of a job asking for model,
// skipping endpoints for which exclude returns true (those the job already
// tried). now is the time of the decision: a caller that records when an
// attempt started should take now before calling Choose, so that the
// attempt provably saw every state the view held at that time.
func (r *Router) Choose(model string, exclude func(name string) bool, now time.Time) Choice {
	var ch Choice
	var buf [8]scored
	cands := buf[:0]
	for i := range r.endpoints {
		ep := &r.endpoints[i]
		up, ok := ep.ServedModel(model)
		if !ok {
			continue
		}
		ch.Served = true
		if exclude != nil && exclude(ep.Name) {
			continue
		}
		ch.Untried = true
		st, ok := r.states.Get(ep.Name)
		if !ok {
			st = state.New(ep.Name, now)
		}
		adm := state.Admit(r.settings, st, now)
		if adm.OK {
			if until, throttled := r.local.throttledUntil(ep.Name, now); throttled {
				adm = state.Admission{RetryAt: until, Reason: "throttled (seen by this worker) until " + until.UTC().Format(time.RFC3339Nano)}
			}
		}
		if !adm.OK {
			if !adm.RetryAt.IsZero() && (ch.RetryAt.IsZero() || adm.RetryAt.Before(ch.RetryAt)) {
				ch.RetryAt = adm.RetryAt
			}
			if ch.Reason != "" {
				ch.Reason += "; "
			}
			ch.Reason += ep.Name + ": " + adm.Reason
			continue
		}
		cands = append(cands, scored{
			c:       Candidate{Endpoint: ep, Model: up, NeedsLease: adm.NeedsLease, State: st},
			suspect: r.local.suspect(ep.Name, now),
			rank:    state.Rank(st.Health),
		})
	}
	if len(cands) == 0 {
		switch {
		case !ch.Served:
			ch.Reason = fmt.Sprintf("no configured endpoint serves model %q", model)
		case !ch.Untried:
			ch.Reason = "every endpoint serving the model was already tried"
		}
		return ch
	}
	// Keep only the best (suspect, rank) class.
	best := cands[0]
	for _, s := range cands[1:] {
		if less(s, best) {
			best = s
		}
	}
	top := cands[:0]
	for _, s := range cands {
		if s.suspect == best.suspect && s.rank == best.rank {
			top = append(top, s)
		}
	}
	ch.OK = true
	ch.Others = len(cands) - 1
	ch.Candidate = r.pick(top)
	ch.RetryAt, ch.Reason = time.Time{}, ""
	return ch
}

func less(a, b scored) bool {
	if a.suspect != b.suspect {
		return !a.suspect
	}
	return a.rank < b.rank
}

// pick applies the strategy to endpoints of equal standing.
func (r *Router) pick(top []scored) Candidate {
	if len(top) == 1 {
		return top[0].c
	}
	switch r.strategy {
	case config.StrategyLowestLatency:
		// An endpoint without a latency sample yet (EWMA 0) loses to any
		// measured one; among unmeasured ones, the weighted draw decides.
		top = keepLowest(top, func(s scored) (float64, bool) { return s.c.State.LatencyEWMAMS, s.c.State.LatencyEWMAMS > 0 })
	case config.StrategyTier:
		top = keepLowest(top, func(s scored) (int, bool) { return s.c.Endpoint.Tier, true })
	case config.StrategyCheapest:
		top = keepLowest(top, func(s scored) (float64, bool) { return s.c.Endpoint.PricePerMTok, true })
	}
	return r.weighted(top)
}

// weighted is the seed's latency-weighted random choice: an endpoint's
// chance is proportional to weight / (EWMA latency in ms + 1).
func (r *Router) weighted(top []scored) Candidate {
	if len(top) == 1 {
		return top[0].c
	}
	var total float64
	var ws [8]float64
	w := ws[:0]
	for _, s := range top {
		x := s.c.Endpoint.Weight / (s.c.State.LatencyEWMAMS + 1)
		if x <= 0 || math.IsNaN(x) {
			x = 0
		}
		w = append(w, x)
		total += x
	}
	if total <= 0 {
		return top[int(r.rand()*float64(len(top)))%len(top)].c
	}
	x := r.rand() * total
	for i, wi := range w {
		if x < wi {
			return top[i].c
		}
		x -= wi
	}
	return top[len(top)-1].c
}

// keepLowest keeps, in place, the entries of top with the lowest key among
// those that have one (ok); when none has one, it keeps them all.
func keepLowest[K cmp.Ordered](top []scored, key func(scored) (K, bool)) []scored {
	var lowest K
	found := false
	for _, s := range top {
		if k, ok := key(s); ok && (!found || k < lowest) {
			lowest, found = k, true
		}
	}
	if !found {
		return top
	}
	n := 0
	for _, s := range top {
		if k, ok := key(s); ok && k == lowest {
			top[n] = s
			n++
		}
	}
	return top[:n]
}
