package endpointkv_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)

func fresh(name string) func() events.EndpointState {
	return func() events.EndpointState { return state.New(name, t0) }
}

func open(t *testing.T, js jetstream.JetStream) *endpointkv.Store {
	t.Helper()
	s, err := endpointkv.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUpdateConcurrentWriters: writers on three connections increment one
// record at once; compare-and-set loses no increment and every write gets
// its own revision.
func TestUpdateConcurrentWriters(t *testing.T) {
	srv, _, _ := natstest.Start(t)
	const conns, perConn, each = 3, 4, 25
	var mu sync.Mutex
	var revs []uint64
	seenCount := map[uint64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, conns*perConn)
	for range conns {
		store := open(t, natstest.JetStream(t, natstest.Connect(t, srv.ClientURL())))
		for range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					got, wrote, err := store.Update(context.Background(), "ep", fresh("ep"),
						func(cur events.EndpointState) (events.EndpointState, bool, error) {
							cur.Requests++
							return cur, true, nil
						})
					if err != nil || !wrote {
						errs <- errors.Join(err, errors.New("no write"))
						return
					}
					mu.Lock()
					revs = append(revs, got.Revision)
					if seenCount[got.Requests] {
						errs <- errors.New("two writes produced the same count")
					}
					seenCount[got.Requests] = true
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	js := natstest.JetStream(t, natstest.Connect(t, srv.ClientURL()))
	st, err := open(t, js).Get(context.Background(), "ep")
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(conns * perConn * each); st.Requests != want {
		t.Errorf("requests = %d, want %d: an increment was lost", st.Requests, want)
	}
	sort.Slice(revs, func(i, j int) bool { return revs[i] < revs[j] })
	for i := 1; i < len(revs); i++ {
		if revs[i] == revs[i-1] {
			t.Fatalf("revision %d returned to two writers", revs[i])
		}
	}
	if st.Revision != revs[len(revs)-1] {
		t.Errorf("stored revision %d, last written %d", st.Revision, revs[len(revs)-1])
	}
}

// TestUpdateCreatesOnce: writers racing to create a missing record all
// land, on one record.
func TestUpdateCreatesOnce(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := store.Update(context.Background(), "new", fresh("new"), func(cur events.EndpointState) (events.EndpointState, bool, error) {
				cur.Failures++
				cur.Requests++
				return cur, true, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st, err := store.Get(context.Background(), "new")
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 8 {
		t.Errorf("requests = %d, want 8", st.Requests)
	}
}

func TestUpdateNoWriteAndErrors(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	ctx := context.Background()
	cur, wrote, err := store.Update(ctx, "ep", fresh("ep"), func(cur events.EndpointState) (events.EndpointState, bool, error) {
		return cur, false, nil
	})
	if err != nil || wrote || cur.Revision != 0 {
		t.Errorf("no-write update = %+v %v %v, want the fresh record unwritten", cur, wrote, err)
	}
	if _, err := store.Get(ctx, "ep"); !errors.Is(err, endpointkv.ErrNotFound) {
		t.Errorf("Get after a no-write update: %v, want ErrNotFound", err)
	}
	boom := errors.New("boom")
	if _, _, err := store.Update(ctx, "ep", fresh("ep"), func(cur events.EndpointState) (events.EndpointState, bool, error) {
		return cur, true, boom
	}); !errors.Is(err, boom) {
		t.Errorf("Update returned %v, want fn's error", err)
	}
	if _, _, err := store.Update(ctx, "ep", fresh("ep"), func(cur events.EndpointState) (events.EndpointState, bool, error) {
		cur.Endpoint = "other"
		return cur, true, nil
	}); err == nil {
		t.Error("Update wrote a record under another endpoint's key")
	}
}

func TestPutConflict(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	ctx := context.Background()
	a, err := store.Put(ctx, state.New("ep", t0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, state.New("ep", t0), 0); !errors.Is(err, endpointkv.ErrConflict) {
		t.Errorf("second create: %v, want ErrConflict", err)
	}
	if _, err := store.Put(ctx, a, a.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, a, a.Revision); !errors.Is(err, endpointkv.ErrConflict) {
		t.Errorf("write at a stale revision: %v, want ErrConflict", err)
	}
}

// TestPendingRevisionsAreStamped: a status change written with a record
// carries revision 0 in KV; every reader sees the revision of the write that
// made it, and a later write that carries it forward keeps that revision.
func TestPendingRevisionsAreStamped(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	ctx := context.Background()
	st := state.New("ep", t0)
	st.Pending = []events.StatusChanged{{Endpoint: "ep", Cause: events.Cause{Kind: events.CauseTimer}, State: state.New("ep", t0)}}
	w1, err := store.Put(ctx, st, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := w1.Pending[0].Revision; got != w1.Revision {
		t.Errorf("written pending revision %d, want %d", got, w1.Revision)
	}
	r1, err := store.Get(ctx, "ep")
	if err != nil {
		t.Fatal(err)
	}
	if got := r1.Pending[0]; got.Revision != w1.Revision || got.State.Revision != w1.Revision {
		t.Errorf("read pending revision %d/%d, want %d", got.Revision, got.State.Revision, w1.Revision)
	}
	r1.Requests++
	w2, err := store.Put(ctx, r1, r1.Revision)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := store.Get(ctx, "ep")
	if r2.Pending[0].Revision != w1.Revision || r2.Revision != w2.Revision {
		t.Errorf("carried pending revision %d (record %d), want %d", r2.Pending[0].Revision, r2.Revision, w1.Revision)
	}
}

func runView(t *testing.T, js jetstream.JetStream, changes chan<- events.EndpointState) *endpointkv.View {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), events.BucketEndpoints)
	if err != nil {
		t.Fatal(err)
	}
	var onChange func(events.EndpointState)
	if changes != nil {
		onChange = func(st events.EndpointState) { changes <- st }
	}
	v := endpointkv.NewView(kv, slog.New(slog.NewTextHandler(io.Discard, nil)), onChange)
	v.CheckEvery = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("view Run: %v", err)
		}
	})
	select {
	case <-v.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("view not ready after 10s")
	}
	return v
}

func names(v *endpointkv.View) []string {
	var out []string
	for k := range v.Snapshot() {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestViewFollowsWritesAndDeletes: the view starts from the bucket's
// contents and follows puts and deletes.
func TestViewFollowsWritesAndDeletes(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	ctx := context.Background()
	a, _ := store.Put(ctx, state.New("a", t0), 0)
	v := runView(t, js, nil)
	if got, ok := v.Get("a"); !ok || got.Revision != a.Revision {
		t.Fatalf("initial view holds %+v %v, want a@%d", got, ok, a.Revision)
	}
	b, _ := store.Put(ctx, state.New("b", t0), 0)
	natstest.WaitFor(t, 5*time.Second, "b in the view", func() bool { got, ok := v.Get("b"); return ok && got.Revision == b.Revision })
	if err := store.KV.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 5*time.Second, "a gone from the view", func() bool { _, ok := v.Get("a"); return !ok })
	// Put of an older revision than the view holds is ignored.
	old := b
	old.Revision--
	old.Requests = 99
	v.Put(old)
	if got, _ := v.Get("b"); got.Requests == 99 {
		t.Error("the view took an older revision")
	}
}

// TestViewRebuildsWhenTheBucketIsRecreated: deleting and provisioning the
// bucket again leaves the KV watch silently dead; the view notices at its
// next check, rebuilds from a snapshot and holds exactly the new contents,
// although their revisions restarted below the old ones.
func TestViewRebuildsWhenTheBucketIsRecreated(t *testing.T) {
	_, _, js := natstest.Start(t)
	store := open(t, js)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		st := state.New(n, t0)
		for range 3 { // push the revisions up
			var err error
			if st, err = store.Put(ctx, st, st.Revision); err != nil {
				t.Fatal(err)
			}
		}
	}
	v := runView(t, js, nil)
	if diff := cmp.Diff([]string{"a", "b", "c"}, names(v)); diff != "" {
		t.Fatalf("initial view (-want +got):\n%s", diff)
	}

	if err := js.DeleteKeyValue(ctx, events.BucketEndpoints); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := natsx.Provision(pctx, js, natstest.NATSConfig(1)); err != nil {
		t.Fatal(err)
	}
	store = open(t, js)
	c := state.New("c", t0)
	c.Requests = 7
	if _, err := store.Put(ctx, c, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, state.New("d", t0), 0); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the view to hold the new bucket's records", func() bool {
		got, _ := v.Get("c")
		return cmp.Equal([]string{"c", "d"}, names(v)) && got.Requests == 7
	})
	// And it follows the new bucket from then on.
	e, err := store.Put(ctx, state.New("e", t0), 0)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 5*time.Second, "e in the view", func() bool { got, ok := v.Get("e"); return ok && got.Revision == e.Revision })
}
