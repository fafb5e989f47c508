package state

import (
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// windowBuckets is how many buckets the error-rate window is cut into: the
// window slides in steps of error_rate_window / windowBuckets.
const windowBuckets = 10

func bucketWidth(b config.Breaker) time.Duration {
	return max(b.ErrorRateWindow/windowBuckets, time.Millisecond)
}

// window counts one request outcome (a failure or not) at m.now, drops
// buckets that slid out of the window and refreshes error_rate.
func (m *machine) window(failed bool) {
	b := m.s.Breaker
	if b.ErrorRateWindow <= 0 {
		return
	}
	st := &m.st
	start := m.now.Truncate(bucketWidth(b))
	i := len(st.Window)
	for i > 0 && st.Window[i-1].Start.After(start) {
		i-- // a signal older than the newest bucket (clock skew) goes in its own
	}
	if i > 0 && st.Window[i-1].Start.Equal(start) {
		i--
	} else {
		st.Window = append(st.Window, events.WindowBucket{})
		copy(st.Window[i+1:], st.Window[i:])
		st.Window[i] = events.WindowBucket{Start: start}
	}
	st.Window[i].Requests++
	if failed {
		st.Window[i].Failures++
	}
	st.Window = prune(b, st.Window, m.now)
	st.ErrorRate, _ = windowRate(b, st.Window, m.now)
}

// prune drops the buckets that ended before the window that ends at now.
func prune(b config.Breaker, w []events.WindowBucket, now time.Time) []events.WindowBucket {
	from := windowStart(b, now)
	i := 0
	for i < len(w) && w[i].Start.Before(from) {
		i++
	}
	if i == len(w) {
		return nil
	}
	return w[i:]
}

// windowStart is the start of the oldest bucket still in the window at now.
func windowStart(b config.Breaker, now time.Time) time.Time {
	width := bucketWidth(b)
	return now.Truncate(width).Add(-b.ErrorRateWindow).Add(width)
}

// windowRate is the failure rate of the requests in the window at now and
// how many requests that is.
func windowRate(b config.Breaker, w []events.WindowBucket, now time.Time) (float64, int) {
	if b.ErrorRateWindow <= 0 {
		return 0, 0
	}
	from := windowStart(b, now)
	var req, fail int
	for _, bk := range w {
		if bk.Start.Before(from) || bk.Start.After(now) {
			continue
		}
		req += bk.Requests
		fail += bk.Failures
	}
	if req == 0 {
		return 0, 0
	}
	return float64(fail) / float64(req), req
}

// ErrorRate is an endpoint's error rate over the breaker window as of now
// (the record's error_rate is as of its last request) and the number of
// requests in the window.
func ErrorRate(s Settings, st events.EndpointState, now time.Time) (float64, int) {
	return windowRate(s.Breaker, st.Window, now)
}
