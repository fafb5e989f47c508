package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// stack is the real interactive path: a mock endpoint, a request worker
// and the gateway, each with its own NATS connection to one server.
type stack struct {
	*testEnv
	mock    *mock.Server
	mockURL string // base URL, .../v1
}

// startStack runs a mock endpoint with no faults behind both configured
// endpoints, a worker and a gateway on 127.0.0.1.
func startStack(t testing.TB, auth bool) *stack {
	t.Helper()
	m, err := mock.New(mock.Config{Name: "m1", Models: []string{"mock-small", "mock-large"}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(context.Background())
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(mctx, ln) }()
	t.Cleanup(func() {
		mcancel()
		if err := <-mdone; err != nil {
			t.Errorf("mock: %v", err)
		}
	})
	mockURL := "http://" + ln.Addr().String() + "/v1"
	cfg := testConfig(t, mockURL, auth)

	srv, nc, js := natstest.Start(t)
	wnc := natstest.Connect(t, srv.ClientURL())
	w, err := worker.New(worker.Options{Config: cfg, NC: wnc, JS: natstest.JetStream(t, wnc)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() { wdone <- w.Run(wctx) }()
	t.Cleanup(func() {
		wcancel()
		if err := <-wdone; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	select {
	case <-w.Ready():
	case err := <-wdone:
		t.Fatalf("worker ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("worker not ready after 30 s")
	}
	return &stack{testEnv: startGatewayOn(t, nc, js, cfg), mock: m, mockURL: mockURL}
}
