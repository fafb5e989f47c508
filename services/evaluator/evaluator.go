package evaluator

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/schemas"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// ConsumerName is the durable pull consumer on SWITCHBOARD_HEALTH that every
// evaluator replica shares.
const ConsumerName = "evaluator"

// Consumer settings. MaxAckPending bounds the events in flight across all
// replicas; AckWait is how long an event a dead replica held waits before it
// is redelivered (other replicas apply it earlier when they catch up with a
// later event of the same endpoint). Applying is idempotent, so a short
// AckWait costs nothing but a duplicate delivery.
const (
	MaxAckPending = 1024
	AckWait       = 10 * time.Second
	pullBatch     = 128
	// pullExpiry bounds how long a lost pull request can leave a replica
	// idle: it is re-issued when two heartbeats (a third of it each) are
	// missed. Right after the consumer is created in a cluster, the first
	// pull may find no responder yet.
	pullExpiry = 3 * time.Second
	shards     = 32
	// PriorityGroup is the consumer's priority group in pinned mode.
	PriorityGroup = "evaluators"
	// PinnedTTL is how long the server keeps a replica pinned after its last
	// pull request: the longest a stopped replica's events wait for another.
	// Twice the pull expiry, so that an idle pinned replica stays pinned.
	PinnedTTL = 2 * pullExpiry
)

// Options configure the evaluator.
type Options struct {
	Config     *config.Config
	NC         *nats.Conn
	JS         jetstream.JetStream
	Log        *slog.Logger
	Registerer prometheus.Registerer // nil = no metrics
	// Now is the wall clock; nil means time.Now.
	Now func() time.Time
}

// Service is one evaluator replica.
type Service struct {
	cfg      *config.Config
	js       jetstream.JetStream
	log      *slog.Logger
	now      func() time.Time
	settings state.Settings
	known    map[string]bool
	source   string
	dec      events.Decoder
	m        *metrics

	ignored ignoredSet // endpoints not in the config whose events were logged
	parsed  parseCache
	// runEpoch invalidates every delivery run seen so far: it is bumped
	// when a delivered event could not be applied (see runTracker).
	runEpoch atomic.Uint64

	// Set up by Run.
	store *endpointkv.Store
	view  *endpointkv.View
	c     *committer
}

// New checks the options and makes the evaluator; Run starts it. The config
// must be validated (config.Load, Parse or Validate): New does not check it
// again.
func New(o Options) (*Service, error) {
	if o.Config == nil {
		return nil, errors.New("evaluator: Config is nil")
	}
	if o.JS == nil {
		return nil, errors.New("evaluator: JS is nil")
	}
	if o.Log == nil {
		return nil, errors.New("evaluator: Log is nil")
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("evaluator: metrics: %w", err)
	}
	s := &Service{
		cfg:      o.Config,
		js:       o.JS,
		log:      o.Log,
		now:      o.Now,
		settings: state.SettingsFrom(o.Config),
		known:    map[string]bool{},
		source:   "/evaluator/" + o.Config.Evaluator.Instance,
		dec:      events.Decoder{Schema: schemas.Validate},
		m:        m,
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, ep := range o.Config.Endpoints {
		s.known[ep.Name] = true
	}
	return s, nil
}

// Run evaluates until ctx ends; it returns nil on a clean shutdown. Events
// in flight when it stops are negatively acknowledged (or, if it dies,
// redelivered after AckWait) and applied by another replica.
func (s *Service) Run(ctx context.Context) error {
	if err := s.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The live view of every record: the timer's input and a read cache.
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.view.Run(ctx) // returns only when ctx ends
	}()
	select {
	case <-s.view.Ready():
	case <-ctx.Done():
		return nil
	}

	cons, err := s.consumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}

	// Per-endpoint serial processing within this replica: one queue per
	// shard, an endpoint always in the same shard.
	queues := make([]chan delivery, shards)
	var shardsDone sync.WaitGroup
	for i := range queues {
		queues[i] = make(chan delivery, pullBatch)
		shardsDone.Add(1)
		go func(q <-chan delivery) {
			defer shardsDone.Done()
			for d := range q {
				batch := takeBatch(q, d)
				if ctx.Err() != nil {
					for _, d := range batch {
						_ = d.msg.Nak() // leave it to another replica at once
					}
					continue
				}
				s.handleBatch(ctx, batch)
			}
		}(queues[i])
	}
	defer func() {
		for _, q := range queues {
			close(q)
		}
		shardsDone.Wait()
	}()

	// The timer: time-driven transitions and the recovery of unpublished
	// status changes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.timer(ctx)
	}()

	s.log.Info("evaluator running", "endpoints", len(s.known), "source", s.source)
	s.consume(ctx, cons, queues)
	return nil
}

