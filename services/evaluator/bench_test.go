package evaluator_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

// BenchmarkEvaluator measures one evaluator and three replicas (pinned: one
// applies, two stand by; shared: all three take events) on a 3-node
// cluster (R3 streams and bucket, every write synced to disk), 20 endpoints:
//
//   - events/s: b.N probe results and request outcomes published at once, as
//     fast as one connection can; events applied per second, from the first
//     publish until every endpoint's record applied its last event;
//   - burst-p50-ms, burst-p99-ms: per event of that burst, the time from its
//     publish to the KV write that applied it (seen by a KV watcher): mostly
//     queueing behind the backlog;
//   - p50-ms, p99-ms: the same for 400 more events published at a steady 200
//     per second, under the system's capacity: the evaluator's own latency.
//
// Run with a fixed count, e.g. -benchtime=5000x: every run starts a cluster.
func BenchmarkEvaluator(b *testing.B) {
	for _, c := range []struct {
		replicas int
		consume  string
	}{{1, config.ConsumePinned}, {3, config.ConsumePinned}, {3, config.ConsumeShared}} {
		b.Run(fmt.Sprintf("replicas=%d/%s", c.replicas, c.consume), func(b *testing.B) {
			benchEvaluator(b, c.replicas, c.consume)
		})
	}
}

func benchEvaluator(b *testing.B, replicas int, consume string) {
	const endpoints = 20
	per := max(b.N/endpoints, 1)
	evs := generate(endpoints, per, 7)
	cfg := streamConfig(b, endpoints)
	cfg.Evaluator.Consume = consume

	servers := natstest.RunCluster(b, 3)
	var jss []jetstream.JetStream
	for _, s := range servers {
		jss = append(jss, natstest.JetStream(b, natstest.Connect(b, s.ClientURL())))
	}
	natstest.Provision(b, jss[0], 3)
	seedRecords(b, jss[0], cfg)

	// A watcher notes when each record write lands: the write that took an
	// endpoint's applied_seq to A applied its events up to A.
	kv, err := jss[0].KeyValue(context.Background(), events.BucketEndpoints)
	if err != nil {
		b.Fatal(err)
	}
	w, err := kv.WatchAll(context.Background(), jetstream.UpdatesOnly())
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	var writes []write
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			if st, err := endpointkv.Decode(e); err == nil {
				writes = append(writes, write{st.Endpoint, st.AppliedSeq, time.Now()})
			}
		}
	}()

	stop := runReplicas(b, jss[:replicas], cfg)
	b.ResetTimer()
	start := time.Now()
	burst := publishAll(b, jss[1], evs)
	waitAllApplied(b, jss[2], burst.last, 10*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	paced := publishPaced(b, jss[1], generateFrom(endpoints, 20, 8, streamEpoch.Add(time.Hour), "paced-"), 5*time.Millisecond)
	waitAllApplied(b, jss[2], paced.last, time.Minute)
	stop()
	w.Stop()
	<-watchDone

	b.ReportMetric(float64(len(evs))/elapsed.Seconds(), "events/s")
	lat := latencies(b, burst, writes)
	b.ReportMetric(ms(lat[len(lat)/2]), "burst-p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "burst-p99-ms")
	lat = latencies(b, paced, writes)
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")
	b.ReportMetric(float64(len(writes)), "kv-writes")
	b.ReportMetric(0, "ns/op")
}

type write struct {
	ep      string
	applied uint64
	at      time.Time
}

// latencies returns, sorted, each published event's time from publish to
// the first write whose applied_seq reached it.
func latencies(b *testing.B, pub published, writes []write) []time.Duration {
	seqs := map[string][]uint64{}
	for seq, ep := range pub.ep {
		seqs[ep] = append(seqs[ep], seq)
	}
	var lat []time.Duration
	for ep, ss := range seqs {
		sort.Slice(ss, func(i, j int) bool { return ss[i] < ss[j] })
		i := 0
		for _, wr := range writes {
			if wr.ep != ep {
				continue
			}
			for i < len(ss) && ss[i] <= wr.applied {
				lat = append(lat, wr.at.Sub(pub.at[ss[i]]))
				i++
			}
		}
	}
	if len(lat) != len(pub.at) {
		b.Fatalf("saw the writes of %d of %d events", len(lat), len(pub.at))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
