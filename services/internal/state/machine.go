package state

import (
	"fmt"
	"strings"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// New returns the record of an endpoint nothing is known about yet: health
// unknown, breaker closed, no override, every counter zero.
func New(endpoint string, now time.Time) events.EndpointState {
	return events.EndpointState{
		Endpoint:     endpoint,
		Health:       events.HealthUnknown,
		HealthSince:  now,
		Breaker:      events.BreakerClosed,
		BreakerSince: now,
		Override:     events.OverrideNone,
		UpdatedAt:    now,
	}
}

// Rank is an endpoint's routing preference by health: healthy 0 < degraded
// 1 < unknown 2 < unhealthy 3. Lower is better.
func Rank(h events.Health) int {
	switch h {
	case events.HealthHealthy:
		return 0
	case events.HealthDegraded:
		return 1
	case events.HealthUnknown:
		return 2
	}
	return 3
}

// effect is what an error class does to an endpoint.
type effect int

const (
	effNone     effect = iota // never counts: the caller's or our own fault
	effFailure                // an endpoint failure
	effThrottle               // 429: throttle, never a failure
	effAuth                   // 401/403: unhealthy and open at once
)

func classEffect(c events.ErrorClass) effect {
	switch c {
	case events.ClassTimeout, events.ClassConnect, events.ClassDNS, events.ClassTLS, events.ClassHTTP5xx,
		events.ClassHTTP4xx, events.ClassBadBody, events.ClassStreamBroken, events.ClassModelMissing:
		return effFailure
	case events.ClassHTTP429:
		return effThrottle
	case events.ClassAuth:
		return effAuth
	}
	return effNone // client_error, caller_canceled, internal, unknown classes
}

// CountsAgainst reports whether an error of class c counts as a failure of
// the endpoint (auth included; 429 and the caller's or our own errors not).
func CountsAgainst(c events.ErrorClass) bool {
	e := classEffect(c)
	return e == effFailure || e == effAuth
}

// DefaultThrottle is how long a 429 without a Retry-After or reset hint
// throttles an endpoint.
const DefaultThrottle = time.Second

// vantageStaleFactor: a vantage whose last probe is older than this many
// probe intervals no longer takes part in the quorum.
const vantageStaleFactor = 3

// vantageForgetFactor: a vantage silent for this many intervals is dropped
// from the record.
const vantageForgetFactor = 10

// machine applies one signal to a copy of a record and collects the reasons
// of what it changed.
type machine struct {
	s       Settings
	st      events.EndpointState
	now     time.Time
	source  string // the signal's source, for last_error
	reasons []string
}

func (m *machine) because(format string, args ...any) {
	m.reasons = append(m.reasons, fmt.Sprintf(format, args...))
}

// Apply applies one signal to a record and returns the next record and what
// changed. It never modifies st. It does not run time-driven transitions:
// call Tick first (the evaluator does). now is the signal's time on the
// record's clock; the caller keeps it from going backwards.
func Apply(s Settings, st events.EndpointState, sig Signal, now time.Time) (events.EndpointState, Change) {
	m := &machine{s: s, st: clone(st), now: now, source: sig.Source}
	var cause events.Cause
	write := true
	switch sig.Kind {
	case SignalProbe:
		if sig.Probe == nil {
			return st, Change{}
		}
		cause = probeCause(sig)
		m.probe(sig.Probe)
	case SignalOutcome:
		if sig.Outcome == nil {
			return st, Change{}
		}
		cause = outcomeCause(sig)
		m.outcome(sig.Outcome)
	case SignalOperator:
		cause = events.Cause{Kind: events.CauseOperator, Source: sig.Source, EventID: sig.EventID, EventType: sig.EventType}
		write = m.operator(sig.Operator, sig.Reason)
	case SignalThrottle:
		cause = events.Cause{Kind: events.CauseQuota, Endpoint: sig.ThrottleFrom, Source: sig.Source,
			EventID: sig.EventID, EventType: sig.EventType, ErrorClass: events.ClassHTTP429}
		write = m.throttle(sig.ThrottleUntil, "429 on quota-group member "+sig.ThrottleFrom)
	default:
		return st, Change{}
	}
	if !write {
		return st, Change{}
	}
	ch := diff(st, &m.st, now)
	ch.Write = true
	m.st.UpdatedAt = now
	cause.Reason = strings.Join(m.reasons, "; ")
	if cause.Reason == "" {
		cause.Reason = "no rule fired"
	}
	ch.Cause = cause
	return m.st, ch
}

func probeCause(sig Signal) events.Cause {
	p := sig.Probe
	return events.Cause{
		Kind: events.CauseProbe, EventID: sig.EventID, EventType: sig.EventType, Source: sig.Source,
		ProbeKind: p.Kind, Outcome: string(p.Outcome), ErrorClass: p.ErrorClass, Error: p.Error, StatusCode: p.StatusCode,
	}
}

func outcomeCause(sig Signal) events.Cause {
	o := sig.Outcome
	return events.Cause{
		Kind: events.CauseOutcome, EventID: sig.EventID, EventType: sig.EventType, Source: sig.Source,
		Outcome: string(o.Outcome), ErrorClass: o.ErrorClass, Error: o.Error, StatusCode: o.StatusCode,
	}
}

// diff fills a Change from the difference of two records and stamps the
// "since" times of what changed.
func diff(prev events.EndpointState, next *events.EndpointState, now time.Time) Change {
	var ch Change
	if prev.Health != next.Health {
		ch.Health = &events.Transition{From: string(prev.Health), To: string(next.Health)}
		next.HealthSince = now
	}
	if prev.Breaker != next.Breaker {
		ch.Breaker = &events.Transition{From: string(prev.Breaker), To: string(next.Breaker)}
		next.BreakerSince = now
	}
	if !timeEq(prev.ThrottledUntil, next.ThrottledUntil) {
		ch.Throttle = &events.ThrottleChange{From: prev.ThrottledUntil, To: next.ThrottledUntil}
	}
	if prev.Override != next.Override {
		ch.Override = &events.Transition{From: string(prev.Override), To: string(next.Override)}
	}
	return ch
}

func timeEq(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

// clone copies the parts of a record that Apply and Tick modify in place.
func clone(st events.EndpointState) events.EndpointState {
	if st.Window != nil {
		st.Window = append([]events.WindowBucket(nil), st.Window...)
	}
	if st.Vantages != nil {
		v := make(map[string]events.ProbeView, len(st.Vantages))
		for k, pv := range st.Vantages {
			v[k] = pv
		}
		st.Vantages = v
	}
	if st.HalfOpen != nil {
		h := *st.HalfOpen
		h.Leases = append([]events.Lease(nil), h.Leases...)
		st.HalfOpen = &h
	}
	return st
}

func ptr(t time.Time) *time.Time { return &t }

// Observed is when a probe or call finished: its start plus its latency.
// The evaluator applies an event at this time.
func Observed(start time.Time, latencyMS float64) time.Time {
	return start.Add(time.Duration(latencyMS * float64(time.Millisecond)))
}

// ---- probes -----------------------------------------------------------------

// VantageKey is the key of a probe view in EndpointState.Vantages: the
// vantage and the probe kind, e.g. "eu-west/models". Each kind of probe of
// each vantage keeps its own latest view, so a passing health probe does not
// hide a failing models probe of the same vantage.
func VantageKey(vantage string, kind events.ProbeKind) string {
	return vantage + "/" + string(kind)
}

func (m *machine) probe(p *events.ProbeResult) {
	st := &m.st
	pv := events.ProbeView{
		At: m.now, Vantage: p.Vantage, Kind: p.Kind, Outcome: p.Outcome, ErrorClass: p.ErrorClass,
		LatencyMS: p.LatencyMS, IntervalMS: p.IntervalMS,
	}
	st.LastProbe = &pv
	if st.Vantages == nil {
		st.Vantages = map[string]events.ProbeView{}
	}
	key := VantageKey(p.Vantage, p.Kind)
	st.Vantages[key] = pv
	for k, old := range st.Vantages {
		switch {
		case k == key:
		case m.now.Sub(old.At) > vantageForgetFactor*m.interval(old):
			delete(st.Vantages, k)
		case old.Vantage != "" && k != VantageKey(old.Vantage, old.Kind):
			// A record written before views were keyed by kind: re-key it,
			// unless a newer view of that vantage and kind exists.
			delete(st.Vantages, k)
			if nk := VantageKey(old.Vantage, old.Kind); nk != key {
				if cur, ok := st.Vantages[nk]; !ok || cur.At.Before(old.At) {
					st.Vantages[nk] = old
				}
			}
		}
	}
	if p.ErrorClass == events.ClassHTTP429 {
		// A probe that met a quota says the quota is spent, whatever its
		// outcome: calls would meet it too.
		until := m.now.Add(DefaultThrottle)
		if p.ThrottledUntil != nil {
			until = *p.ThrottledUntil
		}
		m.recordError(p.ErrorClass, p.Error, p.StatusCode)
		m.throttle(until, "probe got 429")
	}
	switch p.Outcome {
	case events.ProbePass:
		// An endpoint is as healthy as its worst kind of probe: a passing
		// health probe says nothing for the models another kind of probe
		// finds missing everywhere, and must not reset that failure streak.
		if !m.otherKindFailing(p.Kind) {
			m.success(p.LatencyMS, p.TTFTMS, p.StartedAt, false, "probe")
		}
	case events.ProbeFail:
		switch classEffect(p.ErrorClass) {
		case effFailure:
			m.recordError(p.ErrorClass, p.Error, p.StatusCode)
			failing, voting, q := m.quorum(p.Kind)
			if failing >= q {
				if voting > 1 {
					m.because("%d of %d vantages see the %s probe fail", failing, voting, p.Kind)
				}
				m.failure(p.StartedAt, false, "probe")
			}
		case effAuth:
			m.recordError(p.ErrorClass, p.Error, p.StatusCode)
			m.auth(p.StartedAt, false)
		}
	}
	// Inconclusive probes (and failures of our own or the caller's making)
	// are recorded above and count for nothing.
}

// interval is a probe view's probe interval (the configured check interval
// when the prober did not say).
func (m *machine) interval(pv events.ProbeView) time.Duration {
	if pv.IntervalMS > 0 {
		return time.Duration(pv.IntervalMS) * time.Millisecond
	}
	if m.s.Health.CheckInterval > 0 {
		return m.s.Health.CheckInterval
	}
	return 30 * time.Second
}

// quorum judges a failing probe of kind: it counts the vantages that take
// part (a fresh view of that kind whose probe passed or failed for a reason
// that counts against the endpoint) and those among them that failed, and
// returns the quorum a failure needs. A vantage whose last probe was
// inconclusive, or failed for a reason of its own (client_error, internal),
// abstains: it neither vetoes nor supports the others' failures.
func (m *machine) quorum(kind events.ProbeKind) (failing, voting, q int) {
	for _, pv := range m.st.Vantages {
		if pv.Kind != kind || m.now.Sub(pv.At) > vantageStaleFactor*m.interval(pv) {
			continue
		}
		switch {
		case pv.Outcome == events.ProbePass:
			voting++
		case pv.Outcome == events.ProbeFail && CountsAgainst(pv.ErrorClass):
			voting++
			failing++
		}
	}
	q = voting/2 + 1
	if m.s.Health.ProbeQuorum > 0 {
		q = min(m.s.Health.ProbeQuorum, voting)
	}
	return failing, voting, max(q, 1)
}

// otherKindFailing reports whether a kind of probe other than kind
// currently fails by quorum.
func (m *machine) otherKindFailing(kind events.ProbeKind) bool {
	seen := map[events.ProbeKind]bool{kind: true}
	for _, pv := range m.st.Vantages {
		if seen[pv.Kind] {
			continue
		}
		seen[pv.Kind] = true
		if failing, _, q := m.quorum(pv.Kind); failing > 0 && failing >= q {
			return true
		}
	}
	return false
}

// ---- request outcomes -------------------------------------------------------

func (m *machine) outcome(o *events.RequestOutcome) {
	st := &m.st
	st.Requests++
	trial := false
	if o.TrialLease != "" && st.HalfOpen != nil {
		for i, l := range st.HalfOpen.Leases {
			if l.ID == o.TrialLease {
				st.HalfOpen.Leases = append(st.HalfOpen.Leases[:i:i], st.HalfOpen.Leases[i+1:]...)
				trial = true
				break
			}
		}
	}
	switch o.Outcome {
	case events.RequestSuccess:
		slow := o.LatencyMS > float64(m.s.Health.LatencyThresholdMS)
		m.window(slow)
		if slow {
			st.Failures++
		}
		m.success(o.LatencyMS, o.TTFTMS, o.StartedAt, trial, "request")
		m.rateCheck()
	case events.RequestError:
		switch classEffect(o.ErrorClass) {
		case effFailure:
			st.Failures++
			m.window(true)
			m.recordError(o.ErrorClass, o.Error, o.StatusCode)
			m.failure(o.StartedAt, trial, "request")
			m.rateCheck()
		case effAuth:
			st.Failures++
			m.window(true)
			m.recordError(o.ErrorClass, o.Error, o.StatusCode)
			m.auth(o.StartedAt, trial)
		case effThrottle:
			m.recordError(o.ErrorClass, o.Error, o.StatusCode)
			until := m.now.Add(DefaultThrottle)
			if o.ThrottledUntil != nil {
				until = *o.ThrottledUntil
			}
			m.throttle(until, "request got 429")
		}
		// client_error, caller_canceled, internal: counted as a request,
		// nothing else. A trial lease they carried is freed above.
	}
}

// ---- the rules --------------------------------------------------------------

func (m *machine) recordError(c events.ErrorClass, msg string, code int) {
	m.st.LastError = &events.ErrorView{At: m.now, Class: c, Message: msg, StatusCode: code, Source: m.source}
}

// success is a successful probe or call of the given latency. One slower
// than latency_threshold_ms is a failure (class timeout).
func (m *machine) success(latencyMS, ttftMS float64, started time.Time, trial bool, what string) {
	st := &m.st
	h := m.s.Health
	st.LatencyEWMAMS = ewma(st.LatencyEWMAMS, latencyMS, h.EWMAAlpha)
	if ttftMS > 0 {
		st.TTFTEWMAMS = ewma(st.TTFTEWMAMS, ttftMS, h.EWMAAlpha)
	}
	if latencyMS > float64(h.LatencyThresholdMS) {
		msg := fmt.Sprintf("%s succeeded in %.0f ms, slower than latency_threshold_ms %d", what, latencyMS, h.LatencyThresholdMS)
		m.recordError(events.ClassTimeout, msg, 0)
		m.because("%s", msg)
		m.failure(started, trial, what)
		return
	}
	st.ConsecutiveSuccesses++
	st.ConsecutiveFailures = 0
	st.LastSuccessAt = ptr(m.now)

	switch st.Health {
	case events.HealthHealthy, events.HealthDegraded:
		if to := m.byLatency(); to != st.Health {
			m.setHealthByLatency(to)
		}
	default: // unknown, unhealthy
		if st.ConsecutiveSuccesses >= h.HealthyThreshold {
			to := m.byLatency()
			m.because("%d consecutive successes (healthy_threshold %d)", st.ConsecutiveSuccesses, h.HealthyThreshold)
			if to == events.HealthDegraded {
				m.because("latency EWMA %.0f ms > degraded_threshold_ms %d", st.LatencyEWMAMS, h.DegradedThresholdMS)
			}
			st.Health = to
		}
	}

	switch st.Breaker {
	case events.BreakerClosed:
		st.BreakerFailures = 0
	case events.BreakerHalfOpen:
		if m.countsInHalfOpen(started, trial) {
			st.HalfOpen.Successes++
			if st.HalfOpen.Successes >= m.s.Breaker.HalfOpenRequests {
				m.because("%d trial successes (half_open_requests %d)", st.HalfOpen.Successes, m.s.Breaker.HalfOpenRequests)
				m.close()
			}
		}
	}
}

func (m *machine) byLatency() events.Health {
	if m.st.LatencyEWMAMS > float64(m.s.Health.DegradedThresholdMS) {
		return events.HealthDegraded
	}
	return events.HealthHealthy
}

func (m *machine) setHealthByLatency(to events.Health) {
	if to == events.HealthDegraded {
		m.because("latency EWMA %.0f ms > degraded_threshold_ms %d", m.st.LatencyEWMAMS, m.s.Health.DegradedThresholdMS)
	} else {
		m.because("latency EWMA %.0f ms <= degraded_threshold_ms %d", m.st.LatencyEWMAMS, m.s.Health.DegradedThresholdMS)
	}
	m.st.Health = to
}

func ewma(cur, sample, alpha float64) float64 {
	if cur == 0 {
		return sample
	}
	return alpha*sample + (1-alpha)*cur
}

// failure is an endpoint failure that counts (a probe failure only once the
// quorum agrees).
func (m *machine) failure(started time.Time, trial bool, what string) {
	st := &m.st
	h, b := m.s.Health, m.s.Breaker
	st.ConsecutiveFailures++
	st.ConsecutiveSuccesses = 0
	if st.ConsecutiveFailures >= h.UnhealthyThreshold && st.Health != events.HealthUnhealthy {
		m.because("%d consecutive failures (unhealthy_threshold %d)", st.ConsecutiveFailures, h.UnhealthyThreshold)
		st.Health = events.HealthUnhealthy
	}
	switch st.Breaker {
	case events.BreakerClosed:
		st.BreakerFailures++
		if st.BreakerFailures >= b.FailureThreshold {
			m.because("%d consecutive failures (failure_threshold %d)", st.BreakerFailures, b.FailureThreshold)
			m.open()
		}
	case events.BreakerHalfOpen:
		if m.countsInHalfOpen(started, trial) {
			m.because("%s failed while half-open", what)
			m.open()
		}
	}
}

// auth is a 401/403: the key is refused, which no retry will fix.
func (m *machine) auth(started time.Time, trial bool) {
	st := &m.st
	st.ConsecutiveFailures++
	st.ConsecutiveSuccesses = 0
	if st.Health != events.HealthUnhealthy {
		m.because("401/403: the endpoint refused the API key")
		st.Health = events.HealthUnhealthy
	}
	switch st.Breaker {
	case events.BreakerClosed:
		m.because("401/403 opens the breaker at once")
		m.open()
	case events.BreakerHalfOpen:
		if m.countsInHalfOpen(started, trial) {
			m.because("401/403 while half-open")
			m.open()
		}
	}
}

// countsInHalfOpen: a trial counts; any other signal counts only if it
// started during the half-open period (one that started earlier is a
// straggler from before the breaker opened and says nothing about now).
func (m *machine) countsInHalfOpen(started time.Time, trial bool) bool {
	return trial || !started.Before(m.st.HalfOpen.Since)
}

// RecoveryTimeout is how long the breaker stays open on its n-th open since
// it last closed: recovery_timeout * 2^(n-1), capped at max_recovery_timeout.
func RecoveryTimeout(s Settings, n int) time.Duration {
	d := s.Breaker.RecoveryTimeout
	maxD := s.Breaker.MaxRecoveryTimeout
	if maxD < d {
		maxD = d
	}
	for i := 1; i < n && d < maxD; i++ {
		d *= 2
	}
	return min(d, maxD)
}

func (m *machine) open() {
	st := &m.st
	st.OpenCount++
	st.Breaker = events.BreakerOpen
	st.OpenedAt = ptr(m.now)
	st.OpenUntil = ptr(m.now.Add(RecoveryTimeout(m.s, st.OpenCount)))
	st.HalfOpen = nil
	st.BreakerFailures = 0
}

func (m *machine) close() {
	st := &m.st
	st.Breaker = events.BreakerClosed
	st.OpenCount = 0
	st.OpenedAt, st.OpenUntil = nil, nil
	st.HalfOpen = nil
	st.BreakerFailures = 0
	st.Window = nil
	st.ErrorRate = 0
}

// rateCheck opens a closed breaker whose windowed error rate reached the
// threshold with enough requests.
func (m *machine) rateCheck() {
	st := &m.st
	b := m.s.Breaker
	if st.Breaker != events.BreakerClosed {
		return
	}
	rate, n := windowRate(b, st.Window, m.now)
	if n >= b.MinRequests && rate >= b.ErrorRateThreshold {
		m.because("error rate %.0f%% over %s with %d requests (error_rate_threshold %.0f%%, min_requests %d)",
			rate*100, b.ErrorRateWindow, n, b.ErrorRateThreshold*100, b.MinRequests)
		m.open()
	}
}

// throttle extends throttled_until to until (never shortens it) and reports
// whether it changed.
func (m *machine) throttle(until time.Time, why string) bool {
	st := &m.st
	if !until.After(m.now) {
		return false
	}
	if st.ThrottledUntil != nil && !until.After(*st.ThrottledUntil) {
		return false
	}
	st.ThrottledUntil = ptr(until)
	m.because("%s: throttled until %s", why, until.UTC().Format(time.RFC3339))
	return true
}

// operator applies an operator's command and reports whether the record
// changed.
func (m *machine) operator(cmd Command, reason string) bool {
	st := &m.st
	set := func(o events.Override) bool {
		if st.Override == o && (st.OverrideReason == reason || o == events.OverrideNone) {
			return false
		}
		st.Override = o
		st.OverrideReason = reason
		if o == events.OverrideNone {
			st.OverrideReason = ""
		}
		m.because("operator: %s", operatorWords(cmd, reason))
		return true
	}
	switch cmd {
	case CmdDrain:
		return set(events.OverrideDrain)
	case CmdUndrain:
		return set(events.OverrideNone)
	case CmdOpen:
		return set(events.OverrideForceOpen)
	case CmdClose:
		return set(events.OverrideForceClosed)
	case CmdReset:
		fresh := New(st.Endpoint, m.now)
		fresh.AppliedSeq = st.AppliedSeq
		fresh.Pending = st.Pending
		*st = fresh
		m.because("operator: %s", operatorWords(cmd, reason))
		return true
	}
	return false
}

func operatorWords(cmd Command, reason string) string {
	if reason == "" {
		return string(cmd)
	}
	return string(cmd) + " (" + reason + ")"
}

// ---- time -------------------------------------------------------------------

// Tick runs the time-driven transitions due at now: an open breaker whose
// open_until passed becomes half-open; leases past their expiry are dropped,
// freeing their slots; a throttle that ended is cleared. Change.Write is
// false when nothing was due.
func Tick(s Settings, st events.EndpointState, now time.Time) (events.EndpointState, Change) {
	m := &machine{s: s, st: clone(st), now: now}
	write := false
	n := &m.st
	if n.Breaker == events.BreakerOpen && n.OpenUntil != nil && !now.Before(*n.OpenUntil) {
		m.because("recovery timeout %s elapsed", RecoveryTimeout(s, n.OpenCount))
		n.Breaker = events.BreakerHalfOpen
		n.HalfOpen = &events.HalfOpen{Period: n.OpenCount, Since: now}
		n.OpenUntil = nil
		write = true
	}
	if n.HalfOpen != nil && expireLeases(n.HalfOpen, now) {
		write = true
	}
	if n.ThrottledUntil != nil && !now.Before(*n.ThrottledUntil) {
		m.because("throttle ended")
		n.ThrottledUntil = nil
		write = true
	}
	if !write {
		return st, Change{}
	}
	ch := diff(st, n, now)
	ch.Write = true
	if now.After(n.UpdatedAt) {
		n.UpdatedAt = now
	}
	reason := strings.Join(m.reasons, "; ")
	if reason == "" {
		reason = "trial lease expired"
	}
	ch.Cause = events.Cause{Kind: events.CauseTimer, Reason: reason}
	return m.st, ch
}

// expireLeases drops leases past their expiry and reports whether any was.
func expireLeases(h *events.HalfOpen, now time.Time) bool {
	kept := h.Leases[:0:0]
	for _, l := range h.Leases {
		if now.Before(l.ExpiresAt) {
			kept = append(kept, l)
		}
	}
	if len(kept) == len(h.Leases) {
		return false
	}
	h.Leases = kept
	return true
}

// NextTick is when Tick would next change st: the end of the recovery
// timeout, the first lease expiry or the end of the throttle, whichever
// comes first. ok is false when nothing is scheduled.
func NextTick(st events.EndpointState) (time.Time, bool) {
	var at time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(at) {
			at, ok = t, true
		}
	}
	if st.Breaker == events.BreakerOpen && st.OpenUntil != nil {
		consider(*st.OpenUntil)
	}
	if st.HalfOpen != nil {
		for _, l := range st.HalfOpen.Leases {
			consider(l.ExpiresAt)
		}
	}
	if st.ThrottledUntil != nil {
		consider(*st.ThrottledUntil)
	}
	return at, ok
}
