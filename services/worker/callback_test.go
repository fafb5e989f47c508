package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// callbacksQueued is how many callbacks wait in SWITCHBOARD_CALLBACKS.
func (e *env) callbacksQueued() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), events.StreamCallbacks)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

// TestCallbackGivesUp: a receiver that keeps failing with a status worth
// retrying gets callbackTries POSTs, one that refuses the callback (4xx)
// gets one; then the callback is counted failed and leaves the queue.
func TestCallbackGivesUp(t *testing.T) {
	for _, tc := range []struct {
		status, posts int
	}{
		{http.StatusServiceUnavailable, callbackTries},
		{http.StatusBadRequest, 1},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
			var posts atomic.Int32
			hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				w.WriteHeader(tc.status)
			}))
			defer hook.Close()
			e := newEnv(t, testConfig(a.endpoint(1)))
			reg := prometheus.NewRegistry()
			e.startWorker(Options{Registerer: reg, callbackBackoff: 10 * time.Millisecond})
			job := newJob(t)
			job.CallbackURL = hook.URL
			e.submit(job)
			e.finished(job.ID, 10*time.Second)
			natstest.WaitFor(t, 10*time.Second, "the callback to leave the queue", func() bool {
				return posts.Load() > 0 && e.callbacksQueued() == 0
			})
			if got := int(posts.Load()); got != tc.posts {
				t.Errorf("%d POSTs, want %d", got, tc.posts)
			}
			want := map[string]float64{
				`switchboard_job_callbacks_total{result="failed"}`:    1,
				`switchboard_job_callbacks_total{result="retried"}`:   float64(tc.posts - 1),
				`switchboard_job_callbacks_total{result="delivered"}`: 0,
			}
			if diff := cmp.Diff(want, gather(t, reg, want)); diff != "" {
				t.Errorf("metrics (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCallbackSurvivesItsWorker: a worker that stops while its callback
// POST hangs hands the callback back; another worker delivers it, with the
// same event id.
func TestCallbackSurvivesItsWorker(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	var col collector
	var posts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		col.add(map[string]string{"id": r.Header.Get(HeaderEventID)}, r.Body)
		if posts.Add(1) == 1 {
			<-r.Context().Done() // hang until the worker gives up on it
			return
		}
	}))
	defer hook.Close()
	e := newEnv(t, testConfig(a.endpoint(1)))

	_, stop := e.runWorker(Options{ShutdownGrace: 100 * time.Millisecond})
	job := newJob(t)
	job.CallbackURL = hook.URL + "/done"
	e.submit(job)
	e.finished(job.ID, 10*time.Second)
	natstest.WaitFor(t, 10*time.Second, "the first POST", func() bool { return posts.Load() == 1 })
	stop()
	if n := e.callbacksQueued(); n != 1 {
		t.Fatalf("%d callbacks queued after the first worker stopped, want 1", n)
	}

	reg := prometheus.NewRegistry()
	e.startWorker(Options{Registerer: reg})
	natstest.WaitFor(t, 10*time.Second, "the callback delivered by the second worker", func() bool {
		return posts.Load() == 2 && e.callbacksQueued() == 0
	})
	for i, r := range col.all() {
		if r.header["id"] != events.FinishedEventID(job.ID) {
			t.Errorf("POST %d: event id %q", i, r.header["id"])
		}
	}
	want := map[string]float64{`switchboard_job_callbacks_total{result="delivered"}`: 1}
	if diff := cmp.Diff(want, gather(t, reg, want)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

// TestUndecodableCallbackIsDeadLettered: anything else published on a
// callback subject is copied to the dead-letter stream with the reason and
// removed; the worker goes on delivering real callbacks.
func TestUndecodableCallbackIsDeadLettered(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	var posts atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { posts.Add(1) }))
	defer hook.Close()
	e := newEnv(t, testConfig(a.endpoint(1)))
	e.startWorker(Options{})
	bad := natsx.NewMsg(events.JobCallbackSubject("junk-1"), "junk-1", []byte("not an event"))
	if _, err := e.js.PublishMsg(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	job := newJob(t)
	job.CallbackURL = hook.URL
	e.submit(job)
	dead := events.DeadSubject("callbacks", "junk-1")
	natstest.WaitFor(t, 10*time.Second, "the dead letter and the real callback", func() bool {
		return e.subjectCount(events.StreamDLQ, dead) == 1 && posts.Load() == 1 && e.callbacksQueued() == 0
	})
	s, _ := e.js.Stream(context.Background(), events.StreamDLQ)
	m, err := s.GetLastMsgForSubject(context.Background(), dead)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Header.Get(natsx.HeaderDeadReason); !strings.Contains(r, "undecodable callback") || string(m.Data) != "not an event" {
		t.Errorf("dead letter: reason %q, body %q", r, m.Data)
	}
}
