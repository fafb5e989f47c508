package gateway

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

// TestShutdown checks that Run returns promptly with nil when its context
// ends, answering long-polls with what it has and ending event streams.
func TestShutdown(t *testing.T) {
	_, nc, js := natstest.Start(t)
	cfg := testConfig(t, "", false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Config: cfg, NC: nc, JS: js, Listener: ln}
	gw, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	e, cancel, done := runGateway(t, gw, o)
	if r := e.do(t, "POST", "/v1/jobs", "", jobBody(t, nil), "Idempotency-Key", "slow"); r.status != http.StatusAccepted {
		t.Fatal(r)
	}
	poll := make(chan response, 1)
	go func() { poll <- e.do(t, "GET", "/v1/jobs/slow?wait=60s", "", nil) }()
	sse := e.openSSE(t, "/v1/events")
	// Give both requests time to reach their handlers: the long-poll is
	// there once its watch consumer exists.
	natstest.WaitFor(t, 5*time.Second, "the long-poll's watch", func() bool {
		info, err := gw.jobs.KV.Status(context.Background())
		return err == nil && consumers(t, e, "KV_"+info.Bucket()) > 0
	})

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	if r := <-poll; r.status != http.StatusOK || decodeRecord(t, r).Status != "queued" {
		t.Errorf("long-poll at shutdown: %s", r)
	}
	if _, err := sse.next(); err == nil {
		t.Error("the event stream is still open after shutdown")
	}
}

func consumers(t testing.TB, e *testEnv, stream string) int {
	s, err := e.js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// TestShutdownCutsLongCalls: an interactive call longer than the shutdown
// grace is cut when the grace is over (the workers are told to stop it),
// and Run returns nil (a clean exit) only after every handler returned, so
// that no handler outlives the inbox and connection it uses.
func TestShutdownCutsLongCalls(t *testing.T) {
	_, nc, js := natstest.Start(t)
	cfg := testConfig(t, "", false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Config: cfg, NC: nc, JS: js, Listener: ln, RequestTimeout: time.Minute, ShutdownGrace: 300 * time.Millisecond}
	gw, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	// The chat handler, once done, holds on until released: Run must wait.
	inner, finished, release := gw.handler, make(chan struct{}), make(chan struct{})
	gw.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		if r.URL.Path == "/v1/chat/completions" {
			close(finished)
			<-release
		}
	})
	e, cancel, done := runGateway(t, gw, o)
	fw := startScripted(t, e)
	call := make(chan error, 1)
	go func() {
		resp, err := http.Post(e.url+"/v1/chat/completions", "application/json", bytes.NewReader(chatBody("mock-small", "hang", false)))
		if err == nil {
			resp.Body.Close()
		}
		call <- err
	}()
	natstest.WaitFor(t, 5*time.Second, "the call at the worker", func() bool { return len(fw.received()) == 1 })

	cancel()
	select {
	case <-finished: // the grace ended and the call was cut
	case <-time.After(10 * time.Second):
		t.Fatal("the call was not cut within 10 s of the shutdown")
	}
	natstest.WaitFor(t, 5*time.Second, "the workers told to stop the call", func() bool { return len(fw.cancelled()) == 1 })
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while a handler was still running", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v, want nil after cutting the call", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of the last handler")
	}
	<-call
}
