package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// errConflict: a compare-and-set write lost to another writer.
var errConflict = errors.New("job record changed concurrently")

// records is the KV bucket switchboard-jobs. Every write is a
// compare-and-set: Create when the job has no record, Update on the
// revision read otherwise.
type records struct {
	kv jetstream.KeyValue
}

// get returns the record of id with its revision; found is false when the
// job has none yet.
func (r records) get(ctx context.Context, id string) (rec events.JobRecord, rev uint64, found bool, err error) {
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return rec, 0, false, nil
	}
	if err != nil {
		return rec, 0, false, fmt.Errorf("get job record %s: %w", id, err)
	}
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, 0, false, fmt.Errorf("decode job record %s@%d: %w", id, e.Revision(), err)
	}
	return rec, e.Revision(), true, nil
}

// put writes rec by compare-and-set: on revision rev when found, as a new
// key otherwise. It returns the new revision, or errConflict (wrapped) when
// someone else wrote first.
func (r records) put(ctx context.Context, rec *events.JobRecord, rev uint64, found bool) (uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode job record %s: %w", rec.ID, err)
	}
	return r.putData(ctx, rec.ID, b, rev, found)
}

// putData is put with the record already marshalled.
func (r records) putData(ctx context.Context, id string, b []byte, rev uint64, found bool) (uint64, error) {
	var nrev uint64
	var err error
	if found {
		nrev, err = r.kv.Update(ctx, id, b, rev)
	} else {
		nrev, err = r.kv.Create(ctx, id, b)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("write job record %s: %w", id, errConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("write job record %s: %w", id, err)
	}
	return nrev, nil
}

// finish writes the terminal record rec unless the job already has one. On
// a conflict it re-reads: a terminal record found there wins (and is
// returned with wrote false); otherwise rec is written on the new revision.
// So a job gets exactly one terminal record, whoever races for it. data is
// the JSON of rec as written (nil when another record won).
func (r records) finish(ctx context.Context, rec *events.JobRecord, rev uint64, found bool) (final *events.JobRecord, data []byte, wrote bool, err error) {
	for range 50 {
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, nil, false, fmt.Errorf("encode job record %s: %w", rec.ID, err)
		}
		_, err = r.putData(ctx, rec.ID, b, rev, found)
		if err == nil {
			return rec, b, true, nil
		}
		if !errors.Is(err, errConflict) {
			return nil, nil, false, err
		}
		cur, crev, cfound, err := r.get(ctx, rec.ID)
		if err != nil {
			return nil, nil, false, err
		}
		if cfound && cur.Status.Terminal() {
			return &cur, nil, false, nil
		}
		rev, found = crev, cfound
		if cfound && cur.StartedAt != nil && rec.StartedAt == nil {
			rec.StartedAt = cur.StartedAt
		}
	}
	return nil, nil, false, fmt.Errorf("write terminal job record %s: too many conflicts", rec.ID)
}

// save writes a non-terminal rec by compare-and-set, re-reading and
// retrying on a conflict, unless the record turned terminal meanwhile: then
// it returns that record and writes nothing.
func (r records) save(ctx context.Context, rec *events.JobRecord, rev uint64, found bool) (nrev uint64, terminal *events.JobRecord, err error) {
	for range 50 {
		nrev, err := r.put(ctx, rec, rev, found)
		if err == nil {
			return nrev, nil, nil
		}
		if !errors.Is(err, errConflict) {
			return 0, nil, err
		}
		cur, crev, cfound, err := r.get(ctx, rec.ID)
		if err != nil {
			return 0, nil, err
		}
		if cfound && cur.Status.Terminal() {
			return 0, &cur, nil
		}
		rev, found = crev, cfound
	}
	return 0, nil, fmt.Errorf("write job record %s: too many conflicts", rec.ID)
}
