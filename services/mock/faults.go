package mock

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// ErrInvalidFaults is wrapped by every error from [Faults.Validate].
var ErrInvalidFaults = errors.New("invalid faults")

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string such as "250ms" or "1m30s".
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string; null leaves d unchanged.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"250ms\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: want a Go duration like \"250ms\" or \"1m30s\"", s)
	}
	*d = Duration(v)
	return nil
}

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// OutageMode is how the mock behaves while an outage is in effect.
type OutageMode string

// Outage modes. The zero value behaves like OutageStatus.
const (
	OutageStatus OutageMode = "status" // 503 with an OpenAI error body
	OutageReset  OutageMode = "reset"  // the connection is closed (reset) without a response
	OutageHang   OutageMode = "hang"   // no answer until the client gives up or the server closes
)

// Outage is a recurring window during which the endpoint is down, measured
// from the server's start: it is down during [Offset+k*Every, Offset+k*Every+For)
// for every k >= 0. With Every zero the window happens once.
type Outage struct {
	Every  Duration `json:"every,omitempty"`
	For    Duration `json:"for"`
	Offset Duration `json:"offset,omitempty"`
}

// active reports whether elapsed (time since the server's start) falls in the window.
func (o Outage) active(elapsed time.Duration) bool {
	d := elapsed - time.Duration(o.Offset)
	if d < 0 {
		return false
	}
	if o.Every > 0 {
		d %= time.Duration(o.Every)
	}
	return d < time.Duration(o.For)
}

// Faults describes what the mock gets wrong. The zero value injects nothing.
//
// For each request subject to faults the mock decides, in this order: outage
// (also for health), hang, latency, rate limit (429), error, then on a
// successful answer malformed body or truncation. Each rate is an independent
// draw, so {"error_rate":0.5,"rate_limit_rate":0.5} gives about 50% 429s and
// 25% errors. Draws are a hash of the server's seed and the request's sequence
// number, so the same seed and the same request order give the same faults.
type Faults struct {
	// Latency is added before every answer to models and chat completions;
	// LatencyMin..LatencyMax adds a uniformly random extra delay on top.
	Latency    Duration `json:"latency,omitempty"`
	LatencyMin Duration `json:"latency_min,omitempty"`
	LatencyMax Duration `json:"latency_max,omitempty"`

	// ErrorRate (0..1) of requests get ErrorStatus (default 500) with an OpenAI error body.
	ErrorRate   float64 `json:"error_rate,omitempty"`
	ErrorStatus int     `json:"error_status,omitempty"`
	// ApplyToHealth says whether ErrorRate also fails health checks; nil means true,
	// so a flaky endpoint shows failing health probes.
	ApplyToHealth *bool `json:"apply_to_health,omitempty"`

	// RateLimitRate (0..1) of requests get 429 with Retry-After set from
	// RetryAfter (default 1s, rounded up to whole seconds in the header).
	RateLimitRate float64  `json:"rate_limit_rate,omitempty"`
	RetryAfter    Duration `json:"retry_after,omitempty"`

	// HangRate (0..1) of requests are never answered.
	HangRate float64 `json:"hang_rate,omitempty"`
	// MalformedRate (0..1) of successful answers are a 200 whose body is not
	// valid JSON or not the expected object (for streams: a broken chunk).
	MalformedRate float64 `json:"malformed_rate,omitempty"`
	// TruncateRate (0..1) of successful answers are cut off mid-body and the
	// connection is aborted (streams: no [DONE]).
	TruncateRate float64 `json:"truncate_rate,omitempty"`

	// Outages are scheduled windows of downtime; Down is "down now".
	// Health checks fail during an outage too.
	Outages    []Outage   `json:"outages,omitempty"`
	Down       bool       `json:"down,omitempty"`
	OutageMode OutageMode `json:"outage_mode,omitempty"`
}

// Validate reports every out-of-range field, wrapping [ErrInvalidFaults].
func (f Faults) Validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	for _, d := range []struct {
		name string
		v    Duration
	}{{"latency", f.Latency}, {"latency_min", f.LatencyMin}, {"latency_max", f.LatencyMax}, {"retry_after", f.RetryAfter}} {
		if d.v < 0 {
			bad("%s %s is negative", d.name, d.v)
		}
	}
	if f.LatencyMax < f.LatencyMin {
		bad("latency_max %s is less than latency_min %s", f.LatencyMax, f.LatencyMin)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"error_rate", f.ErrorRate}, {"rate_limit_rate", f.RateLimitRate}, {"hang_rate", f.HangRate}, {"malformed_rate", f.MalformedRate}, {"truncate_rate", f.TruncateRate}} {
		if !(r.v >= 0 && r.v <= 1) { // also rejects NaN
			bad("%s %v is outside 0..1", r.name, r.v)
		}
	}
	if f.ErrorStatus != 0 && (f.ErrorStatus < 400 || f.ErrorStatus > 599) {
		bad("error_status %d is not a 4xx or 5xx status", f.ErrorStatus)
	}
	for i, o := range f.Outages {
		switch {
		case o.For <= 0:
			bad("outages[%d].for must be positive", i)
		case o.Every < 0 || o.Offset < 0:
			bad("outages[%d]: every and offset must not be negative", i)
		case o.Every > 0 && o.For >= o.Every:
			bad("outages[%d].for %s must be shorter than every %s (use down for a permanent outage)", i, o.For, o.Every)
		}
	}
	switch f.OutageMode {
	case "", OutageStatus, OutageReset, OutageHang:
	default:
		bad("outage_mode %q is not one of status, reset, hang", f.OutageMode)
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidFaults, strings.Join(problems, "; "))
}