// consumerCheckEvery is how often a replica checks that the consumer it
// pulls from still exists.
const consumerCheckEvery = 5 * time.Second

// consume pulls health events into the shard queues until ctx ends. It
// watches the consumer: when the subscription ends (the consumer was
// deleted while a pull waited) or the consumer is gone (a standalone server
// restarted without it, an operator deleted it, the stream was recreated),
// it creates the consumer again, with backoff, and pulls from the new one.
// It never gives up while ctx lives: a replica that stopped consuming would
// otherwise look alive and apply nothing.
func (s *Service) consume(ctx context.Context, cons jetstream.Consumer, queues []chan delivery) {
	backoff := time.Duration(0)
	for {
		if cons != nil {
			started := time.Now()
			why, err := s.consumeFrom(ctx, cons, queues)
			if ctx.Err() != nil {
				return
			}
			if time.Since(started) > consumerCheckEvery {
				backoff = 0 // it ran for a while: this is a new failure
			}
			s.m.consumerRestarts.Inc()
			s.log.Warn("health consumer lost; creating it again", "reason", why, "err", err)
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
		if !sleep(ctx, backoff) {
			return
		}
		var err error
		if cons, err = s.consumer(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Error("create the health consumer; retrying", "err", err, "in", backoff)
			cons = nil
		}
	}
}

// consumeFrom pulls from cons until ctx ends or the consumer is lost, and
// says why it stopped. The subscription is stopped when it returns.
func (s *Service) consumeFrom(ctx context.Context, cons jetstream.Consumer, queues []chan delivery) (string, error) {
	// check is nudged by pull errors that may mean the consumer is gone.
	check := make(chan struct{}, 1)
	nudge := func() {
		select {
		case check <- struct{}{}:
		default:
		}
	}
	var runs runTracker // used by the consume callback only: it runs on one goroutine
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		d := delivery{msg: msg, run: runs.next(msg, s.runEpoch.Load())}
		select {
		case queues[shardOf(msg.Subject())] <- d:
		case <-ctx.Done():
			_ = msg.Nak()
		}
	}, s.consumeOpts(
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrConsumerNotFound),
				errors.Is(err, jetstream.ErrConsumerDeleted):
				// No responder: in a cluster, the consumer has no leader yet
				// (the pull is retried); on a standalone server, it may be gone.
				s.log.Debug("consume health events: no consumer answered; checking it", "err", err)
				nudge()
			case errors.Is(err, jetstream.ErrServerShutdown), errors.Is(err, jetstream.ErrPinIDMismatch),
				errors.Is(err, jetstream.ErrConsumerLeadershipChanged):
				// A server restarts or hands the consumer over: the
				// subscription pulls again by itself (without the old pin).
				s.log.Info("consume health events: the server moved on; pulling again", "err", err)
			default:
				s.log.Warn("consume health events", "err", err)
			}
		}))...)
	if err != nil {
		return "consume failed", fmt.Errorf("consume %s: %w", events.StreamHealth, err)
	}
	defer func() {
		// Stop pulling, then let the shards hand back what they still hold.
		cc.Stop()
		<-cc.Closed()
	}()
	t := time.NewTicker(consumerCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return "", nil
		case <-cc.Closed():
			return "the subscription ended", nil
		case <-t.C:
		case <-check:
		}
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cons.Info(ictx)
		cancel()
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return "the consumer does not exist", err
		}
		// Any other error (NATS unreachable) says nothing about the
		// consumer: the subscription resumes when NATS is back.
	}
}

