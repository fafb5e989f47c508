package gateway

import (
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
	gw, err := New(Options{Config: cfg, NC: nc, JS: js, Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	e := &testEnv{nc: nc, js: js, url: "http://" + ln.Addr().String(), gw: gw, cfg: cfg}
	natstest.WaitFor(t, 10*time.Second, "gateway ready", func() bool {
		resp, err := http.Get(e.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
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
