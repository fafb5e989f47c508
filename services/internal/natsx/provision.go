package natsx

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// Streams returns the configuration of every stream of the contract
// (DESIGN §3) for the given NATS settings.
func Streams(cfg config.NATS) []jetstream.StreamConfig {
	s := cfg.Streams
	r := cfg.Replicas
	// Probe results and request outcomes are telemetry: one per probe and
	// per upstream call, each superseded by the next. On a single replica
	// (where a write is otherwise fsynced before its ack) the HEALTH stream
	// may flush asynchronously: a crash of the server loses at most the
	// last writes, never a job, a result or a status change. Replicated
	// streams are covered by their Raft log instead (and the server refuses
	// async persistence on them).
	// The job stream takes exactly the priorities a consumer serves: a job
	// published on another token would otherwise be stored, acknowledged
	// and never run. This way its publisher gets an error (no stream).
	var jobSubjects []string
	for _, p := range events.Priorities() {
		jobSubjects = append(jobSubjects, events.JobSubmitSubject(p))
	}
	healthPersist := jetstream.DefaultPersistMode
	if r == 1 && !s.HealthFsync {
		healthPersist = jetstream.AsyncPersistMode
	}
	return []jetstream.StreamConfig{
		{
			Name:        events.StreamHealth,
			Description: "probe results and request outcomes, read by the state evaluator",
			Subjects:    []string{events.SubjectProbeAll, events.SubjectOutcomeAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.HealthMaxAge,
			Duplicates:  config.EventDuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			PersistMode: healthPersist,
		},
		{
			Name:        events.StreamStatus,
			Description: "endpoint status changes",
			Subjects:    []string{events.SubjectStatusAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.StatusMaxAge,
			Duplicates:  config.EventDuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
		},
		{
			Name:        events.StreamJobs,
			Description: "durable chat jobs, a work queue shared by the request workers",
			Subjects:    jobSubjects,
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      s.JobTTL,
			Duplicates:  s.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
		},
		{
			Name:        events.StreamResults,
			Description: "finished chat jobs, one event per job",
			Subjects:    []string{events.SubjectJobDoneAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.ResultsMaxAge,
			Duplicates:  s.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
		},
		{
			// Only jobs with a callback URL pass through it: a copy of
			// their finished event waits here until a worker POSTed it,
			// so that a callback survives the worker that finished the job.
			Name:        events.StreamCallbacks,
			Description: "job callbacks still to POST, a work queue shared by the request workers",
			Subjects:    []string{events.SubjectJobCallbackAll},
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      s.ResultsMaxAge,
			Duplicates:  s.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
		},
		{
			Name:        events.StreamDLQ,
			Description: "dead letters: jobs and events that could not be processed, with the reason",
			Subjects:    []string{events.SubjectJobDeadAll, events.SubjectDeadAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.DLQMaxAge,
			Duplicates:  s.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
		},
	}
}

// Buckets returns the configuration of every KV bucket of the contract.
func Buckets(cfg config.NATS) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket:      events.BucketEndpoints,
			Description: "endpoint health and breaker state, written by the evaluator (compare-and-set)",
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		},
		{
			Bucket:      events.BucketJobs,
			Description: "job records",
			History:     1,
			TTL:         cfg.Streams.JobTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		},
	}
}

// Provision creates or updates every stream and KV bucket of the contract and
// waits until each has a leader. It is idempotent: any number of services may
// run it at start.
func Provision(ctx context.Context, js jetstream.JetStream, cfg config.NATS) error {
	for _, sc := range Streams(cfg) {
		err := retry(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateStream(ctx, sc)
			return err
		})
		if err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
		if err := waitLeader(ctx, js, sc.Name); err != nil {
			return err
		}
	}
	for _, kc := range Buckets(cfg) {
		err := retry(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateKeyValue(ctx, kc)
			return err
		})
		if err != nil {
			return fmt.Errorf("provision kv bucket %s: %w", kc.Bucket, err)
		}
		if err := waitLeader(ctx, js, "KV_"+kc.Bucket); err != nil {
			return err
		}
	}
	return nil
}

// retry runs op with a short per-call timeout until it succeeds, fails for
// good, or ctx ends. In a cluster, two services creating the same stream at
// once can leave one request unanswered (the server is busy with the other's
// assignment) or answered with "already in use": both resolve on a retry.
func retry(ctx context.Context, op func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := op(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) &&
			!isNoResponders(err) && !errors.Is(err, jetstream.ErrBucketExists) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitLeader waits until a stream has an elected leader, so that the first
// publish does not race the election.
func waitLeader(ctx context.Context, js jetstream.JetStream, name string) error {
	for {
		s, err := js.Stream(ctx, name)
		if err == nil {
			var info *jetstream.StreamInfo
			info, err = s.Info(ctx)
			if err == nil && (info.Cluster == nil || info.Cluster.Leader != "") {
				return nil
			}
		}
		if err != nil && !retryable(err) {
			return fmt.Errorf("provision %s: wait for leader: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("provision %s: wait for leader: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func retryable(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		isNoResponders(err)
}
