package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/mock/mocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLog logs to stderr with -v and SWITCHBOARD_TEST_LOG=1, else nowhere.
func testLog() *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// mockEP is a running mock endpoint.
type mockEP struct {
	*mock.Server
	name string
	url  string // base URL, .../v1
}

// startMock runs a mock endpoint on 127.0.0.1 until the test ends.
func startMock(t testing.TB, cfg mock.Config) *mockEP {
	t.Helper()
	srv, url := mocktest.Start(t, cfg)
	return &mockEP{Server: srv, name: cfg.Name, url: url}
}

// chatCalls is how many chat completions a mock answered (any status).
func (m *mockEP) chatCalls() int64 { return m.Stats().ByRoute[mock.RouteChat] }

// endpoint is the config of a mock endpoint serving model "m".
func (m *mockEP) endpoint(tier int) config.Endpoint {
	return config.Endpoint{Name: m.name, BaseURL: m.url, Models: []string{"m"}, Weight: 1, Tier: tier}
}

// testConfig is a config for tests: tier routing (deterministic), short
// timeouts.
func testConfig(eps ...config.Endpoint) *config.Config {
	cfg := config.Default()
	cfg.Endpoints = eps
	cfg.Worker.Instance = "w1"
	cfg.Worker.Strategy = config.StrategyTier
	cfg.Worker.Concurrency = 4
	cfg.Worker.RequestTimeout = 5 * time.Second
	cfg.Worker.AckWait = 5 * time.Second
	return cfg
}

// env is a NATS server with everything provisioned plus one worker.
type env struct {
	t   testing.TB
	nc  *nats.Conn
	js  jetstream.JetStream
	cfg *config.Config
	svc *Service
}

// newEnv starts NATS (unless nc is given) and returns an env without a
// worker; start it with startWorker.
func newEnv(t testing.TB, cfg *config.Config) *env {
	t.Helper()
	_, nc, js := natstest.Start(t)
	return &env{t: t, nc: nc, js: js, cfg: cfg}
}

// startWorker runs a worker with o (Config, NC, JS filled in) until the
// test ends, and waits until it is ready.
func (e *env) startWorker(o Options) *Service {
	e.t.Helper()
	svc, stop := e.runWorker(o)
	e.t.Cleanup(stop)
	if e.svc == nil {
		e.svc = svc
	}
	return svc
}

// runWorker runs a worker with o (Config, NC, JS and Log filled in) and
// waits until it is ready; stop ends its Run and waits for it (10 s at
// most), failing the test if Run failed.
func (e *env) runWorker(o Options) (svc *Service, stop func()) {
	e.t.Helper()
	if o.Config == nil {
		o.Config = e.cfg
	}
	o.NC, o.JS = e.nc, e.js
	if o.Log == nil {
		o.Log = testLog()
	}
	svc, err := New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("worker Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				e.t.Error("worker Run did not return within 10s of its ctx ending")
			}
		})
	}
	select {
	case <-svc.Ready():
	case err := <-done:
		e.t.Fatalf("worker stopped before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		e.t.Fatal("worker not ready after 20s")
	}
	return svc, stop
}

var jobSeq atomic.Int64

// newJob is a job for model "m" with a unique id.
func newJob(t testing.TB) *events.JobSubmitted {
	return &events.JobSubmitted{
		ID:          fmt.Sprintf("job-%s-%d", sanitize(t.Name()), jobSeq.Add(1)),
		Request:     json.RawMessage(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`),
		SubmittedAt: time.Now().UTC(),
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	if len(b) > 60 {
		b = b[len(b)-60:]
	}
	return string(b)
}

// submit publishes a durable job and waits for the ack.
func (e *env) submit(job *events.JobSubmitted) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := (natsx.Publisher{JS: e.js, Source: "/test"}).Publish(ctx, job.ID, job); err != nil {
		e.t.Fatalf("submit %s: %v", job.ID, err)
	}
}

// finished waits for the finished event of job id and returns its record.
func (e *env) finished(id string, timeout time.Duration) events.JobRecord {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), events.StreamResults)
	if err != nil {
		e.t.Fatal(err)
	}
	var rec events.JobRecord
	natstest.WaitFor(e.t, timeout, "finished event of "+id, func() bool {
		m, err := s.GetLastMsgForSubject(context.Background(), events.JobDoneSubject(id))
		if err != nil {
			return false
		}
		env, err := events.Decode(m.Data)
		if err != nil {
			e.t.Fatalf("finished event of %s: %v", id, err)
		}
		rec = env.Data.(*events.JobFinished).JobRecord
		return true
	})
	return rec
}

// finishedCount counts the finished events of job id.
func (e *env) finishedCount(id string) uint64 {
	e.t.Helper()
	return e.subjectCount(events.StreamResults, events.JobDoneSubject(id))
}

func (e *env) subjectCount(stream, subject string) uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), stream)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// record reads the job record of id.
func (e *env) record(id string) (events.JobRecord, bool) {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), events.BucketJobs)
	if err != nil {
		e.t.Fatal(err)
	}
	r := records{kv: kv}
	rec, _, found, err := r.get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return rec, found
}

// outcomes waits until at least want request outcomes were stored for
// endpoint (they are published asynchronously, interactive ones after the
// reply) and returns every one.
func (e *env) outcomes(endpoint string, want uint64) []*events.RequestOutcome {
	e.t.Helper()
	natstest.WaitFor(e.t, 10*time.Second, "outcome events of "+endpoint, func() bool {
		return e.subjectCount(events.StreamHealth, events.OutcomeSubject(endpoint)) >= want
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := e.js.OrderedConsumer(ctx, events.StreamHealth, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.OutcomeSubject(endpoint)}})
	if err != nil {
		e.t.Fatal(err)
	}
	n := e.subjectCount(events.StreamHealth, events.OutcomeSubject(endpoint))
	var out []*events.RequestOutcome
	for uint64(len(out)) < n {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			e.t.Fatalf("read outcomes of %s: %v", endpoint, err)
		}
		env, err := events.Decode(m.Data())
		if err != nil {
			e.t.Fatalf("outcome event: %v", err)
		}
		out = append(out, env.Data.(*events.RequestOutcome))
	}
	return out
}

// putState writes an endpoint record as the evaluator would.
func (e *env) putState(st events.EndpointState) {
	e.t.Helper()
	kv, err := e.js.KeyValue(context.Background(), events.BucketEndpoints)
	if err != nil {
		e.t.Fatal(err)
	}
	st.Revision = 0
	b, _ := json.Marshal(st)
	if _, err := kv.Put(context.Background(), st.Endpoint, b); err != nil {
		e.t.Fatal(err)
	}
}

// collector records what an HTTP handler received (callbacks).
type collector struct {
	mu   sync.Mutex
	reqs []capturedReq
}

type capturedReq struct {
	header map[string]string
	body   []byte
}

func (c *collector) add(h map[string]string, r io.Reader) {
	b, _ := io.ReadAll(r)
	c.mu.Lock()
	c.reqs = append(c.reqs, capturedReq{h, b})
	c.mu.Unlock()
}

func (c *collector) all() []capturedReq {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]capturedReq(nil), c.reqs...)
}

var errTest = errors.New("test")

// fmtSscanf parses a Switchboard-Signature value.
func fmtSscanf(s string, ts *int64, sig *string) (int, error) {
	return fmt.Sscanf(s, "t=%d,v1=%s", ts, sig)
}
