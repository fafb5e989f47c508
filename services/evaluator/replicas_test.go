package evaluator_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// TestReplicasMatchASingleEvaluator: three evaluator replicas, one per node
// of a 3-node cluster, process a shuffled stream of 10,000 probe results and
// request outcomes for 20 endpoints. The final records equal those of one
// evaluator on a fresh single node fed the same stream, and the status
// changes are the same, in the same order per endpoint, none lost and none
// twice. Then simulated workers on every node race for half-open trial
// leases: each half-open period grants exactly half_open_requests.
func TestReplicasMatchASingleEvaluator(t *testing.T) {
	const endpoints = 20
	perEndpoint := 500 // 10,000 events
	if testing.Short() {
		perEndpoint = 100
	}
	evs := generate(endpoints, perEndpoint, 42)
	cfg := streamConfig(t, endpoints)

	// Three replicas on a 3-node cluster.
	servers := natstest.RunCluster(t, 3)
	var jss []jetstream.JetStream
	for _, s := range servers {
		jss = append(jss, natstest.JetStream(t, natstest.Connect(t, s.ClientURL())))
	}
	natstest.Provision(t, jss[0], 3)
	seedRecords(t, jss[0], cfg)
	stop := runReplicas(t, jss, cfg)
	start := time.Now()
	pub3 := publishAll(t, jss[1], evs)
	t.Logf("published in %s", time.Since(start))
	gotRecords := waitAllApplied(t, jss[2], pub3.last, 120*time.Second)
	t.Logf("3 replicas applied %d events in %s", len(evs), time.Since(start).Round(time.Millisecond))
	gotStatus := statusEvents(t, jss[0])
	stop()
	consumerStorage(t, jss[0], true)

	// One evaluator on a fresh single node. It is the reference, not the
	// system under test: it runs without fsync to keep the test short.
	ref, err := natsx.StartServer(natsx.ServerOptions{Name: "ref", Listen: "127.0.0.1:0", StoreDir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ref.Shutdown)
	js1 := natstest.JetStream(t, natstest.Connect(t, ref.ClientURL()))
	natstest.Provision(t, js1, 1)
	seedRecords(t, js1, cfg)
	stop1 := runReplicas(t, []jetstream.JetStream{js1}, cfg)
	start = time.Now()
	pub1 := publishAll(t, js1, evs)
	t.Logf("published in %s", time.Since(start))
	wantRecords := waitAllApplied(t, js1, pub1.last, 120*time.Second)
	t.Logf("1 evaluator applied %d events in %s", len(evs), time.Since(start).Round(time.Millisecond))
	wantStatus := statusEvents(t, js1)
	stop1()
	consumerStorage(t, js1, false)

	// The final records are equal (revisions differ: the buckets' histories
	// interleave endpoints differently).
	if diff := cmp.Diff(wantRecords, gotRecords, cmpopts.IgnoreFields(events.EndpointState{}, "Revision")); diff != "" {
		t.Errorf("final records of 3 replicas differ from 1 evaluator's (-one +three):\n%s", diff)
	}

	// The status changes are the same, per endpoint, in the same order.
	ignoreRev := cmpopts.IgnoreFields(events.StatusChanged{}, "Revision")
	ignoreStateRev := cmpopts.IgnoreFields(events.EndpointState{}, "Revision")
	kinds := map[string]int{}
	for _, ep := range sortedEndpoints(wantRecords) {
		want, got := changesOf(wantStatus, ep), changesOf(gotStatus, ep)
		var w, g []*events.StatusChanged
		for _, m := range want {
			w = append(w, m.Change)
		}
		for _, m := range got {
			g = append(g, m.Change)
		}
		if diff := cmp.Diff(w, g, ignoreRev, ignoreStateRev); diff != "" {
			t.Errorf("%s: status changes of 3 replicas differ from 1 evaluator's (-one +three):\n%s", ep, diff)
		}
		checkChain(t, ep, got, gotRecords[ep])
		for _, m := range got {
			for k, on := range map[string]bool{"health": m.Change.Health != nil, "breaker": m.Change.Breaker != nil, "throttle": m.Change.Throttle != nil} {
				if on {
					kinds[k]++
				}
			}
			if m.Change.Breaker != nil {
				kinds["breaker "+m.Change.Breaker.From+" -> "+m.Change.Breaker.To]++
			}
		}
	}
	// The stream must have exercised the rules, or the comparison proves little.
	for _, k := range []string{"health", "throttle", "breaker closed -> open", "breaker open -> half_open", "breaker half_open -> closed", "breaker half_open -> open"} {
		if kinds[k] == 0 {
			t.Errorf("the generated stream made no %q change: %v", k, kinds)
		}
	}
	t.Logf("%d status changes: %v", len(gotStatus), kinds)

	t.Run("leases", func(t *testing.T) { testLeases(t, servers, jss) })
}

// checkChain: an endpoint's status changes chain (each from is the previous
// to), start from a fresh record, end at the final record, carry strictly
// increasing revisions and ids <endpoint>@<revision>, none twice.
func checkChain(t *testing.T, ep string, changes []statusMsg, final events.EndpointState) {
	t.Helper()
	health, breaker, override := "unknown", "closed", "none"
	var throttle *time.Time
	var rev uint64
	for _, m := range changes {
		c := m.Change
		if want := fmt.Sprintf("%s@%d", ep, c.Revision); m.ID != want || m.MsgID != want {
			t.Errorf("%s: id %q msg id %q, want %s", ep, m.ID, m.MsgID, want)
		}
		if c.Revision <= rev {
			t.Errorf("%s: revision %d after %d: a change twice or out of order", ep, c.Revision, rev)
		}
		rev = c.Revision
		if c.Health != nil {
			if c.Health.From != health {
				t.Errorf("%s@%d: health from %s, but it was %s: a change was lost", ep, c.Revision, c.Health.From, health)
			}
			health = c.Health.To
		}
		if c.Breaker != nil {
			if c.Breaker.From != breaker {
				t.Errorf("%s@%d: breaker from %s, but it was %s: a change was lost", ep, c.Revision, c.Breaker.From, breaker)
			}
			breaker = c.Breaker.To
		}
		if c.Override != nil {
			if c.Override.From != override {
				t.Errorf("%s@%d: override from %s, but it was %s", ep, c.Revision, c.Override.From, override)
			}
			override = c.Override.To
		}
		if c.Throttle != nil {
			if !cmp.Equal(c.Throttle.From, throttle) {
				t.Errorf("%s@%d: throttle from %v, but it was %v: a change was lost", ep, c.Revision, c.Throttle.From, throttle)
			}
			throttle = c.Throttle.To
		}
		if string(c.State.Health) != health || string(c.State.Breaker) != breaker {
			t.Errorf("%s@%d: state after %s/%s, but the changes say %s/%s", ep, c.Revision, c.State.Health, c.State.Breaker, health, breaker)
		}
	}
	if string(final.Health) != health || string(final.Breaker) != breaker || !cmp.Equal(final.ThrottledUntil, throttle) {
		t.Errorf("%s: the changes end at %s/%s/%v, the record is %s/%s/%v", ep, health, breaker, throttle, final.Health, final.Breaker, final.ThrottledUntil)
	}
}

// leaseLab records the trial leases simulated workers were granted and
// tells the holders of a period when to report and how.
type leaseLab struct {
	mu     sync.Mutex
	grants map[string][]string // "<endpoint>@<period start>" -> lease ids
	modes  map[string]chan bool
}

func (l *leaseLab) add(key, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.grants[key] = append(l.grants[key], id)
}

// release returns the channel on which a period's holders learn whether
// their trial fails (true: the first to read fails).
func (l *leaseLab) release(key string) chan bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.modes[key] == nil {
		l.modes[key] = make(chan bool, 16)
	}
	return l.modes[key]
}

