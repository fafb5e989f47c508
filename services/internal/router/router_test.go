package router_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/router"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

type states map[string]events.EndpointState

func (s states) Get(name string) (events.EndpointState, bool) { st, ok := s[name]; return st, ok }

func ep(name string, tier int, price float64, models ...string) config.Endpoint {
	return config.Endpoint{Name: name, BaseURL: "http://" + name, Models: models, Weight: 1, Tier: tier, PricePerMTok: price}
}

func st(name string, h events.Health, ewma float64) events.EndpointState {
	s := state.New(name, t0)
	s.Health = h
	s.LatencyEWMAMS = ewma
	return s
}

func open(s events.EndpointState, until time.Time) events.EndpointState {
	s.Breaker = events.BreakerOpen
	opened := until.Add(-time.Minute)
	s.OpenedAt, s.OpenUntil = &opened, &until
	s.OpenCount = 1
	return s
}

func newRouter(t *testing.T, strategy string, eps []config.Endpoint, sts states, rnd float64) *router.Router {
	t.Helper()
	cfg := config.Default()
	cfg.Endpoints = eps
	cfg.Worker.Strategy = strategy
	r, err := router.New(router.Options{Config: cfg, States: sts, Rand: func() float64 { return rnd }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestChoose(t *testing.T) {
	three := []config.Endpoint{ep("a", 2, 5, "m"), ep("b", 1, 1, "m"), ep("c", 1, 3, "m")}
	tests := []struct {
		name     string
		strategy string
		eps      []config.Endpoint
		states   states
		rnd      float64
		exclude  []string
		want     string // "" = nothing chosen
	}{
		{name: "tier picks the primary", strategy: config.StrategyTier, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 10), "b": st("b", events.HealthHealthy, 500), "c": st("c", events.HealthHealthy, 400)},
			rnd:    0.99, want: "c"}, // b and c are tier 1; 0.99 of the inverse-latency weights falls on c
		{name: "cheapest", strategy: config.StrategyCheapest, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 1), "b": st("b", events.HealthHealthy, 900), "c": st("c", events.HealthHealthy, 1)},
			want:   "b"},
		{name: "lowest latency", strategy: config.StrategyLowestLatency, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 40), "b": st("b", events.HealthHealthy, 90), "c": st("c", events.HealthHealthy, 41)},
			rnd:    0.99, want: "a"},
		{name: "lowest latency ignores unmeasured", strategy: config.StrategyLowestLatency, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 0), "b": st("b", events.HealthHealthy, 90), "c": st("c", events.HealthHealthy, 0)},
			want:   "b"},
		{name: "latency weighted low draw", strategy: config.StrategyLatencyWeighted, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 99), "b": st("b", events.HealthHealthy, 99), "c": st("c", events.HealthHealthy, 99)},
			rnd:    0.1, want: "a"},
		{name: "latency weighted high draw", strategy: config.StrategyLatencyWeighted, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 99), "b": st("b", events.HealthHealthy, 99), "c": st("c", events.HealthHealthy, 99)},
			rnd:    0.9, want: "c"},
		{name: "healthy before degraded before unknown", strategy: config.StrategyCheapest, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 10), "b": st("b", events.HealthDegraded, 10), "c": st("c", events.HealthUnknown, 10)},
			want:   "a"},
		{name: "degraded before unhealthy", strategy: config.StrategyTier, eps: three,
			states: states{"a": st("a", events.HealthDegraded, 10), "b": st("b", events.HealthUnhealthy, 10), "c": st("c", events.HealthUnhealthy, 10)},
			want:   "a"},
		{name: "no record counts as unknown and closed", strategy: config.StrategyTier, eps: three,
			states: states{"a": st("a", events.HealthUnknown, 10)}, rnd: 0, want: "b"},
		{name: "open breaker refuses", strategy: config.StrategyTier, eps: three,
			states: states{"a": st("a", events.HealthHealthy, 10), "b": open(st("b", events.HealthHealthy, 10), t0.Add(time.Minute)),
				"c": open(st("c", events.HealthHealthy, 10), t0.Add(time.Minute))},
			want: "a"},
		{name: "excluded endpoints are skipped", strategy: config.StrategyCheapest, eps: three,
			states:  states{"a": st("a", events.HealthHealthy, 10), "b": st("b", events.HealthHealthy, 10), "c": st("c", events.HealthHealthy, 10)},
			exclude: []string{"b"}, want: "c"},
		{name: "model not served", strategy: config.StrategyTier,
			eps: []config.Endpoint{ep("a", 1, 0, "other")}, states: states{}, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter(t, tc.strategy, tc.eps, tc.states, tc.rnd)
			ex := func(n string) bool {
				for _, e := range tc.exclude {
					if e == n {
						return true
					}
				}
				return false
			}
			ch := r.Choose("m", ex, t0)
			got := ""
			if ch.OK {
				got = ch.Candidate.Endpoint.Name
			}
			if got != tc.want {
				t.Errorf("chose %q, want %q (reason %q)", got, tc.want, ch.Reason)
			}
		})
	}
}

