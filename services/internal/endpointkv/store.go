// Package endpointkv reads and writes endpoint state records in the KV bucket
// switchboard-endpoints: compare-and-set updates that retry on conflict, and
// a live local view kept current by a KV watch that is rebuilt when it dies.
package endpointkv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// ErrNotFound is returned when an endpoint has no record yet.
var ErrNotFound = errors.New("endpoint has no state record")

// Store is the switchboard-endpoints bucket.
type Store struct {
	KV jetstream.KeyValue
}

// Open binds the bucket (it must be provisioned).
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, events.BucketEndpoints)
	if err != nil {
		return nil, fmt.Errorf("open kv bucket %s: %w", events.BucketEndpoints, err)
	}
	return &Store{KV: kv}, nil
}

// Decode parses a KV entry into a record with its revision.
func Decode(e jetstream.KeyValueEntry) (events.EndpointState, error) {
	var st events.EndpointState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return st, fmt.Errorf("endpoint record %s@%d: %w", e.Key(), e.Revision(), err)
	}
	st.Revision = e.Revision()
	stampPending(&st, e.Revision())
	return st, nil
}

// stampPending fills in the revision of the pending status changes that the
// write at rev made (those stored with revision 0), so that a later write
// that carries them forward keeps their true revision.
func stampPending(st *events.EndpointState, rev uint64) {
	for i := range st.Pending {
		if st.Pending[i].Revision == 0 {
			st.Pending[i].Revision = rev
			st.Pending[i].State.Revision = rev
		}
	}
}

// Get returns the record of endpoint name.
func (s *Store) Get(ctx context.Context, name string) (events.EndpointState, error) {
	e, err := s.KV.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return events.EndpointState{}, ErrNotFound
	}
	if err != nil {
		return events.EndpointState{}, fmt.Errorf("get endpoint %s: %w", name, err)
	}
	return Decode(e)
}

// List returns every record, in key order.
func (s *Store) List(ctx context.Context) ([]events.EndpointState, error) {
	keys, err := s.KV.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	var names []string
	for k := range keys.Keys() {
		names = append(names, k)
	}
	var out []events.EndpointState
	for _, k := range names {
		st, err := s.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue // deleted between list and get
		}
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// UpdateFunc computes the next record from the current one (Revision set;
// a fresh record when there was none) and says whether to write it.
type UpdateFunc func(cur events.EndpointState) (next events.EndpointState, write bool, err error)

// ErrConflictLimit is returned when an update lost the compare-and-set race
// too many times in a row (MaxConflicts).
var ErrConflictLimit = errors.New("too many compare-and-set conflicts")

// ErrConflict is returned by Put when the record is not at the revision the
// writer read any more (or, for a create, already exists).
var ErrConflict = errors.New("endpoint record changed since it was read")

// Put writes next as the record of next.Endpoint by compare-and-set on rev,
// the revision the writer read (0: the record must not exist yet). It makes
// one attempt and returns ErrConflict when another writer came first. It
// returns next with Revision = the new KV revision.
func (s *Store) Put(ctx context.Context, next events.EndpointState, rev uint64) (events.EndpointState, error) {
	name := next.Endpoint
	next.Revision = 0 // not stored: readers fill it from the entry
	b, err := json.Marshal(next)
	if err != nil {
		return next, fmt.Errorf("encode endpoint %s: %w", name, err)
	}
	var nrev uint64
	if rev > 0 {
		nrev, err = s.KV.Update(ctx, name, b, rev)
	} else {
		nrev, err = s.KV.Create(ctx, name, b)
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return next, fmt.Errorf("write endpoint %s at revision %d: %w", name, rev, ErrConflict)
	}
	if err != nil {
		return next, fmt.Errorf("write endpoint %s: %w", name, err)
	}
	next.Revision = nrev
	stampPending(&next, nrev)
	return next, nil
}

// Update applies fn to the current record of name and writes the result by
// compare-and-set on the revision it read, re-reading and re-applying on a
// conflict (after a short jittered wait, see RetryConflicts), so that any
// number of writers stay correct: fn may run several times and must not
// have side effects that a retry would repeat. fresh
// makes the record of an endpoint that has none (Revision 0). It returns the
// record as written (Revision = the new KV revision) or as read when fn
// chose not to write.
func (s *Store) Update(ctx context.Context, name string, fresh func() events.EndpointState, fn UpdateFunc) (events.EndpointState, bool, error) {
	var out events.EndpointState
	var wrote bool
	err := RetryConflicts(ctx, func() error {
		cur, err := s.Get(ctx, name)
		if errors.Is(err, ErrNotFound) {
			cur, err = fresh(), nil
			cur.Revision = 0
		}
		out, wrote = cur, false
		if err != nil {
			return err
		}
		next, write, err := fn(cur)
		if err != nil || !write {
			return err
		}
		if next.Endpoint != name {
			return fmt.Errorf("update endpoint %s: the next record is endpoint %q", name, next.Endpoint)
		}
		written, err := s.Put(ctx, next, cur.Revision)
		if err != nil {
			return err // on a conflict someone else wrote first: re-read and re-apply
		}
		out, wrote = written, true
		return nil
	})
	if errors.Is(err, ErrConflictLimit) {
		return events.EndpointState{}, false, fmt.Errorf("update endpoint %s: %w", name, err)
	}
	return out, wrote, err
}
