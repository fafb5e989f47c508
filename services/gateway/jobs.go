package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// ErrJobNotFound is returned for a job id with no record.
var ErrJobNotFound = errors.New("job not found")

// ErrJobFinished is returned when cancelling a job that already reached a
// terminal status.
var ErrJobFinished = errors.New("job already finished")

// MaxWait bounds a long-poll on a job record.
const MaxWait = 60 * time.Second

// Jobs submits durable jobs and reads and cancels their records in KV
// switchboard-jobs. The gateway and `switchboard submit` share it, so a job
// is created the same way whichever door it came through.
//
// Every write to a record is a compare-and-set on the revision read, and a
// terminal record is never changed.
type Jobs struct {
	JS jetstream.JetStream
	// KV is the bucket switchboard-jobs.
	KV jetstream.KeyValue
	// Source is the CloudEvent source of what it publishes, e.g.
	// "/gateway/<instance>".
	Source string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// OpenJobs binds the jobs bucket (it must be provisioned).
func OpenJobs(ctx context.Context, js jetstream.JetStream, source string) (*Jobs, error) {
	kv, err := js.KeyValue(ctx, events.BucketJobs)
	if err != nil {
		return nil, fmt.Errorf("open kv bucket %s: %w", events.BucketJobs, err)
	}
	return &Jobs{JS: js, KV: kv, Source: source}, nil
}

func (j *Jobs) now() time.Time {
	if j.Now != nil {
		return j.Now().UTC()
	}
	return time.Now().UTC()
}

// Submission is the result of Submit.
type Submission struct {
	Record   events.JobRecord
	Revision uint64
	// Created is false when the job already existed: nothing new was
	// queued and Record is the existing job's.
	Created bool
}

// Submit accepts a durable job: if a record with its id exists it is
// returned as is (idempotent beyond the stream's duplicate window);
// otherwise the JobSubmitted event is published on its submit subject
// (Nats-Msg-Id = job id, so a duplicate within the window collapses) and,
// only after JetStream acknowledged it, the `queued` record is created. A
// worker that took the job first has created its record already; that
// record is returned. An error means the job may not have been accepted:
// submitting again with the same id is safe.
func (j *Jobs) Submit(ctx context.Context, job *events.JobSubmitted) (Submission, error) {
	rec, rev, err := j.Get(ctx, job.ID)
	if err == nil {
		return Submission{Record: rec, Revision: rev}, nil
	}
	if !errors.Is(err, ErrJobNotFound) {
		return Submission{}, err
	}
	cr, err := events.ParseChatRequest(job.Request)
	if err != nil {
		return Submission{}, fmt.Errorf("submit job %s: request %w", job.ID, err)
	}
	ack, err := natsx.Publisher{JS: j.JS, Source: j.Source}.Publish(ctx, job.ID, job)
	if err != nil {
		return Submission{}, fmt.Errorf("submit job %s: %w", job.ID, err)
	}
	rec = lane.QueuedRecord(job, cr.Model, j.now())
	b, err := json.Marshal(rec)
	if err != nil {
		return Submission{}, fmt.Errorf("submit job %s: encode record: %w", job.ID, err)
	}
	rev, err = j.KV.Create(ctx, job.ID, b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		// A worker (or a concurrent submit) wrote the record first.
		rec, rev, err = j.Get(ctx, job.ID)
		if err != nil {
			return Submission{}, err
		}
		return Submission{Record: rec, Revision: rev, Created: !ack.Duplicate}, nil
	}
	if err != nil {
		return Submission{}, fmt.Errorf("submit job %s: create record: %w", job.ID, err)
	}
	return Submission{Record: rec, Revision: rev, Created: !ack.Duplicate}, nil
}

// DecodeRecord parses a job record entry.
func DecodeRecord(e jetstream.KeyValueEntry) (events.JobRecord, error) {
	var rec events.JobRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return rec, fmt.Errorf("job record %s@%d: %w", e.Key(), e.Revision(), err)
	}
	return rec, nil
}

