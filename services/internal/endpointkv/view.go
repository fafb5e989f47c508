package endpointkv

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// DefaultCheckEvery is how often a View checks that its watch still
// follows the bucket.
const DefaultCheckEvery = 5 * time.Second

// View is a local, always-current copy of every endpoint record, kept live
// by a KV watch. When the watch dies (a NATS outage, a deleted consumer) it
// is rebuilt with backoff, starting from a full snapshot, so the view never
// silently goes stale. A watch can also stop delivering without closing (its
// consumer could not be recreated, the bucket was deleted and provisioned
// again): every CheckEvery the view compares the bucket's last revision and
// creation time with what it has seen, and rebuilds the watch when it fell
// behind for a whole check interval. Reads never block on NATS.
type View struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	// CheckEvery overrides DefaultCheckEvery when positive. Set it before Run.
	CheckEvery time.Duration

	mu      sync.RWMutex
	records map[string]events.EndpointState
	ready   chan struct{}
	once    sync.Once
	// onChange, when set, is called (outside the lock) with each new record.
	onChange func(events.EndpointState)
}

// NewView makes a view of kv; call Run to fill and follow it. onChange may
// be nil.
func NewView(kv jetstream.KeyValue, log *slog.Logger, onChange func(events.EndpointState)) *View {
	return &View{kv: kv, log: log, records: map[string]events.EndpointState{}, ready: make(chan struct{}), onChange: onChange}
}

// Ready is closed once the view holds the bucket's initial contents.
func (v *View) Ready() <-chan struct{} { return v.ready }

// Get returns the record of name.
func (v *View) Get(name string) (events.EndpointState, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	st, ok := v.records[name]
	return st, ok
}

// Snapshot returns a copy of every record.
func (v *View) Snapshot() map[string]events.EndpointState {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make(map[string]events.EndpointState, len(v.records))
	for k, st := range v.records {
		out[k] = st
	}
	return out
}

// Put records st if it is newer than what the view holds; a writer calls it
// with what it just wrote so its own reads see it before the watch does.
func (v *View) Put(st events.EndpointState) { v.put(st, false) }

// put records st; force replaces whatever the view holds (the initial
// snapshot of a watch: after a bucket is created again, revisions restart).
func (v *View) put(st events.EndpointState, force bool) {
	v.mu.Lock()
	cur, ok := v.records[st.Endpoint]
	newer := force || !ok || st.Revision > cur.Revision
	if newer {
		v.records[st.Endpoint] = st
	}
	v.mu.Unlock()
	if newer && v.onChange != nil {
		v.onChange(st)
	}
}

// Run follows the bucket until ctx ends.
func (v *View) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := v.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		v.log.Warn("endpoint state watch ended; rebuilding", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (v *View) watch(ctx context.Context) error {
	created, _, err := v.bucketState(ctx)
	if err != nil {
		return err
	}
	w, err := v.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	every := v.CheckEvery
	if every <= 0 {
		every = DefaultCheckEvery
	}
	check := time.NewTicker(every)
	defer check.Stop()
	seen := map[string]bool{}
	initial := true
	var last, behind uint64 // the last revision received; one the view lacked at the previous check
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			c, lastSeq, err := v.bucketState(ctx)
			if err != nil {
				continue // the bucket is unreachable or gone: nothing to follow now
			}
			if !c.Equal(created) {
				return errBucketRecreated
			}
			if behind > 0 && last < behind {
				return errWatchStalled
			}
			behind = 0
			if lastSeq > last {
				behind = lastSeq
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errWatchClosed
			}
			if e == nil { // end of the initial snapshot
				if initial {
					v.dropUnseen(seen)
					initial = false
					v.once.Do(func() { close(v.ready) })
				}
				continue
			}
			last = max(last, e.Revision())
			if initial {
				seen[e.Key()] = true
			}
			if e.Operation() != jetstream.KeyValuePut {
				v.mu.Lock()
				delete(v.records, e.Key())
				v.mu.Unlock()
				continue
			}
			st, err := Decode(e)
			if err != nil {
				v.log.Error("undecodable endpoint record", "key", e.Key(), "revision", e.Revision(), "err", err)
				continue
			}
			v.put(st, initial)
		}
	}
}

// bucketState returns when the bucket's stream was created and its last
// revision.
func (v *View) bucketState(ctx context.Context) (time.Time, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := v.kv.Status(ctx)
	if err != nil {
		return time.Time{}, 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return time.Time{}, 0, nil
	}
	info := bs.StreamInfo()
	return info.Created, info.State.LastSeq, nil
}

// dropUnseen forgets records deleted while the watch was down.
func (v *View) dropUnseen(seen map[string]bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range v.records {
		if !seen[k] {
			delete(v.records, k)
		}
	}
}

type watchError string

func (e watchError) Error() string { return string(e) }

const (
	errWatchClosed     = watchError("watch channel closed")
	errWatchStalled    = watchError("watch fell behind the bucket for a whole check interval")
	errBucketRecreated = watchError("bucket was deleted and created again")
)
