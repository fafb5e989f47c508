package worker

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
)

// TestCallbackQueueIsBounded: when callbacks pile up faster than they go
// out, the queue stops at maxPendingCallbacks and the rest are dropped and
// counted, instead of growing without bound.
func TestCallbackQueueIsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	met, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c := newCallbacks(nil, "", log, met) // no senders: nothing leaves the queue
	const extra = 3
	for i := range maxPendingCallbacks + extra {
		c.enqueue(&events.JobRecord{ID: fmt.Sprintf("job-%d", i), CallbackURL: "http://127.0.0.1:9/hook"})
	}
	if got := c.pending(); got != maxPendingCallbacks {
		t.Errorf("%d callbacks pending, want %d", got, maxPendingCallbacks)
	}
	key := `switchboard_job_callbacks_total{result="dropped"}`
	if got := gather(t, reg, map[string]float64{key: 0})[key]; got != extra {
		t.Errorf("%s = %v, want %d", key, got, extra)
	}
	if n := strings.Count(logs.String(), "callback queue full"); n != extra {
		t.Errorf("%d log lines about dropped callbacks, want %d:\n%s", n, extra, logs.String())
	}
}