// Get returns the record of job id and its revision, or ErrJobNotFound.
func (j *Jobs) Get(ctx context.Context, id string) (events.JobRecord, uint64, error) {
	e, err := j.KV.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return events.JobRecord{}, 0, fmt.Errorf("job %s: %w", id, ErrJobNotFound)
	}
	if err != nil {
		return events.JobRecord{}, 0, fmt.Errorf("get job %s: %w", id, err)
	}
	rec, err := DecodeRecord(e)
	return rec, e.Revision(), err
}

// Wait returns the record of job id once it is terminal, or the latest one
// when d passed (capped at MaxWait) or ctx ended first. It watches the key,
// so it answers as soon as the terminal record is written.
func (j *Jobs) Wait(ctx context.Context, id string, d time.Duration) (events.JobRecord, error) {
	rec, _, err := j.Get(ctx, id)
	if err != nil || rec.Status.Terminal() || d <= 0 {
		return rec, err
	}
	wctx, cancel := context.WithTimeout(ctx, min(d, MaxWait))
	defer cancel()
	w, err := j.KV.Watch(wctx, id)
	if err != nil {
		return rec, fmt.Errorf("watch job %s: %w", id, err)
	}
	defer w.Stop()
	for {
		select {
		case <-wctx.Done():
			return rec, nil
		case e, ok := <-w.Updates():
			if !ok {
				return rec, nil
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			next, err := DecodeRecord(e)
			if err != nil {
				return rec, err
			}
			rec = next
			if rec.Status.Terminal() {
				return rec, nil
			}
		}
	}
}

// Cancel ends job id as `cancelled` unless it is already terminal (then it
// returns the record and ErrJobFinished), by compare-and-set, and then
// publishes its finished event; workers skip a cancelled job. Cancel is
// idempotent: for a job that is cancelled already it publishes the finished
// event again (it collapses by its id) and succeeds, so a cancel whose
// publish failed can simply be retried.
func (j *Jobs) Cancel(ctx context.Context, id string) (events.JobRecord, error) {
	for range 100 {
		rec, rev, err := j.Get(ctx, id)
		if err != nil {
			return rec, err
		}
		if rec.Status == events.JobCancelled {
			return rec, j.publishFinished(ctx, rec)
		}
		if rec.Status.Terminal() {
			return rec, fmt.Errorf("cancel job %s: %w (%s)", id, ErrJobFinished, rec.Status)
		}
		now := j.now()
		rec.Status = events.JobCancelled
		rec.Error = &events.JobError{Class: events.ClassCallerCanceled, Message: "cancelled by the client"}
		rec.FinishedAt = &now
		rec.UpdatedAt = now
		b, err := json.Marshal(rec)
		if err != nil {
			return rec, fmt.Errorf("cancel job %s: encode record: %w", id, err)
		}
		if _, err := j.KV.Update(ctx, id, b, rev); errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // a worker wrote in between: re-read
		} else if err != nil {
			return rec, fmt.Errorf("cancel job %s: write record: %w", id, err)
		}
		return rec, j.publishFinished(ctx, rec)
	}
	return events.JobRecord{}, fmt.Errorf("cancel job %s: too many compare-and-set conflicts", id)
}

// publishFinished publishes the finished event of a cancelled job and, when
// the job has a callback URL, queues its callback (the workers POST it).
func (j *Jobs) publishFinished(ctx context.Context, rec events.JobRecord) error {
	m, err := natsx.EncodeMsg(j.Source, events.FinishedEventID(rec.ID), &events.JobFinished{JobRecord: rec})
	if err == nil {
		_, err = j.JS.PublishMsg(ctx, m)
	}
	if err == nil && rec.CallbackURL != "" {
		_, err = j.JS.PublishMsg(ctx, natsx.CallbackMsg(rec.ID, m.Header, m.Data))
	}
	if err != nil {
		return fmt.Errorf("cancel job %s: record is cancelled but its finished event or callback was not published (retry the cancel): %w", rec.ID, err)
	}
	return nil
}
