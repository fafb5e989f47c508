// Package mocktest serves mock endpoints on 127.0.0.1 for the tests of other
// packages: a real listener, a real HTTP server, shut down (hung requests
// released first) when the test ends.
package mocktest

import (
	"context"
	"net"
	"testing"

	"github.com/switchboard-llm/switchboard/services/mock"
)

// Start serves a mock endpoint configured by cfg until the test ends and
// returns it with its base URL (http://127.0.0.1:PORT/v1).
func Start(t testing.TB, cfg mock.Config) (*mock.Server, string) {
	t.Helper()
	srv, err := mock.New(cfg)
	if err != nil {
		t.Fatalf("mock %s: %v", cfg.Name, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mock %s: listen: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("mock %s: %v", cfg.Name, err)
		}
	})
	return srv, "http://" + ln.Addr().String() + "/v1"
}