func TestChooseAliasAndWaits(t *testing.T) {
	a := ep("a", 1, 0, "gpt-up")
	a.Aliases = map[string]string{"gpt": "gpt-up"}
	b := ep("b", 1, 0, "gpt")
	sts := states{"a": st("a", events.HealthHealthy, 10), "b": open(st("b", events.HealthHealthy, 10), t0.Add(30*time.Second))}
	r := newRouter(t, config.StrategyTier, []config.Endpoint{a, b}, sts, 0)

	ch := r.Choose("gpt", nil, t0)
	if !ch.OK || ch.Candidate.Endpoint.Name != "a" || ch.Candidate.Model != "gpt-up" {
		t.Fatalf("choice = %+v, want a serving gpt as gpt-up", ch)
	}
	// a throttled locally (a 429 just seen), b open: nothing now, the
	// earliest reopen is a's throttle end.
	r.Local().Throttled("a", t0.Add(2*time.Second))
	ch = r.Choose("gpt", nil, t0)
	if ch.OK || !ch.Served || !ch.Untried {
		t.Fatalf("choice = %+v, want none, served, untried", ch)
	}
	if diff := cmp.Diff(t0.Add(2*time.Second), ch.RetryAt); diff != "" {
		t.Errorf("RetryAt (-want +got):\n%s", diff)
	}
	ch = r.Choose("gpt", func(string) bool { return true }, t0)
	if ch.OK || ch.Untried || !ch.Served {
		t.Errorf("with everything excluded: %+v, want served but not untried", ch)
	}
	if ch := r.Choose("nope", nil, t0); ch.OK || ch.Served {
		t.Errorf("unknown model: %+v, want not served", ch)
	}
}

func TestLocalSuspectIsDeprioritisedNotExcluded(t *testing.T) {
	eps := []config.Endpoint{ep("a", 1, 0, "m"), ep("b", 2, 0, "m")}
	sts := states{"a": st("a", events.HealthHealthy, 10), "b": st("b", events.HealthUnknown, 10)}
	r := newRouter(t, config.StrategyTier, eps, sts, 0)
	r.Local().Failed("a", t0)
	if ch := r.Choose("m", nil, t0.Add(time.Second)); ch.Candidate.Endpoint.Name != "b" {
		t.Errorf("after a failed here, chose %s, want b (a is suspect)", ch.Candidate.Endpoint.Name)
	}
	if ch := r.Choose("m", func(n string) bool { return n == "b" }, t0.Add(time.Second)); !ch.OK || ch.Candidate.Endpoint.Name != "a" {
		t.Errorf("with b excluded, chose %+v, want a (suspect, but the only one)", ch)
	}
	if ch := r.Choose("m", nil, t0.Add(router.DefaultSuspectFor+time.Second)); ch.Candidate.Endpoint.Name != "a" {
		t.Errorf("after the suspicion ended, chose %s, want a", ch.Candidate.Endpoint.Name)
	}
	r.Local().Failed("a", t0)
	r.Local().Succeeded("a")
	if ch := r.Choose("m", nil, t0.Add(time.Second)); ch.Candidate.Endpoint.Name != "a" {
		t.Errorf("after a success, chose %s, want a", ch.Candidate.Endpoint.Name)
	}
}

