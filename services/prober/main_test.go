package prober

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/mock/mocktest"
)

func TestMain(m *testing.M) {
	// The benchmark runs the mock endpoint and NATS in child processes of
	// this test binary, so that their CPU is not counted as the prober's.
	switch os.Getenv(benchChildEnv) {
	case childMock:
		os.Exit(runChildMock())
	case childNATS, childNATSNoSync:
		os.Exit(runChildNATS(os.Getenv(benchChildEnv) == childNATSNoSync))
	}
	goleak.VerifyTestMain(m)
}

// testKey is the API key of the test endpoints: no result, log line or
// error may contain it.
const testKey = "sk-test-0123456789-SECRET-abcdef"

const testVantage = "vt1"

// newMock serves a mock endpoint on 127.0.0.1 and returns it with its base
// URL. Cleanup releases hung requests before the HTTP server closes.
func newMock(t testing.TB, cfg mock.Config) (*mock.Server, string) {
	t.Helper()
	return mocktest.Start(t, cfg)
}

// newHandlerServer serves h on 127.0.0.1 and returns its base URL.
func newHandlerServer(t testing.TB, h http.Handler) string {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts.URL + "/v1"
}

// refusedURL is a base URL on a port nothing listens on.
func refusedURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/v1"
}

// testEndpoint is an endpoint with the test key, the mock's models, a
// health path, a 1 s interval and a 500 ms timeout.
func testEndpoint(name, base string, kinds ...events.ProbeKind) config.Endpoint {
	ep := config.Endpoint{
		Name:          name,
		BaseURL:       base,
		APIKey:        testKey,
		Models:        []string{"mock-small"},
		HealthPath:    "/health",
		CheckInterval: time.Second,
		Timeout:       500 * time.Millisecond,
	}
	for _, k := range kinds {
		ep.Probes = append(ep.Probes, string(k))
	}
	return ep
}

// testConfig is a validated config of eps with the completion probe on.
func testConfig(t testing.TB, eps ...config.Endpoint) *config.Config {
	t.Helper()
	cfg := config.Default()
	cfg.Endpoints = eps
	cfg.Prober.Vantage = testVantage
	cfg.Prober.Completion.Enabled = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// logBuffer is a goroutine-safe buffer behind a debug-level slog handler.
type logBuffer struct{ natstest.Buffer }

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startProber runs p until the test ends (or stop is called) and checks
// that Run returns nil.
func startProber(t testing.TB, p *Prober) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Run did not return within 15s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// seeded is a deterministic Rand for the scheduler.
func seeded() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

// zeroSource always draws 0: first probes start at once, and every
// interval is the shortest the jitter allows.
type zeroSource struct{}

func (zeroSource) Uint64() uint64 { return 0 }

// probeEvent is one probe result read from the SWITCHBOARD_HEALTH stream.
type probeEvent struct {
	raw []byte
	env *events.Envelope
	res *events.ProbeResult
}

// probeReader reads the probe results of one endpoint from the stream, in
// order, decoding each with schema validation.
type probeReader struct {
	t    testing.TB
	cons jetstream.Consumer
}

func newProbeReader(t testing.TB, js jetstream.JetStream, endpoint string) *probeReader {
	t.Helper()
	return newSubjectReader(t, js, events.ProbeSubject(endpoint))
}

// newSubjectReader reads the probe results on subject (a filter).
func newSubjectReader(t testing.TB, js jetstream.JetStream, subject string) *probeReader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, events.StreamHealth, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
	})
	if err != nil {
		t.Fatalf("ordered consumer on %s: %v", subject, err)
	}
	return &probeReader{t: t, cons: cons}
}

// next returns the next result, failing the test after wait.
func (r *probeReader) next(wait time.Duration) probeEvent {
	r.t.Helper()
	msg, err := r.cons.Next(jetstream.FetchMaxWait(wait))
	if err != nil {
		r.t.Fatalf("no probe result within %s: %v", wait, err)
	}
	env, err := events.Decoder{Schema: schemas.Validate}.Decode(msg.Data())
	if err != nil {
		r.t.Fatalf("decode probe result %s: %v", msg.Data(), err)
	}
	res, ok := env.Data.(*events.ProbeResult)
	if !ok {
		r.t.Fatalf("event %s is a %T, want *events.ProbeResult", env.ID, env.Data)
	}
	if got := msg.Headers().Get(jetstream.MsgIDHeader); got != env.ID {
		r.t.Errorf("Nats-Msg-Id %q, want the event id %q", got, env.ID)
	}
	return probeEvent{raw: msg.Data(), env: env, res: res}
}

// counterValue reads a counter or gauge.
func counterValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

func ptr[T any](v T) *T { return &v }
