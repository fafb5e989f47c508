// Package e2e holds full-system end-to-end tests: real embedded NATS
// (clusters included), real mock endpoints over HTTP, the real evaluator
// and workers, and real worker processes killed with SIGKILL.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/gateway"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/mock/mocktest"
	"github.com/switchboard-llm/switchboard/services/worker"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChildWorker) != "" {
		os.Exit(childWorker())
	}
	if os.Getenv(envChildNATSListen) != "" {
		os.Exit(childNATS())
	}
	goleak.VerifyTestMain(m)
}

func testLog() *slog.Logger {
	if os.Getenv("SWITCHBOARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// mockEP is a running mock endpoint.
type mockEP struct {
	*mock.Server
	name, url string
}

func startMock(t testing.TB, cfg mock.Config) *mockEP {
	t.Helper()
	srv, url := mocktest.Start(t, cfg)
	return &mockEP{Server: srv, name: cfg.Name, url: url}
}

func (m *mockEP) endpoint() config.Endpoint {
	return config.Endpoint{Name: m.name, BaseURL: m.url, Models: []string{"m"}}
}

// connect connects to urls until the test ends.
func connect(t testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// newJobs builds n job messages for model "m".
func newJobs(t testing.TB, n int, prefix string, edit ...func(*events.JobSubmitted)) ([]*nats.Msg, []string) {
	t.Helper()
	msgs := make([]*nats.Msg, n)
	ids := make([]string, n)
	now := time.Now().UTC()
	for i := range msgs {
		j := &events.JobSubmitted{
			ID:          fmt.Sprintf("%s-%05d", prefix, i),
			Request:     json.RawMessage(fmt.Sprintf(`{"model":"m","messages":[{"role":"user","content":"job %d"}]}`, i)),
			SubmittedAt: now,
		}
		for _, f := range edit {
			f(j)
		}
		m, err := natsx.EncodeMsg("/e2e", j.ID, j)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i], ids[i] = m, j.ID
	}
	return msgs, ids
}

// submit publishes the jobs and waits for every ack (a job is accepted only
// once JetStream acknowledged it).
func submit(t testing.TB, js jetstream.JetStream, msgs []*nats.Msg) {
	t.Helper()
	const window = 500 // acks outstanding at most
	for len(msgs) > 0 {
		k := min(window, len(msgs))
		var futs []jetstream.PubAckFuture
		for _, m := range msgs[:k] {
			f, err := js.PublishMsgAsync(m)
			if err != nil {
				t.Fatal(err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				t.Fatalf("submit %s: %v", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
			case <-time.After(time.Minute):
				t.Fatal("submit: no ack after a minute")
			}
		}
		msgs = msgs[k:]
	}
}

// doneWatcher counts finished events as they are published (a core
// subscription on switchboard.jobs.done.>).
type doneWatcher struct {
	sub  *nats.Subscription
	mu   sync.Mutex
	seen map[string]int
}

func watchDone(t testing.TB, nc *nats.Conn) *doneWatcher {
	t.Helper()
	w := &doneWatcher{seen: map[string]int{}}
	sub, err := nc.Subscribe(events.SubjectJobDoneAll, func(m *nats.Msg) {
		w.mu.Lock()
		w.seen[strings.TrimPrefix(m.Subject, "switchboard.jobs.done.")]++
		w.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	w.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

func (w *doneWatcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen)
}

// results reads the whole RESULTS stream: the finished record of each job
// and how many finished events each job has.
func results(t testing.TB, js jetstream.JetStream) (map[string]events.JobRecord, map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var s jetstream.Stream
	var info *jetstream.StreamInfo
	var cons jetstream.Consumer
	retry(t, ctx, "read the results stream", func() (err error) {
		if s, err = js.Stream(ctx, events.StreamResults); err != nil {
			return err
		}
		if info, err = s.Info(ctx); err != nil {
			return err
		}
		cons, err = s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		return err
	})
	recs := map[string]events.JobRecord{}
	counts := map[string]int{}
	for n := uint64(0); n < info.State.Msgs; {
		var batch jetstream.MessageBatch
		retry(t, ctx, "fetch", func() (err error) {
			batch, err = cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
			return err
		})
		for m := range batch.Messages() {
			n++
			env, err := events.Decode(m.Data())
			if err != nil {
				t.Fatalf("finished event: %v", err)
			}
			rec := env.Data.(*events.JobFinished).JobRecord
			counts[rec.ID]++
			recs[rec.ID] = rec
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrNoResponders) {
			t.Fatal(err)
		}
	}
	return recs, counts
}

// records reads every job record in KV.
func records(t testing.TB, js jetstream.JetStream) map[string]events.JobRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var w jetstream.KeyWatcher
	retry(t, ctx, "watch the job records", func() error {
		kv, err := js.KeyValue(ctx, events.BucketJobs)
		if err != nil {
			return err
		}
		w, err = kv.WatchAll(ctx)
		return err
	})
	defer w.Stop()
	out := map[string]events.JobRecord{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		var rec events.JobRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatalf("record %s: %v", e.Key(), err)
		}
		out[e.Key()] = rec
	}
	return out
}

// outcome is a request outcome with the worker that published it.
type outcome struct {
	*events.RequestOutcome
	worker string
}

// outcomes reads every request outcome of endpoint.
func outcomes(t testing.TB, js jetstream.JetStream, endpoint string) []outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	subj := events.OutcomeSubject(endpoint)
	var want uint64
	var cons jetstream.Consumer
	retry(t, ctx, "read the outcomes of "+endpoint, func() error {
		s, err := js.Stream(ctx, events.StreamHealth)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return err
		}
		want = info.State.Subjects[subj]
		cons, err = s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
		return err
	})
	var out []outcome
	for uint64(len(out)) < want {
		var batch jetstream.MessageBatch
		retry(t, ctx, "fetch", func() (err error) {
			batch, err = cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
			return err
		})
		for m := range batch.Messages() {
			env, err := events.Decode(m.Data())
			if err != nil {
				t.Fatalf("outcome event: %v", err)
			}
			out = append(out, outcome{env.Data.(*events.RequestOutcome), strings.TrimPrefix(env.Source, "/worker/")})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrNoResponders) {
			t.Fatal(err)
		}
	}
	return out
}

// retry runs op until it succeeds: in a loaded cluster a JetStream API
// request may find no responder for a moment (a leader election).
func retry(t testing.TB, ctx context.Context, what string, op func() error) {
	t.Helper()
	for {
		err := op()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %v; retrying", what, err)
		time.Sleep(200 * time.Millisecond)
	}
}

// finishedCount is how many finished events SWITCHBOARD_RESULTS holds (-1
// while it cannot be read). Unlike a subscription, it misses none published
// while a connection moves to another node.
func finishedCount(js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamResults)
	if err != nil {
		return -1
	}
	return int(s.CachedInfo().State.Msgs)
}

// checkExactlyOnce checks that every job of ids succeeded with exactly one
// finished event equal to its record, and returns how many of them were
// delivered more than once.
func checkExactlyOnce(t *testing.T, js jetstream.JetStream, ids []string) (redelivered int) {
	t.Helper()
	fin, counts := results(t, js)
	recs := records(t, js)
	for _, id := range ids {
		f, r := fin[id], recs[id]
		if counts[id] != 1 || f.Status != events.JobSucceeded {
			t.Errorf("job %s: %d finished events, status %q", id, counts[id], f.Status)
			continue
		}
		if diff := cmp.Diff(f, r); diff != "" {
			t.Errorf("job %s: finished event and record differ (-event +record):\n%s", id, diff)
		}
		if r.Deliveries > 1 {
			redelivered++
		}
	}
	return redelivered
}

// runWorker runs a worker with o (Log filled in) until the test ends and
// waits until it is ready.
func runWorker(t *testing.T, o worker.Options) *worker.Service {
	t.Helper()
	if o.Log == nil {
		o.Log = testLog()
	}
	w, err := worker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "worker "+o.Config.Worker.Instance, w.Run)
	select {
	case <-w.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("worker not ready after 30s")
	}
	return w
}

// runEvaluator runs an evaluator until the test ends.
func runEvaluator(t *testing.T, cfg *config.Config, nc *nats.Conn, js jetstream.JetStream) {
	t.Helper()
	ev, err := evaluator.New(evaluator.Options{Config: cfg, NC: nc, JS: js, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, "evaluator", ev.Run)
}

// runGateway runs a gateway on 127.0.0.1 until the test ends, waits until
// it is ready and returns its base URL.
func runGateway(t *testing.T, cfg *config.Config, nc *nats.Conn, js jetstream.JetStream) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Options{Config: cfg, NC: nc, JS: js, Log: testLog(), Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	run(t, "gateway", g.Run)
	base := "http://" + ln.Addr().String()
	natstest.WaitFor(t, 10*time.Second, "gateway ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return base
}
