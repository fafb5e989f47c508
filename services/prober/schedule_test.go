package prober

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
	"github.com/switchboard-llm/switchboard/services/mock"
)

func TestJitterAndFirstDelayBounds(t *testing.T) {
	tests := []struct {
		jitter   float64
		interval time.Duration
		wantMax  time.Duration // of the first delay
	}{
		{0, time.Second, time.Second},
		{0.1, 30 * time.Second, maxFirstSpread},
		{0.5, 200 * time.Millisecond, 200 * time.Millisecond},
		{0.9, time.Minute, maxFirstSpread},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("jitter %v interval %s", tt.jitter, tt.interval), func(t *testing.T) {
			p := &Prober{jitter: tt.jitter, rnd: seeded()}
			lo := time.Duration((1 - tt.jitter) * float64(tt.interval))
			hi := time.Duration((1 + tt.jitter) * float64(tt.interval))
			gotMin, gotMax := time.Duration(1<<62), time.Duration(0)
			for range 10000 {
				d := p.jittered(tt.interval)
				gotMin, gotMax = min(gotMin, d), max(gotMax, d)
				if f := p.firstDelay(tt.interval); f < 0 || f >= tt.wantMax {
					t.Fatalf("first delay %s, want in [0, %s)", f, tt.wantMax)
				}
			}
			if gotMin < lo || gotMax > hi {
				t.Errorf("jittered intervals in [%s, %s], want within [%s, %s]", gotMin, gotMax, lo, hi)
			}
			// The draws cover the range: within 1% of each end.
			slack := time.Duration(0.02*tt.jitter*float64(tt.interval)) + 1
			if gotMin > lo+slack || gotMax < hi-slack {
				t.Errorf("jittered intervals in [%s, %s], want them to span [%s, %s]", gotMin, gotMax, lo, hi)
			}
		})
	}
}

