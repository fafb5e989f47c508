package worker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// benchWorkers is the number of concurrent job handlers in both models.
const benchWorkers = 32

// encodedJobs builds n job messages (the same bytes for both models).
func encodedJobs(b *testing.B, n int, tag string) []*nats.Msg {
	b.Helper()
	msgs := make([]*nats.Msg, n)
	now := time.Now().UTC()
	for i := range msgs {
		j := &events.JobSubmitted{
			ID:          fmt.Sprintf("%s-%d-%d", tag, now.UnixNano(), i),
			Request:     []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`),
			SubmittedAt: now,
		}
		m, err := natsx.EncodeMsg("/bench", j.ID, j)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = m
	}
	return msgs
}

// submitAll publishes the jobs asynchronously, at most 1000 unacknowledged,
// and waits for every ack.
func submitAll(b *testing.B, js jetstream.JetStream, msgs []*nats.Msg) {
	b.Helper()
	for i, m := range msgs {
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if (i+1)%1000 == 0 || i == len(msgs)-1 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(2 * time.Minute):
				b.Fatal("job publishes not acknowledged")
			}
		}
	}
}

// doneCounter counts messages on switchboard.jobs.done.> (core
// subscription: it sees what the RESULTS stream stores).
func doneCounter(b *testing.B, nc *nats.Conn, want int) (wait func()) {
	b.Helper()
	done := make(chan struct{})
	var mu sync.Mutex
	seen := map[string]bool{}
	sub, err := nc.Subscribe(events.SubjectJobDoneAll, func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		seen[m.Subject] = true
		if len(seen) == want {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return func() {
		defer sub.Unsubscribe()
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			mu.Lock()
			n := len(seen)
			mu.Unlock()
			b.Fatalf("%d of %d jobs finished", n, want)
		}
	}
}

// model is one way of running jobs, set up once and measured in rounds.
type model interface {
	// round submits n jobs and returns once n have finished.
	round(b *testing.B, n int) time.Duration
}

// laneModel is the durable lane: one worker of 32 slots against one mock.
type laneModel struct{ e *env }

func newLaneModel(b *testing.B) *laneModel {
	a := startMock(b, mock.Config{Name: "a", Models: []string{"m"}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = benchWorkers
	cfg.Worker.AckWait = 30 * time.Second
	e := newEnv(b, cfg)
	e.startWorker(Options{})
	return &laneModel{e: e}
}

func (l *laneModel) round(b *testing.B, n int) time.Duration {
	msgs := encodedJobs(b, n, "lane")
	wait := doneCounter(b, l.e.nc, n)
	start := time.Now()
	submitAll(b, l.e.js, msgs)
	wait()
	return time.Since(start)
}

// bareModel is the same work modelled directly on JetStream, with the same
// server, storage and sync settings: publish a job to the work queue, pull
// it (one shared durable consumer, 32 handlers), call the mock, publish the
// response as the result (waiting for its ack), ack the job.
type bareModel struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func newBareModel(b *testing.B) *bareModel {
	a := startMock(b, mock.Config{Name: "a", Models: []string{"m"}})
	_, nc, js := natstest.Start(b)
	ctx := context.Background()
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, jetstream.ConsumerConfig{
		Durable: "bare", FilterSubject: events.SubjectJobSubmitAll, AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, MaxAckPending: 1024,
	})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(benchWorkers))
	if err != nil {
		b.Fatal(err)
	}
	client := upstream.NewClient(2 * benchWorkers)
	url := a.url + "/chat/completions"
	var wg sync.WaitGroup
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := it.Next()
				if err != nil {
					return // iterator stopped
				}
				req := gjson.GetBytes(m.Data(), "data.request").Raw
				id := gjson.GetBytes(m.Data(), "id").Str
				resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(req)))
				if err != nil {
					b.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("mock: %d", resp.StatusCode)
				}
				res := nats.NewMsg(events.JobDoneSubject(id))
				res.Header.Set(jetstream.MsgIDHeader, events.FinishedEventID(id))
				res.Data = body
				if _, err := js.PublishMsg(ctx, res); err != nil {
					b.Error(err)
					return
				}
				_ = m.Ack()
			}
		}()
	}
	b.Cleanup(func() { it.Stop(); wg.Wait() })
	return &bareModel{nc: nc, js: js}
}

func (m *bareModel) round(b *testing.B, n int) time.Duration {
	msgs := encodedJobs(b, n, "bare")
	wait := doneCounter(b, m.nc, n)
	start := time.Now()
	submitAll(b, m.js, msgs)
	wait()
	return time.Since(start)
}

// BenchmarkDurableLane: jobs per second end to end (submit -> finished
// event) through one worker with 32 slots. Run with a fixed count, e.g.
// -benchtime 3000x.
func BenchmarkDurableLane(b *testing.B) {
	m := newLaneModel(b)
	b.ResetTimer()
	b.ReportMetric(float64(b.N)/m.round(b, b.N).Seconds(), "jobs/s")
}

// BenchmarkBareJetStream: the baseline of BenchmarkDurableLane.
func BenchmarkBareJetStream(b *testing.B) {
	m := newBareModel(b)
	b.ResetTimer()
	b.ReportMetric(float64(b.N)/m.round(b, b.N).Seconds(), "jobs/s")
}

// BenchmarkDurableVsBare sets up both models and runs them in alternating
// rounds of 500 jobs (so that load from other processes hits both alike),
// b.N jobs each, and reports both rates and their ratio (target: >= 0.5).
func BenchmarkDurableVsBare(b *testing.B) {
	bare, lane := newBareModel(b), newLaneModel(b)
	b.ResetTimer()
	var tb, tl time.Duration
	for done := 0; done < b.N; {
		n := min(500, b.N-done)
		tb += bare.round(b, n)
		tl += lane.round(b, n)
		done += n
	}
	br, lr := float64(b.N)/tb.Seconds(), float64(b.N)/tl.Seconds()
	b.ReportMetric(br, "bare_jobs/s")
	b.ReportMetric(lr, "lane_jobs/s")
	b.ReportMetric(lr/br, "ratio")
}

// BenchmarkInteractive measures the worker side of the interactive lane:
// a NATS request carrying the job CloudEvent, answered by a worker that
// routes it, calls the mock and replies, beside the same call made to the
// mock directly over HTTP. The difference is what the lane adds (the
// gateway's HTTP handling is measured in the gateway package).
func BenchmarkInteractive(b *testing.B) {
	a := startMock(b, mock.Config{Name: "a", Models: []string{"m"}})
	cfg := testConfig(a.endpoint(1))
	cfg.Worker.Concurrency = benchWorkers
	e := newEnv(b, cfg)
	e.startWorker(Options{})
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}]}`)
	client := upstream.NewClient(64)
	direct := func() {
		resp, err := client.Post(a.url+"/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var seq atomic.Int64
	viaWorker := func() {
		now := time.Now().UTC()
		dl := now.Add(30 * time.Second)
		j := &events.JobSubmitted{ID: fmt.Sprintf("i-%d", seq.Add(1)), Request: body, SubmittedAt: now, Deadline: &dl}
		m, err := lane.NewRequest("/bench", j, "_INBOX.unused")
		if err != nil {
			b.Fatal(err)
		}
		m.Reply = "" // RequestMsg sets its own
		rep, err := e.nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if r, err := lane.ParseReply(rep); err != nil || r.Status != http.StatusOK {
			b.Fatalf("reply %+v: %v", r, err)
		}
	}
	for _, c := range []struct {
		name string
		fn   func()
	}{{"direct", direct}, {"worker", viaWorker}} {
		b.Run(c.name+"/serial", func(b *testing.B) {
			for range b.N {
				c.fn()
			}
		})
		b.Run(c.name+"/parallel", func(b *testing.B) {
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c.fn()
				}
			})
		})
	}
}