// clone returns a deep copy, so that a stored Faults shares no memory with
// its caller (PATCH decodes into a copy, which would write through pointers).
func (f Faults) clone() Faults {
	if f.ApplyToHealth != nil {
		v := *f.ApplyToHealth
		f.ApplyToHealth = &v
	}
	if f.Outages != nil {
		f.Outages = append([]Outage(nil), f.Outages...)
	}
	return f
}

// faultState is an immutable, validated Faults with defaults applied,
// swapped atomically so that requests read it without locking.
type faultState struct {
	spec Faults // as set, returned by Server.Faults

	latency, latencyMin, latencyMax time.Duration
	errorRate, rateLimitRate        float64
	hangRate, malformedRate         float64
	truncateRate                    float64
	errorStatus                     int
	healthErrors                    bool
	retryAfter                      time.Duration
	retryAfterHeader, resetHeader   []string
	retryAfterMSHeader              []string
	errorBody, rateLimitBody        []byte
	outages                         []Outage
	down                            bool
	mode                            OutageMode
	anyOutage                       bool // down or scheduled: the clock must be read
	anyDraw                         bool // some fault needs a random draw
	anyLatency, anyRequestFault     bool
}

func newFaultState(f Faults, name string) *faultState {
	f = f.clone()
	st := &faultState{
		spec:          f,
		latency:       time.Duration(f.Latency),
		latencyMin:    time.Duration(f.LatencyMin),
		latencyMax:    time.Duration(f.LatencyMax),
		errorRate:     f.ErrorRate,
		rateLimitRate: f.RateLimitRate,
		hangRate:      f.HangRate,
		malformedRate: f.MalformedRate,
		truncateRate:  f.TruncateRate,
		errorStatus:   f.ErrorStatus,
		healthErrors:  f.ApplyToHealth == nil || *f.ApplyToHealth,
		retryAfter:    time.Duration(f.RetryAfter),
		outages:       f.Outages,
		down:          f.Down,
		mode:          f.OutageMode,
	}
	if st.errorStatus == 0 {
		st.errorStatus = 500
	}
	if st.retryAfter == 0 {
		st.retryAfter = time.Second
	}
	if st.mode == "" {
		st.mode = OutageStatus
	}
	secs := int64((st.retryAfter + time.Second - 1) / time.Second)
	st.retryAfterHeader = []string{fmt.Sprint(secs)}
	st.retryAfterMSHeader = []string{fmt.Sprint(st.retryAfter.Milliseconds())}
	st.resetHeader = []string{st.retryAfter.String()}
	typ := "server_error"
	if st.errorStatus < 500 {
		typ = "invalid_request_error"
	}
	st.errorBody = appendError(nil, fmt.Sprintf("Injected fault on mock endpoint %q: %d %s.", name, st.errorStatus, http.StatusText(st.errorStatus)),
		typ, "", statusCode(st.errorStatus))
	st.rateLimitBody = appendError(nil, fmt.Sprintf("Rate limit reached for requests on mock endpoint %q. Please try again in %s.", name, st.retryAfter),
		"rate_limit_exceeded", "", "rate_limit_exceeded")
	st.anyOutage = st.down || len(st.outages) > 0
	st.anyLatency = st.latency > 0 || st.latencyMax > 0
	st.anyDraw = st.latencyMax > st.latencyMin || st.errorRate > 0 || st.rateLimitRate > 0 ||
		st.hangRate > 0 || st.malformedRate > 0 || st.truncateRate > 0
	st.anyRequestFault = st.anyLatency || st.anyDraw
	return st
}

// statusCode turns a status into an OpenAI-style error code such as
// "service_unavailable".
func statusCode(status int) string {
	text := http.StatusText(status)
	if text == "" {
		return fmt.Sprintf("http_%d", status)
	}
	return strings.ToLower(strings.NewReplacer(" ", "_", "-", "_", "'", "").Replace(text))
}

// inOutage reports whether the endpoint is down at elapsed since start.
func (st *faultState) inOutage(elapsed time.Duration) bool {
	if st.down {
		return true
	}
	for _, o := range st.outages {
		if o.active(elapsed) {
			return true
		}
	}
	return false
}
