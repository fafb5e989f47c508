package endpointkv

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// View is a local, always-current copy of every endpoint record, kept live
// by a KV watch. When the watch dies (a NATS outage, a deleted consumer) it
// is rebuilt with backoff, starting from a full snapshot, so the view never
// silently goes stale. Reads never block on NATS.
type View struct {
	kv  jetstream.KeyValue
	log *slog.Logger

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
func (v *View) Put(st events.EndpointState) {
	v.mu.Lock()
	cur, ok := v.records[st.Endpoint]
	newer := !ok || st.Revision > cur.Revision
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
	w, err := v.kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	seen := map[string]bool{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
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
			v.Put(st)
		}
	}
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

const errWatchClosed = watchError("watch channel closed")
