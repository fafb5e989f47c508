package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// TestClusterNodeLoss: on a 3-node cluster with every stream and bucket
// replicated three times, the node leading SWITCHBOARD_JOBS is shut down
// while jobs run. The services, connected to every node, move to the
// others, and every job still finishes exactly once.
func TestClusterNodeLoss(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 300
	}
	servers := natstest.RunCluster(t, 3)
	urls := natstest.URLs(servers)
	_, adminJS := connect(t, urls)
	natstest.Provision(t, adminJS, 3)
	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"},
		Faults: mock.Faults{LatencyMin: mock.Duration(5 * time.Millisecond), LatencyMax: mock.Duration(20 * time.Millisecond)}})

	base := &config.Config{Endpoints: []config.Endpoint{a.endpoint()}}
	base.NATS.Replicas = 3
	base.Evaluator.Instance = "ev1"
	base.Worker.Concurrency = 32
	base.Worker.AckWait = 5 * time.Second
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	evNC, evJS := connect(t, urls)
	runEvaluator(t, base, evNC, evJS)
	for i := range 2 {
		cfg := *base
		cfg.Worker.Instance = fmt.Sprintf("w%d", i+1)
		nc, js := connect(t, urls)
		runWorker(t, worker.Options{Config: &cfg, NC: nc, JS: js})
	}

	_, subJS := connect(t, urls)
	// Finished jobs are counted in SWITCHBOARD_RESULTS, not by a plain
	// subscription: that would miss the events published while its own
	// connection moves to another node.
	finished := func() int { return finishedCount(subJS) }
	msgs, ids := newJobs(t, n, "loss")
	submit(t, subJS, msgs)
	natstest.WaitFor(t, time.Minute, "a quarter of the jobs finished", func() bool { return finished() >= n/4 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	str, err := adminJS.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	leader := str.CachedInfo().Cluster.Leader
	i := slices.IndexFunc(servers, func(s *natsx.Server) bool { return s.Name() == leader })
	if i < 0 {
		t.Fatalf("no server is named %q, the leader of %s", leader, events.StreamJobs)
	}
	killedAt := finished()
	servers[i].Shutdown()
	t.Logf("shut down %s, the leader of %s, with %d of %d jobs finished", leader, events.StreamJobs, killedAt, n)
	lost := time.Now()

	natstest.WaitFor(t, 2*time.Minute, "every job finished", func() bool { return finished() >= n })
	t.Logf("the other %d jobs finished %s after the loss", n-killedAt, time.Since(lost).Round(time.Millisecond))

	checkExactlyOnce(t, subJS, ids)
}
