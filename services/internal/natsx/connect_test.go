package natsx_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// authServer runs a nats-server that requires opts' credentials.
func authServer(t *testing.T, edit func(*server.Options)) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true}
	edit(opts)
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s.ClientURL()
}

func TestConnectAuthenticates(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	userURL := authServer(t, func(o *server.Options) { o.Username, o.Password = "svc", "s3cret-pass" })
	tokenURL := authServer(t, func(o *server.Options) { o.Authorization = "t0ken-value" })
	tests := []struct {
		name   string
		cfg    config.NATS
		ok     bool
		secret string
	}{
		{"user and password", config.NATS{URL: userURL, User: "svc", Password: "s3cret-pass"}, true, ""},
		{"wrong password", config.NATS{URL: userURL, User: "svc", Password: "wrong-pass-123"}, false, "wrong-pass-123"},
		{"no credentials", config.NATS{URL: userURL}, false, ""},
		{"token", config.NATS{URL: tokenURL, Token: "t0ken-value"}, true, ""},
		{"wrong token", config.NATS{URL: tokenURL, Token: "bad-t0ken-xyz"}, false, "bad-t0ken-xyz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			nc, err := natsx.Connect(ctx, tt.cfg, "test", log)
			if tt.ok {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer nc.Close()
				if err := nc.Publish("x", nil); err != nil || nc.Flush() != nil {
					t.Errorf("publish on an authenticated connection: %v", err)
				}
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded with bad credentials")
			}
			if !strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("error %q does not name the server", err)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q leaks the secret", err)
			}
		})
	}
}
