package stack_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/stack"
)

// startDev runs the stack as `switchboard dev` does (built-in mocks, dev
// timings) on a free port, and returns its NATS URL.
func startDev(t *testing.T, tweak ...func(*config.Config)) (*stack.Stack, string) {
	t.Helper()
	var out natstest.Buffer
	cfg := config.Default()
	cfg.Gateway.Listen = "127.0.0.1:0"
	st, err := stack.New(stack.Options{Config: cfg, NATSListen: "127.0.0.1:0", StoreDir: t.TempDir(), Out: &out, DevTimings: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tweak {
		f(st.Config())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack stopped with %v", err)
		}
	})
	var url string
	natstest.WaitFor(t, 30*time.Second, "the banner", func() bool {
		for _, line := range strings.Split(out.String(), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "nats" {
				url = f[1]
				return true
			}
		}
		return false
	})
	return st, url
}

// TestDevProbesEveryMockWithin10s is the first-run experience of issue 2: a
// subscriber on switchboard.probe.> receives valid probe CloudEvents for
// each mock endpoint within 10 s, with fails for the flaky one.
func TestDevProbesEveryMockWithin10s(t *testing.T) {
	start := time.Now()
	_, url := startDev(t)
	nc := natstest.Connect(t, url)
	var mu sync.Mutex
	seen := map[string]map[events.ProbeOutcome]int{}
	var bad []string
	sub, err := nc.Subscribe(events.SubjectProbeAll, func(m *nats.Msg) {
		env, err := events.Decoder{Schema: schemas.Validate}.Decode(m.Data)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			bad = append(bad, err.Error())
			return
		}
		if ct := m.Header.Get("Content-Type"); ct != events.ContentType {
			bad = append(bad, "content type "+ct)
		}
		p := env.Data.(*events.ProbeResult)
		if m.Header.Get("Nats-Msg-Id") != env.ID || !strings.HasPrefix(env.Source, "/prober/") || m.Subject != events.ProbeSubject(p.Endpoint) {
			bad = append(bad, "envelope "+env.ID+" "+env.Source+" on "+m.Subject)
		}
		if seen[p.Endpoint] == nil {
			seen[p.Endpoint] = map[events.ProbeOutcome]int{}
		}
		seen[p.Endpoint][p.Outcome]++
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	natstest.WaitFor(t, 10*time.Second-time.Since(start), "probe events for fast, slow and a failing flaky", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["fast"]) > 0 && len(seen["slow"]) > 0 && seen["flaky"][events.ProbeFail] > 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("invalid probe events: %v", bad)
	}
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), seen)
}

// TestRunReleasesTheGatewayPortWhenAdminCannotListen: when the admin port
// is taken, Run fails before anything runs and leaves no port bound.
func TestRunReleasesTheGatewayPortWhenAdminCannotListen(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gatewayAddr := free.Addr().String()
	free.Close()

	cfg := config.Default()
	cfg.Gateway.Listen = gatewayAddr
	st, err := stack.New(stack.Options{Config: cfg, NATSListen: "127.0.0.1:0", StoreDir: t.TempDir(), AdminListen: taken.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "admin listen") {
		t.Fatalf("Run: %v, want the admin listen error", err)
	}
	ln, err := net.Listen("tcp", gatewayAddr)
	if err != nil {
		t.Fatalf("the gateway's port is still bound after Run failed: %v", err)
	}
	ln.Close()
}