// setup binds the bucket and streams and makes a record for every
// configured endpoint that has none, so that status lists them all.
func (s *Service) setup(ctx context.Context) error {
	store, err := endpointkv.Open(ctx, s.js)
	if err != nil {
		return fmt.Errorf("evaluator: %w", err)
	}
	s.store = store
	if _, err = s.js.Stream(ctx, events.StreamHealth); err != nil {
		return fmt.Errorf("evaluator: stream %s: %w", events.StreamHealth, err)
	}
	status, err := s.js.Stream(ctx, events.StreamStatus)
	if err != nil {
		return fmt.Errorf("evaluator: stream %s: %w", events.StreamStatus, err)
	}
	s.view = endpointkv.NewView(store.KV, s.log.With("component", "view"), s.m.observe)
	s.c = newCommitter(store, status, natsx.Publisher{JS: s.js, Source: s.source}, s.log, s.m)
	s.c.onWrite = s.view.Put
	s.c.checkBucket(ctx)
	now := s.now()
	for _, ep := range s.cfg.Endpoints {
		_, err := store.Put(ctx, state.New(ep.Name, now), 0)
		if err != nil && !errors.Is(err, endpointkv.ErrConflict) {
			return fmt.Errorf("evaluator: create the record of endpoint %s: %w", ep.Name, err)
		}
	}
	return nil
}

// consumeOpts are the options of Consume: the pull batch and expiry, and in
// pinned mode the priority group.
func (s *Service) consumeOpts(extra ...jetstream.PullConsumeOpt) []jetstream.PullConsumeOpt {
	opts := []jetstream.PullConsumeOpt{
		jetstream.PullMaxMessages(pullBatch), jetstream.PullExpiry(pullExpiry), jetstream.PullHeartbeat(pullExpiry / 3),
	}
	if s.cfg.Evaluator.Consume == config.ConsumePinned {
		opts = append(opts, jetstream.PullPriorityGroup(PriorityGroup))
	}
	return append(opts, extra...)
}

// consumer creates (or updates, identically) the shared durable consumer.
func (s *Service) consumer(ctx context.Context) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "state evaluator: probe results and request outcomes, shared by every replica",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait,
		MaxAckPending: MaxAckPending,
		// On one server the consumer is file-backed, so that the server
		// restores it after a restart (a memory consumer would be gone).
		// Replicated, its state lives in its Raft group on every replica
		// and survives a server's restart in memory too, while a
		// file-backed group fsyncs its log at every ack: a third of the
		// evaluator's throughput (make bench).
		MemoryStorage: s.healthReplicated(ctx),
	}
	if s.cfg.Evaluator.Consume == config.ConsumePinned {
		// One replica at a time: JetStream would otherwise hand each replica
		// every third event, and every replica would hold some events of
		// every endpoint, redoing the others' compare-and-set work.
		cfg.Description = "state evaluator: probe results and request outcomes, applied by the pinned replica"
		cfg.PriorityPolicy = jetstream.PriorityPolicyPinned
		cfg.PriorityGroups = []string{PriorityGroup}
		cfg.PinnedTTL = PinnedTTL
	}
	var c jetstream.Consumer
	var err error
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err = s.js.CreateOrUpdateConsumer(cctx, events.StreamHealth, cfg)
		cancel()
		if err == nil {
			break
		}
		if storageChanged(err) {
			// Made with the other storage (by an older evaluator, or for
			// another replica count): the storage of a consumer cannot be
			// updated, so it is made again. Its unacknowledged events are
			// redelivered; applied ones are acknowledged as duplicates.
			s.log.Warn("the health consumer has the wrong storage; recreating it", "consumer", ConsumerName,
				"memory", cfg.MemoryStorage)
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if derr := s.js.DeleteConsumer(dctx, events.StreamHealth, ConsumerName); derr != nil && !errors.Is(derr, jetstream.ErrConsumerNotFound) {
				s.log.Warn("delete the memory-backed health consumer", "err", derr)
			}
			cancel()
			continue
		}
		if ctx.Err() != nil || attempt == 20 {
			return nil, fmt.Errorf("evaluator: consumer %s on %s: %w", ConsumerName, events.StreamHealth, err)
		}
		s.log.Debug("create the health consumer; retrying", "err", err)
		if !sleep(ctx, 100*time.Millisecond) { // replicas creating it at once can collide
			return nil, ctx.Err()
		}
	}
	// In a cluster the consumer answers pulls only once it has a leader; a
	// pull before that is lost until its heartbeat times out.
	for waited := 0; ; waited++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.Info(cctx)
		cancel()
		if err == nil && (info.Cluster == nil || info.Cluster.Leader != "") {
			return c, nil
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) && waited >= 100 {
			// Deleted again since it was made: the caller makes it again.
			return nil, fmt.Errorf("evaluator: consumer %s on %s: %w", ConsumerName, events.StreamHealth, err)
		}
		s.log.Debug("wait for the health consumer's leader", "err", err)
		if !sleep(ctx, 50*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
}

