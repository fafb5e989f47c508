package evaluator_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// waitEvent waits until ep's record applied the event at seq and holds it
// as its last error (the events these tests publish fail with a message of
// their own, so a record that skipped the event cannot pass).
func waitEvent(t *testing.T, js jetstream.JetStream, ep string, seq uint64, msg string) {
	t.Helper()
	var st events.EndpointState
	natstest.WaitFor(t, 30*time.Second, "the event applied", func() bool {
		var err error
		st, err = store(t, js).Get(context.Background(), ep)
		return err == nil && st.AppliedSeq == seq && st.LastError != nil && st.LastError.Message == msg
	})
}

// publishRetry publishes p, retrying while JetStream is not back yet.
func publishRetry(t *testing.T, js jetstream.JetStream, p events.Payload) uint64 {
	t.Helper()
	var seq uint64
	natstest.WaitFor(t, 30*time.Second, "a publish to succeed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ack, err := natsx.Publisher{JS: js, Source: "/prober/v1"}.Publish(ctx, "restart-"+time.Now().Format(time.RFC3339Nano), p)
		if err != nil {
			return false
		}
		seq = ack.Sequence
		return true
	})
	return seq
}

// TestStandaloneServerRestart: the evaluator keeps applying events across a
// restart of a single NATS server (the `switchboard dev` case), whether the
// server restores the consumer or lost it.
func TestStandaloneServerRestart(t *testing.T) {
	for _, lose := range []bool{false, true} {
		name := "the server restores the consumer"
		if lose {
			name = "the server lost the consumer"
		}
		t.Run(name, func(t *testing.T) {
			srv, restart := natstest.Restartable(t)
			nc := natstest.Connect(t, srv.ClientURL())
			js := natstest.JetStream(t, nc)
			natstest.Provision(t, js, 1)
			startEvaluator(t, js, testConfig(t, nil, "a"))
			_, seq := publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "before the restart", time.Now()))
			waitEvent(t, js, "a", seq, "before the restart")

			store := srv.JetStreamConfig().StoreDir
			srv.Shutdown()
			if lose {
				obs := filepath.Join(store, "$G", "streams", events.StreamHealth, "obs", evaluator.ConsumerName)
				if _, err := os.Stat(obs); err != nil {
					t.Fatalf("the consumer's store: %v", err)
				}
				if err := os.RemoveAll(obs); err != nil {
					t.Fatal(err)
				}
			}
			restart()

			seq = publishRetry(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "after the restart", time.Now()))
			waitEvent(t, js, "a", seq, "after the restart")
		})
	}
}

// TestDeletedConsumerIsRecreated: an operator deleting the shared consumer
// does not stop the evaluator.
func TestDeletedConsumerIsRecreated(t *testing.T) {
	_, _, js := natstest.Start(t)
	startEvaluator(t, js, testConfig(t, nil, "a"))
	_, seq := publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "first", time.Now()))
	waitEvent(t, js, "a", seq, "first")
	if err := js.DeleteConsumer(context.Background(), events.StreamHealth, evaluator.ConsumerName); err != nil {
		t.Fatal(err)
	}
	_, seq = publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "after the delete", time.Now()))
	waitEvent(t, js, "a", seq, "after the delete")
}

// TestMemoryConsumerIsReplaced: a memory-backed consumer left by an older
// evaluator on one server is replaced by a file-backed one, which survives
// a restart.
func TestMemoryConsumerIsReplaced(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	_, err := js.CreateConsumer(ctx, events.StreamHealth, jetstream.ConsumerConfig{
		Durable: evaluator.ConsumerName, AckPolicy: jetstream.AckExplicitPolicy, MemoryStorage: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	startEvaluator(t, js, testConfig(t, nil, "a"))
	_, seq := publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "first", time.Now()))
	waitEvent(t, js, "a", seq, "first")
	c, err := js.Consumer(ctx, events.StreamHealth, evaluator.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	if c.CachedInfo().Config.MemoryStorage {
		t.Error("the health consumer is still memory-backed")
	}
}

// TestHealthStreamRecreated: after SWITCHBOARD_HEALTH is deleted and
// provisioned again, its sequences restart below the records' applied_seq;
// the new events are applied, not taken for duplicates.
func TestHealthStreamRecreated(t *testing.T) {
	_, _, js := natstest.Start(t)
	startEvaluator(t, js, testConfig(t, nil, "a"))
	var seq uint64
	for i := range 5 {
		_, seq = publish(t, js, probeEvent("a", events.ProbePass, "", "", time.Now().Add(time.Duration(i)*time.Millisecond)))
	}
	_, seq = publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "old stream", time.Now()))
	waitEvent(t, js, "a", seq, "old stream")

	ctx := context.Background()
	if err := js.DeleteStream(ctx, events.StreamHealth); err != nil {
		t.Fatal(err)
	}
	natstest.Provision(t, js, 1)
	_, seq = publish(t, js, probeEvent("a", events.ProbeFail, events.ClassHTTP5xx, "new stream", time.Now()))
	if seq != 1 {
		t.Fatalf("first event of the new stream at sequence %d, want 1", seq)
	}
	waitEvent(t, js, "a", seq, "new stream")
}

// TestEndpointBucketRecreated: after switchboard-endpoints is deleted and
// provisioned again, KV revisions restart; a change at a revision the
// evaluator already published in the old bucket is published all the same.
func TestEndpointBucketRecreated(t *testing.T) {
	_, _, js := natstest.Start(t)
	ctx := context.Background()
	// Take the record of a to revision 40 before the evaluator starts, so
	// that its first change is published with a high revision.
	st, err := store(t, js).Put(ctx, state.New("a", time.Now()), 0)
	if err != nil {
		t.Fatal(err)
	}
	for st.Revision < 40 {
		if st, err = store(t, js).Put(ctx, st, st.Revision); err != nil {
			t.Fatal(err)
		}
	}
	startEvaluator(t, js, testConfig(t, nil, "a"))
	_, seq := publish(t, js, probeEvent("a", events.ProbeFail, events.ClassAuth, "old bucket", time.Now()))
	waitEvent(t, js, "a", seq, "old bucket")
	natstest.WaitFor(t, 10*time.Second, "the first change published", func() bool {
		return len(changesOf(statusEvents(t, js), "a")) == 1
	})

	if err := js.DeleteKeyValue(ctx, events.BucketEndpoints); err != nil {
		t.Fatal(err)
	}
	natstest.Provision(t, js, 1)
	_, seq = publish(t, js, probeEvent("a", events.ProbeFail, events.ClassAuth, "new bucket", time.Now()))
	waitEvent(t, js, "a", seq, "new bucket")
	var got []statusMsg
	natstest.WaitFor(t, 10*time.Second, "the change in the new bucket published", func() bool {
		got = changesOf(statusEvents(t, js), "a")
		return len(got) == 2
	})
	if first, second := got[0].Change.Revision, got[1].Change.Revision; second >= first {
		t.Errorf("revisions %d then %d: the test wants the second below the first", first, second)
	}
	if c := got[1].Change; c.Cause.Error != "new bucket" {
		t.Errorf("second change's cause = %+v, want the probe of the new bucket", c.Cause)
	}
}