func TestLocalThrottleCoversQuotaGroup(t *testing.T) {
	a, b, c := ep("a", 1, 0, "m"), ep("b", 1, 0, "m"), ep("c", 2, 0, "m")
	a.QuotaGroup, b.QuotaGroup = "g", "g"
	sts := states{"a": st("a", events.HealthHealthy, 1), "b": st("b", events.HealthHealthy, 1), "c": st("c", events.HealthHealthy, 1)}
	r := newRouter(t, config.StrategyTier, []config.Endpoint{a, b, c}, sts, 0)
	r.Local().Throttled("a", t0.Add(time.Second))
	if ch := r.Choose("m", nil, t0); !ch.OK || ch.Candidate.Endpoint.Name != "c" {
		t.Errorf("chose %+v, want c (a and b share the throttled quota group)", ch)
	}
}

func TestHalfOpenNeedsLease(t *testing.T) {
	s := open(st("a", events.HealthHealthy, 1), t0)
	s.Breaker = events.BreakerHalfOpen
	s.OpenUntil = nil
	s.HalfOpen = &events.HalfOpen{Period: 1, Since: t0}
	r := newRouter(t, config.StrategyTier, []config.Endpoint{ep("a", 1, 0, "m")}, states{"a": s}, 0)
	ch := r.Choose("m", nil, t0)
	if !ch.OK || !ch.Candidate.NeedsLease {
		t.Errorf("half-open: %+v, want a candidate that needs a lease", ch)
	}
}

func TestWeightedFollowsInverseLatency(t *testing.T) {
	// Weights 1/(9+1) = 0.1 and 1/(39+1) = 0.025: a gets 80% of the draws.
	eps := []config.Endpoint{ep("a", 1, 0, "m"), ep("b", 1, 0, "m")}
	sts := states{"a": st("a", events.HealthHealthy, 9), "b": st("b", events.HealthHealthy, 39)}
	for _, tc := range []struct {
		rnd  float64
		want string
	}{{0, "a"}, {0.79, "a"}, {0.81, "b"}, {0.999, "b"}} {
		r := newRouter(t, config.StrategyLatencyWeighted, eps, sts, tc.rnd)
		if got := r.Choose("m", nil, t0).Candidate.Endpoint.Name; got != tc.want {
			t.Errorf("draw %v: chose %s, want %s", tc.rnd, got, tc.want)
		}
	}
}

func TestChooseCountsOthers(t *testing.T) {
	three := []config.Endpoint{ep("a", 1, 0, "m"), ep("b", 2, 0, "m"), ep("c", 3, 0, "m")}
	healthy := states{"a": st("a", events.HealthHealthy, 1), "b": st("b", events.HealthHealthy, 1), "c": st("c", events.HealthHealthy, 1)}
	tests := []struct {
		name    string
		states  states
		exclude string
		want    int
	}{
		{name: "all admit", states: healthy, want: 2},
		{name: "tried ones do not count", states: healthy, exclude: "b", want: 1},
		{name: "refusing ones do not count", states: states{"a": st("a", events.HealthHealthy, 1),
			"b": open(st("b", events.HealthHealthy, 1), t0.Add(time.Minute)), "c": open(st("c", events.HealthHealthy, 1), t0.Add(time.Minute))}, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRouter(t, config.StrategyTier, three, tc.states, 0)
			ch := r.Choose("m", func(n string) bool { return n == tc.exclude }, t0)
			if !ch.OK || ch.Others != tc.want {
				t.Errorf("choice %+v: %d others, want %d", ch, ch.Others, tc.want)
			}
		})
	}
}