// healthReplicated reports whether SWITCHBOARD_HEALTH has more than one
// replica (false when that cannot be read: file-backed is the safe side).
func (s *Service) healthReplicated(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	str, err := s.js.Stream(ctx, events.StreamHealth)
	return err == nil && str.CachedInfo().Config.Replicas > 1
}

// storageChanged reports whether a consumer update failed because it would
// change the consumer's storage type.
func storageChanged(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "storage type can not be updated")
}

// sleep waits for d or until ctx ends, and reports whether ctx is alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// takeBatch returns first and whatever else q holds right now, up to
// pullBatch messages.
func takeBatch(q <-chan delivery, first delivery) []delivery {
	batch := []delivery{first}
	for len(batch) < pullBatch {
		select {
		case m, ok := <-q:
			if !ok {
				return batch
			}
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// shardOf maps a subject (so, an endpoint) to a shard.
func shardOf(subject string) int {
	h := fnv.New32a()
	h.Write([]byte(subject[strings.LastIndexByte(subject, '.')+1:]))
	return int(h.Sum32() % shards)
}

// delivery is a message as this replica received it, with the run it came
// in.
type delivery struct {
	msg jetstream.Msg
	run run
}

// run places a message in a contiguous run of deliveries to this replica.
//
// The consumer delivers every message of the stream, in stream order, each
// first delivery with the next consumer sequence. So when this replica
// receives first deliveries with consecutive consumer sequences, it has
// received every stream message from the run's first one on, and for an
// endpoint whose record applied everything before that, no event of the
// endpoint can be in flight elsewhere: the evaluator then skips asking the
// stream for it. A redelivery or a gap in consumer sequences starts a new
// run; an event that could not be applied bumps the epoch, which voids every
// run seen so far (its later events may not skip it).
type run struct {
	start uint64 // stream sequence of the run's first message; 0: none
	epoch uint64
}

// valid reports whether the run vouches for stream sequences from start on.
func (r run) valid(epoch uint64) bool { return r.start > 0 && r.epoch == epoch }

// runTracker follows the delivery runs of one consumer subscription.
type runTracker struct {
	lastConsumerSeq uint64
	cur             run
}

func (t *runTracker) next(msg jetstream.Msg, epoch uint64) run {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered != 1 {
		t.cur, t.lastConsumerSeq = run{}, 0
		return run{}
	}
	if t.cur.start == 0 || t.cur.epoch != epoch || md.Sequence.Consumer != t.lastConsumerSeq+1 {
		t.cur = run{start: md.Sequence.Stream, epoch: epoch}
	}
	t.lastConsumerSeq = md.Sequence.Consumer
	return t.cur
}
