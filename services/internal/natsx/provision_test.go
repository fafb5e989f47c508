package natsx_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

func checkTopology(t *testing.T, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx := context.Background()
	for _, want := range natsx.Streams(natstest.NATSConfig(replicas)) {
		s, err := js.Stream(ctx, want.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", want.Name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatalf("stream %s info: %v", want.Name, err)
		}
		got := info.Config
		if diff := cmp.Diff(want.Subjects, got.Subjects); diff != "" {
			t.Errorf("stream %s subjects (-want +got):\n%s", want.Name, diff)
		}
		if got.Replicas != replicas || got.Retention != want.Retention || got.Storage != jetstream.FileStorage {
			t.Errorf("stream %s: replicas %d retention %v storage %v, want %d %v file",
				want.Name, got.Replicas, got.Retention, got.Storage, replicas, want.Retention)
		}
		if got.Duplicates != want.Duplicates {
			t.Errorf("stream %s: duplicate window %s, want %s", want.Name, got.Duplicates, want.Duplicates)
		}
		if replicas > 1 && (info.Cluster == nil || len(info.Cluster.Replicas) != replicas-1) {
			t.Errorf("stream %s: cluster info %+v, want %d peers", want.Name, info.Cluster, replicas-1)
		}
	}
	for _, b := range []string{events.BucketEndpoints, events.BucketJobs} {
		kv, err := js.KeyValue(ctx, b)
		if err != nil {
			t.Fatalf("bucket %s: %v", b, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatalf("bucket %s status: %v", b, err)
		}
		if got := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; got != replicas {
			t.Errorf("bucket %s replicas = %d, want %d", b, got, replicas)
		}
	}
}

func TestProvisionSingleNodeIsIdempotent(t *testing.T) {
	_, _, js := natstest.Start(t)
	natstest.Provision(t, js, 1) // second time: no error, no change
	checkTopology(t, js, 1)
	kv, err := js.KeyValue(context.Background(), events.BucketJobs)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := kv.Status(context.Background())
	if got, want := st.TTL(), 24*time.Hour; got != want {
		t.Errorf("jobs TTL = %s, want %s", got, want)
	}
}

// TestJobOnUnknownPriorityIsRefused: the job stream takes only the
// priorities the workers serve, so a job published on another token is
// refused at publish time instead of acknowledged and never run.
func TestJobOnUnknownPriorityIsRefused(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "switchboard.jobs.submit.urgent", []byte("{}")); err == nil {
		t.Error("a job on priority \"urgent\" was acknowledged")
	}
	if _, err := js.Publish(ctx, events.JobSubmitSubject(events.PriorityLow), []byte("{}")); err != nil {
		t.Errorf("a job on priority low: %v", err)
	}
}

func TestProvisionThreeNodeCluster(t *testing.T) {
	servers := natstest.RunCluster(t, 3)
	// Provision from two different nodes at once, as replicas of services do.
	errs := make(chan error, 2)
	for _, s := range servers[:2] {
		nc := natstest.Connect(t, s.ClientURL())
		js := natstest.JetStream(t, nc)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs <- natsx.Provision(ctx, js, natstest.NATSConfig(3))
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("provision: %v", err)
		}
	}
	nc := natstest.Connect(t, servers[2].ClientURL())
	js := natstest.JetStream(t, nc)
	checkTopology(t, js, 3)

	// A job published through one node is acknowledged by the R3 stream.
	p := natsx.Publisher{JS: js, Source: "/test"}
	job := &events.JobSubmitted{ID: "j1", Request: []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`), SubmittedAt: time.Now()}
	ack, err := p.Publish(context.Background(), job.ID, job)
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != events.StreamJobs || ack.Duplicate {
		t.Errorf("ack = %+v, want stream %s, not a duplicate", ack, events.StreamJobs)
	}
	ack, err = p.Publish(context.Background(), job.ID, job)
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("second publish of the same job id was not a duplicate: %+v", ack)
	}
}

func TestDeadLetterKeepsDataHeadersAndReason(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	m := nats.NewMsg(events.ProbeSubject("ep1"))
	m.Header.Set("X-Origin", "test")
	m.Data = []byte("not an event")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamHealth, jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := <-msgs.Messages()
	if got == nil {
		t.Fatal("no message fetched")
	}
	for range 2 { // twice: the second copy collapses on its Nats-Msg-Id
		if err := natsx.DeadLetter(ctx, js, events.DeadSubject("health", "ep1"), got, "undecodable"); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, events.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("DLQ holds %d messages, want 1", info.State.Msgs)
	}
	raw, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"X-Origin": "test", natsx.HeaderDeadReason: "undecodable",
		natsx.HeaderDeadSubject: "switchboard.probe.ep1", natsx.HeaderDeadStream: events.StreamHealth,
		natsx.HeaderDeadSeq: "1",
	}
	for k, v := range want {
		if got := raw.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if string(raw.Data) != "not an event" {
		t.Errorf("data = %q", raw.Data)
	}
}

func TestConnectErrorsNameTheServerWithoutCredentials(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg := config.Default().NATS
	cfg.URL = "nats://admin:hunter2@127.0.0.1:1"
	_, err := natsx.Connect(ctx, cfg, "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
	if got := err.Error(); !strings.Contains(got, "127.0.0.1:1") || strings.Contains(got, "hunter2") {
		t.Errorf("error %q should name the server and hide the password", got)
	}
	if !errors.Is(err, nats.ErrNoServers) {
		t.Errorf("error %v is not ErrNoServers", err)
	}
}