func periodKey(st events.EndpointState) string {
	return st.Endpoint + "@" + st.HalfOpen.Since.Format(time.RFC3339Nano)
}

// testLeases: replicas with a real timer; simulated workers on every node
// race for trial leases (AcquireLease + compare-and-set); each endpoint
// goes through a half-open period whose trial fails and one whose trials
// succeed. Every period grants exactly half_open_requests leases.
func testLeases(t *testing.T, servers []*natsx.Server, jss []jetstream.JetStream) {
	eps := []string{"lease0", "lease1", "lease2", "lease3"}
	cfg := testConfig(t, func(c *config.Config) {
		c.Breaker.FailureThreshold = 2
		c.Breaker.RecoveryTimeout = 300 * time.Millisecond
		c.Breaker.TrialLeaseTTL = time.Minute
		c.Worker.RequestTimeout = 30 * time.Second // a trial call ends before its lease
		c.Breaker.HalfOpenRequests = 3
	}, eps...)
	settings := state.SettingsFrom(cfg)
	runReplicas(t, jss, cfg)
	natstest.WaitFor(t, 10*time.Second, "the lease endpoints' records", func() bool {
		for _, ep := range eps {
			if _, err := store(t, jss[0]).Get(context.Background(), ep); err != nil {
				return false
			}
		}
		return true
	})

	lab := &leaseLab{grants: map[string][]string{}, modes: map[string]chan bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// Simulated workers: four per node.
	for n, s := range servers {
		js := natstest.JetStream(t, natstest.Connect(t, s.ClientURL()))
		kv := store(t, js)
		for w := range 4 {
			holder := fmt.Sprintf("n%d-w%d", n+1, w)
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(2 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					for _, ep := range eps {
						var lease events.Lease
						var key string
						_, wrote, err := kv.Update(ctx, ep, func() events.EndpointState { return state.New(ep, time.Now()) },
							func(cur events.EndpointState) (events.EndpointState, bool, error) {
								next, l, ok := state.AcquireLease(settings, cur, holder, time.Now())
								if ok {
									lease, key = l, periodKey(cur)
								}
								return next, ok, nil
							})
						if err != nil || !wrote {
							continue
						}
						lab.add(key, lease.ID)
						var failTrial bool
						select { // hold the lease until the period's trials report
						case failTrial = <-lab.release(key):
						case <-ctx.Done():
							return
						}
						class := events.ErrorClass("")
						if failTrial {
							class = events.ClassHTTP5xx
						}
						o := outcomeEvent(ep, class, time.Now())
						o.TrialLease = lease.ID
						_, err = (natsx.Publisher{JS: js, Source: "/worker/" + holder}).Publish(ctx, "trial-"+lease.ID, o)
						if err != nil && ctx.Err() == nil {
							t.Errorf("publish trial outcome: %v", err)
						}
					}
				}
			}()
		}
	}

	// Each endpoint: open it, then a period whose trial fails, then one
	// whose trials succeed.
	kv := store(t, jss[0])
	var cwg sync.WaitGroup
	for _, ep := range eps {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			get := func() events.EndpointState {
				st, err := kv.Get(ctx, ep)
				if err != nil {
					t.Errorf("%s: %v", ep, err)
				}
				return st
			}
			for range 2 {
				publish(t, jss[0], outcomeEvent(ep, events.ClassConnect, time.Now()))
			}
			for _, fail := range []bool{true, false} {
				var key string
				natstest.WaitFor(t, 20*time.Second, ep+" half-open with every slot granted", func() bool {
					st := get()
					if st.Breaker != events.BreakerHalfOpen || st.HalfOpen.Granted < settings.Breaker.HalfOpenRequests {
						return false
					}
					key = periodKey(st)
					return true
				})
				release := lab.release(key)
				for i := range settings.Breaker.HalfOpenRequests {
					release <- fail && i == 0
				}
				natstest.WaitFor(t, 20*time.Second, ep+" to leave the period", func() bool {
					st := get()
					return st.Breaker != events.BreakerHalfOpen || periodKey(st) != key
				})
			}
			deadline := time.Now().Add(20 * time.Second)
			for get().Breaker != events.BreakerClosed {
				if time.Now().After(deadline) {
					c, _ := jss[0].Consumer(ctx, events.StreamHealth, "evaluator")
					ci, _ := c.Info(ctx)
					t.Errorf("%s not closed after its trials succeeded: %s\nconsumer %s\nits outcome events:\n%s",
						ep, mustJSON(get()), mustJSON(ci), outcomesOf(t, jss[0], ep))
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	cwg.Wait()
	cancel()
	wg.Wait()

	lab.mu.Lock()
	defer lab.mu.Unlock()
	if len(lab.grants) != 2*len(eps) {
		t.Errorf("%d half-open periods saw grants, want %d: %v", len(lab.grants), 2*len(eps), lab.grants)
	}
	for key, ids := range lab.grants {
		if len(ids) != 3 {
			t.Errorf("period %s granted %d leases, want exactly half_open_requests 3: %s", key, len(ids), strings.Join(ids, ", "))
		}
	}
}

// consumerStorage checks the health consumer's storage: memory when
// replicated, file on one server.
func consumerStorage(t *testing.T, js jetstream.JetStream, memory bool) {
	t.Helper()
	c, err := js.Consumer(context.Background(), events.StreamHealth, evaluator.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MemoryStorage; got != memory {
		t.Errorf("health consumer on %d replicas: memory storage %v, want %v", c.CachedInfo().Config.Replicas, got, memory)
	}
}

// outcomesOf lists the request outcomes of ep in SWITCHBOARD_HEALTH, one
// line each (for failure messages).
func outcomesOf(t *testing.T, js jetstream.JetStream, ep string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, events.StreamHealth, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.OutcomeSubject(ep)}})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return b.String()
		}
		md, _ := m.Metadata()
		env, err := events.Decode(m.Data())
		if err != nil {
			fmt.Fprintf(&b, "%d: %v\n", md.Sequence.Stream, err)
			continue
		}
		o := env.Data.(*events.RequestOutcome)
		fmt.Fprintf(&b, "%d: %s %s lease=%q started=%s source=%s\n", md.Sequence.Stream, o.Outcome, o.ErrorClass, o.TrialLease,
			o.StartedAt.Format(time.RFC3339Nano), env.Source)
		if md.NumPending == 0 {
			return b.String()
		}
	}
}