// TestIntervalAndJitter counts the published probes of a few endpoints
// with a short interval: each pair's probes start between (1-jitter) and
// (1+jitter) intervals apart, plus scheduling slack, and spread over that
// range; the first comes within the first interval.
func TestIntervalAndJitter(t *testing.T) {
	_, _, js := natstest.Start(t)
	_, base := newMock(t, mock.Config{APIKey: testKey})
	const (
		n        = 4
		probes   = 13
		interval = 200 * time.Millisecond
		jitter   = 0.5
		slack    = 150 * time.Millisecond // scheduling and -race, on the late side only
	)
	var eps []config.Endpoint
	for i := range n {
		ep := testEndpoint(fmt.Sprintf("iv%d", i), strings.Replace(base, "/v1", fmt.Sprintf("/iv%d/v1", i), 1), events.ProbeHealth)
		ep.CheckInterval, ep.Timeout = interval, interval/2
		eps = append(eps, ep)
	}
	cfg := testConfig(t, eps...)
	cfg.Prober.Jitter = ptr(jitter)
	p, err := New(Options{Config: cfg, JS: js, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	startProber(t, p)

	var gaps []time.Duration
	for _, ep := range eps {
		r := newProbeReader(t, js, ep.Name)
		var prev time.Time
		for i := range probes {
			res := r.next(10 * time.Second).res
			if res.Outcome != events.ProbePass {
				t.Fatalf("%s probe %d: %s %s: %s", ep.Name, i, res.Outcome, res.ErrorClass, res.Error)
			}
			if i == 0 {
				if d := res.StartedAt.Sub(t0); d > interval+slack {
					t.Errorf("%s: first probe %s after start, want within the interval %s", ep.Name, d, interval)
				}
			} else {
				gaps = append(gaps, res.StartedAt.Sub(prev))
			}
			prev = res.StartedAt
		}
	}
	lo := time.Duration((1-jitter)*float64(interval)) - time.Millisecond // wall clock vs monotonic
	hi := time.Duration((1+jitter)*float64(interval)) + slack
	var sum, gotMin, gotMax time.Duration = 0, time.Hour, 0
	for _, g := range gaps {
		if g < lo || g > hi {
			t.Errorf("probes of one pair %s apart, want between %s and %s", g, lo, hi)
		}
		sum += g
		gotMin, gotMax = min(gotMin, g), max(gotMax, g)
	}
	mean := sum / time.Duration(len(gaps))
	t.Logf("%d gaps: min %s, mean %s, max %s", len(gaps), gotMin, mean, gotMax)
	if mean < interval*85/100 || mean > interval*125/100 {
		t.Errorf("mean gap %s, want about the interval %s", mean, interval)
	}
	if gotMin > interval*90/100 || gotMax < interval*110/100 {
		t.Errorf("gaps between %s and %s: the jitter of ±%v does not show", gotMin, gotMax, jitter)
	}
}

// countingTransport counts requests in flight, in all and per URL, from
// the moment a request is sent until its body is closed.
type countingTransport struct {
	base http.RoundTripper

	mu        sync.Mutex
	started   int
	cur, max  int
	perURL    map[string]int
	perURLMax map[string]int
}

func newCountingTransport() *countingTransport {
	return &countingTransport{
		base:   upstream.NewClient(16).Transport,
		perURL: map[string]int{}, perURLMax: map[string]int{},
	}
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	u := req.URL.String()
	c.mu.Lock()
	c.started++
	c.cur++
	c.max = max(c.max, c.cur)
	c.perURL[u]++
	c.perURLMax[u] = max(c.perURLMax[u], c.perURL[u])
	c.mu.Unlock()
	var once sync.Once
	leave := func() {
		once.Do(func() {
			c.mu.Lock()
			c.cur--
			c.perURL[u]--
			c.mu.Unlock()
		})
	}
	resp, err := c.base.RoundTrip(req)
	if err != nil {
		leave()
		return nil, err
	}
	resp.Body = &closeHook{ReadCloser: resp.Body, hook: leave}
	return resp, nil
}

func (c *countingTransport) CloseIdleConnections() {
	c.base.(interface{ CloseIdleConnections() }).CloseIdleConnections()
}

func (c *countingTransport) snapshot() (started, maxAll, maxPerURL int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.perURLMax {
		maxPerURL = max(maxPerURL, m)
	}
	return c.started, c.max, maxPerURL
}

// closeHook calls hook when the body is closed.
type closeHook struct {
	io.ReadCloser
	hook func()
}

func (b *closeHook) Close() error { b.hook(); return b.ReadCloser.Close() }

// TestConcurrencyCap runs more hanging probes than max_concurrent allows:
// never more than max_concurrent are in flight, and the cap is reached.
func TestConcurrencyCap(t *testing.T) {
	_, _, js := natstest.Start(t)
	_, base := newMock(t, mock.Config{APIKey: testKey, Faults: mock.Faults{HangRate: 1}})
	var eps []config.Endpoint
	for i := range 8 {
		ep := testEndpoint(fmt.Sprintf("cap%d", i), strings.Replace(base, "/v1", fmt.Sprintf("/cap%d/v1", i), 1), events.ProbeModels)
		ep.Timeout = 200 * time.Millisecond
		eps = append(eps, ep)
	}
	cfg := testConfig(t, eps...)
	cfg.Prober.MaxConcurrent = 3
	tr := newCountingTransport()
	p, err := New(Options{Config: cfg, JS: js, Rand: seeded(), HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	startProber(t, p)
	natstest.WaitFor(t, 20*time.Second, "20 probes sent", func() bool {
		started, _, _ := tr.snapshot()
		return started >= 20
	})
	_, maxAll, maxPerURL := tr.snapshot()
	if maxAll != cfg.Prober.MaxConcurrent {
		t.Errorf("at most %d probes were in flight at once, want exactly max_concurrent %d", maxAll, cfg.Prober.MaxConcurrent)
	}
	if maxPerURL > 1 {
		t.Errorf("%d probes of one endpoint and kind were in flight at once, want 1", maxPerURL)
	}
	if g := counterValue(p.m.inflight); g > float64(cfg.Prober.MaxConcurrent) {
		t.Errorf("switchboard_probes_inflight %v, want at most %d", g, cfg.Prober.MaxConcurrent)
	}
}

// TestNoOverlap gives probes a latency close to the interval, with a
// jitter that often makes the next one due before the last ended: probes
// of one pair never overlap, while different pairs do run at once.
func TestNoOverlap(t *testing.T) {
	_, _, js := natstest.Start(t)
	const interval = 200 * time.Millisecond
	_, base := newMock(t, mock.Config{APIKey: testKey, Faults: mock.Faults{Latency: mock.Duration(150 * time.Millisecond)}})
	var eps []config.Endpoint
	for i := range 3 {
		ep := testEndpoint(fmt.Sprintf("ov%d", i), strings.Replace(base, "/v1", fmt.Sprintf("/ov%d/v1", i), 1), events.ProbeModels)
		ep.CheckInterval, ep.Timeout = interval, interval
		eps = append(eps, ep)
	}
	cfg := testConfig(t, eps...)
	cfg.Prober.Jitter = ptr(0.5)
	tr := newCountingTransport()
	p, err := New(Options{Config: cfg, JS: js, Rand: seeded(), HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	startProber(t, p)
	natstest.WaitFor(t, 20*time.Second, "24 probes sent", func() bool {
		started, _, _ := tr.snapshot()
		return started >= 24
	})
	_, maxAll, maxPerURL := tr.snapshot()
	if maxPerURL != 1 {
		t.Errorf("%d probes of one endpoint and kind were in flight at once, want 1", maxPerURL)
	}
	if maxAll < 2 {
		t.Errorf("at most %d probes in flight at once: the endpoints were not probed concurrently", maxAll)
	}
}

// TestOverloadSheds: with one slot and three hanging endpoints, a probe
// waits more than its interval for the slot and is published as
// inconclusive/internal instead of being sent late.
func TestOverloadSheds(t *testing.T) {
	_, _, js := natstest.Start(t)
	_, base := newMock(t, mock.Config{APIKey: testKey, Faults: mock.Faults{HangRate: 1}})
	var eps []config.Endpoint
	for i := range 3 {
		ep := testEndpoint(fmt.Sprintf("shed%d", i), base, events.ProbeModels)
		ep.CheckInterval, ep.Timeout = 300*time.Millisecond, 300*time.Millisecond
		eps = append(eps, ep)
	}
	cfg := testConfig(t, eps...)
	cfg.Prober.MaxConcurrent = 1
	p, err := New(Options{Config: cfg, JS: js, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	r := newSubjectReader(t, js, events.SubjectProbeAll)
	startProber(t, p)
	for i := 0; ; i++ {
		if i == 30 {
			t.Fatal("no probe was shed in 30 results")
		}
		res := r.next(10 * time.Second).res
		if res.ErrorClass != events.ClassInternal {
			continue
		}
		if res.Outcome != events.ProbeInconclusive || !strings.Contains(res.Error, "prober overloaded") {
			t.Errorf("shed probe: %s %s %q, want inconclusive internal, prober overloaded", res.Outcome, res.ErrorClass, res.Error)
		}
		break
	}
}

// TestShutdownCancelsProbes stops the prober while a probe hangs: Run
// returns, and the cut-short probe is counted as caller_canceled but not
// published.
func TestShutdownCancelsProbes(t *testing.T) {
	_, _, js := natstest.Start(t)
	m, base := newMock(t, mock.Config{APIKey: testKey, Faults: mock.Faults{HangRate: 1}})
	ep := testEndpoint("shut", base, events.ProbeModels)
	ep.CheckInterval, ep.Timeout = time.Minute, 30*time.Second
	p, err := New(Options{Config: testConfig(t, ep), JS: js, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	stop := startProber(t, p)
	natstest.WaitFor(t, 10*time.Second, "a hanging probe", func() bool { return m.Stats().Hanging == 1 })
	stop()
	if got := counterValue(p.m.probes.WithLabelValues("shut", "models", "inconclusive", "caller_canceled")); got != 1 {
		t.Errorf("caller_canceled probes %v, want 1", got)
	}
	if got := counterValue(p.m.inflight); got != 0 {
		t.Errorf("probes in flight after Run returned: %v", got)
	}
	s, err := js.Stream(context.Background(), events.StreamHealth)
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := s.GetLastMsgForSubject(context.Background(), events.ProbeSubject("shut")); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("published %v (err %v), want nothing for a probe the shutdown cut short", msg, err)
	}
	natstest.WaitFor(t, 10*time.Second, "the mock to see the probe go", func() bool { return m.Stats().Hanging == 0 })
}

// TestRecheckAfterFailure: while a probe fails, the pair is probed at the
// recheck interval; once it passes again, at the check interval.
func TestRecheckAfterFailure(t *testing.T) {
	_, _, js := natstest.Start(t)
	m, base := newMock(t, mock.Config{APIKey: testKey})
	m.SetFaults(mock.Faults{Down: true, OutageMode: mock.OutageStatus})
	const (
		interval = 2 * time.Second
		recheck  = 100 * time.Millisecond
	)
	ep := testEndpoint("rc", base, events.ProbeHealth)
	ep.CheckInterval, ep.Timeout, ep.RecheckInterval = interval, time.Second, recheck
	cfg := testConfig(t, ep)
	cfg.Prober.Jitter = ptr(0.0)
	p, err := New(Options{Config: cfg, JS: js, Rand: seeded()})
	if err != nil {
		t.Fatal(err)
	}
	startProber(t, p)
	r := newProbeReader(t, js, ep.Name)
	var fails []time.Time
	for len(fails) < 5 {
		res := r.next(10 * time.Second).res
		if res.Outcome != events.ProbeFail {
			t.Fatalf("probe of a down endpoint: %s %s", res.Outcome, res.ErrorClass)
		}
		fails = append(fails, res.StartedAt)
	}
	// Five failures arrive within one check interval: each follows the
	// last at the recheck interval, not the check interval.
	if span := fails[4].Sub(fails[0]); span >= interval {
		t.Errorf("5 failing probes took %s, want under one check interval %s", span, interval)
	}
	m.SetFaults(mock.Faults{})
	var passes []time.Time
	for len(passes) < 2 {
		res := r.next(10 * time.Second).res
		if res.Outcome == events.ProbePass {
			passes = append(passes, res.StartedAt)
		}
	}
	if gap := passes[1].Sub(passes[0]); gap < interval-time.Millisecond {
		t.Errorf("passing probes %s apart, want the check interval %s again", gap, interval)
	}
}
