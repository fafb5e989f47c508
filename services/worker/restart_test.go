package worker

import (
	"context"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestServerRestart: a worker keeps running durable jobs and interactive
// calls across a restart of its (single) NATS server, the `switchboard dev`
// case: its pull requests, endpoint watch and subscriptions come back with
// the connection, and every job finishes exactly once.
func TestServerRestart(t *testing.T) {
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"}})
	srv, restart := natstest.Restartable(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js := natstest.JetStream(t, nc)
	natstest.Provision(t, js, 1)
	e := &env{t: t, nc: nc, js: js, cfg: testConfig(a.endpoint(1))}
	e.startWorker(Options{})

	var ids []string
	submit := func(n int) {
		for range n {
			job := newJob(t)
			ids = append(ids, job.ID)
			natstest.WaitFor(t, 30*time.Second, "JetStream to take job "+job.ID, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_, err := (natsx.Publisher{JS: js, Source: "/test"}).Publish(ctx, job.ID, job)
				return err == nil
			})
		}
	}
	submit(10)
	for _, id := range ids {
		e.finished(id, 10*time.Second)
	}

	srv.Shutdown()
	restart()

	submit(10)
	for _, id := range ids {
		if rec := e.finished(id, 30*time.Second); rec.Status != events.JobSucceeded {
			t.Errorf("job %s: %s", id, rec.Status)
		}
		if n := e.finishedCount(id); n != 1 {
			t.Errorf("job %s: %d finished events", id, n)
		}
	}
	// The connection is back (the jobs above ran), so the call's reply
	// comes; a lost one would fail the test after 5 s.
	if r := e.call(interactiveJob(t, false), 5*time.Second); len(r) != 1 || r[0].Status != 200 {
		t.Errorf("interactive call after the restart: %+v", r)
	}
}
