package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/router"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
)

// Defaults of Options fields.
const (
	DefaultShutdownGrace = 10 * time.Second
	// DefaultLocalWait is the longest wait for an endpoint that a worker
	// sits out in place; a longer one is a NAK with delay (durable) or a 503
	// (interactive).
	DefaultLocalWait = time.Second
	// DefaultRunningAfter is how long a durable job runs before its record
	// is written "running": faster jobs go from queued to terminal in one
	// write.
	DefaultRunningAfter = 250 * time.Millisecond
	// defaultUnknownWait is the wait when no endpoint admits the job and
	// none says when it will (drained, force_open).
	defaultUnknownWait = 5 * time.Second
)

// ConsumerName is the durable consumer of jobs of priority p, shared by all
// workers.
func ConsumerName(p events.Priority) string { return "workers-" + string(p) }

// Options configure a Service.
type Options struct {
	Config     *config.Config
	NC         *nats.Conn
	JS         jetstream.JetStream
	Log        *slog.Logger
	Registerer prometheus.Registerer // nil = no metrics

	// HTTPClient makes the upstream calls; nil = upstream.NewClient.
	HTTPClient *http.Client
	// CallbackClient posts job callbacks; nil = a client with the timeout
	// worker.callback_timeout.
	CallbackClient *http.Client
	// Now is the clock; nil = time.Now.
	Now func() time.Time
	// ShutdownGrace bounds how long Run lets in-flight jobs finish after its
	// ctx ended; jobs still running then are abandoned (durable: NAKed for
	// another worker; interactive: answered 503). Default 10 s.
	ShutdownGrace time.Duration
	// LocalWait is the longest endpoint wait sat out in place (default 1 s).
	LocalWait time.Duration
	// RunningAfter: see DefaultRunningAfter. Negative writes "running" at
	// once.
	RunningAfter time.Duration
	// OnEndpointState, when set, is called with every endpoint record the
	// worker's view applies, right after it applied it (tests use it to
	// know when this worker saw a breaker open).
	OnEndpointState func(events.EndpointState)

	// beforeCall, when set, runs before each upstream call of a durable job
	// (tests: a non-nil error makes the handler behave as if the process
	// died there, leaving the message unacked).
	beforeCall func(job *events.JobSubmitted, delivery int) error
	// callbackBackoff, when set, replaces callbackBackoff (tests).
	callbackBackoff time.Duration
	// handOff, when set, runs in the durable dispatcher before it hands a
	// pulled job to a slot (tests: a sleep simulates a stalled process).
	handOff func(m jetstream.Msg)
}

// Service is a request worker. Create it with New and start it with Run.
type Service struct {
	o       Options
	cfg     config.Worker
	log     *slog.Logger
	now     func() time.Time
	source  string
	enc     eventEncoder
	view    *endpointkv.View
	store   *endpointkv.Store
	router  *router.Router
	client  *http.Client
	records records
	asyncJS jetstream.JetStream // outcome events, published asynchronously
	finJS   jetstream.JetStream // finished events, published asynchronously
	results jetstream.Stream    // SWITCHBOARD_RESULTS, to look up finished events
	tails   sync.WaitGroup      // jobs waiting for their finished event's ack
	met     *metrics

	// hard ends every job's context when the shutdown grace is over.
	hard       context.Context
	hardCancel context.CancelFunc

	mu       sync.Mutex
	inflight map[string]context.CancelCauseFunc // interactive calls by reply inbox

	ready chan struct{}
}

// Ready is closed once the worker serves both lanes (its endpoint view is
// loaded and its subscriptions are in place).
func (s *Service) Ready() <-chan struct{} { return s.ready }

// errCrash is returned by a beforeCall hook to simulate a crash.
var errCrash = errors.New("simulated crash")

// New validates o and builds the worker; it starts nothing.
func New(o Options) (*Service, error) {
	switch {
	case o.Config == nil:
		return nil, errors.New("worker: Config is nil")
	case o.NC == nil || o.JS == nil:
		return nil, errors.New("worker: NC and JS are required")
	case len(o.Config.Endpoints) == 0:
		return nil, errors.New("worker: no endpoints configured")
	}
	w := o.Config.Worker
	switch {
	case !events.ValidName(w.Instance):
		return nil, fmt.Errorf("worker: instance %q must match [A-Za-z0-9_-]+", w.Instance)
	case w.Concurrency < 1:
		return nil, fmt.Errorf("worker: concurrency must be at least 1, got %d", w.Concurrency)
	case w.MaxAttempts < 1:
		return nil, fmt.Errorf("worker: max_attempts must be at least 1, got %d", w.MaxAttempts)
	case w.JobTimeout <= 0 || w.RequestTimeout <= 0 || w.AckWait <= 0:
		return nil, errors.New("worker: job_timeout, request_timeout and ack_wait must be positive")
	case w.MaxDeliver < 2:
		return nil, fmt.Errorf("worker: max_deliver must be at least 2, got %d", w.MaxDeliver)
	case w.MaxAckPending < 1:
		return nil, fmt.Errorf("worker: max_ack_pending must be at least 1, got %d", w.MaxAckPending)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ShutdownGrace <= 0 {
		o.ShutdownGrace = DefaultShutdownGrace
	}
	if o.LocalWait <= 0 {
		o.LocalWait = DefaultLocalWait
	}
	if o.RunningAfter == 0 {
		o.RunningAfter = DefaultRunningAfter
	}
	if o.HTTPClient == nil {
		o.HTTPClient = upstream.NewClient(2 * w.Concurrency)
	}
	if o.CallbackClient == nil {
		o.CallbackClient = &http.Client{Timeout: o.Config.Worker.CallbackTimeout}
	}
	s := &Service{
		o:        o,
		cfg:      w,
		log:      o.Log.With("component", "worker", "instance", w.Instance),
		now:      o.Now,
		source:   "/worker/" + w.Instance,
		enc:      newEventEncoder("/worker/" + w.Instance),
		client:   o.HTTPClient,
		inflight: map[string]context.CancelCauseFunc{},
		ready:    make(chan struct{}),
	}
	var err error
	s.met, err = newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Run serves both lanes until ctx ends, then shuts down in order: it stops
// taking jobs, lets in-flight ones finish within ShutdownGrace (then
// abandons them: durable jobs are NAKed, interactive calls answered), NAKs
// a durable job it was handing to a slot so other workers take it at once,
// flushes the outcome events and waits for pending callbacks. It returns nil after a
// clean shutdown and an error only if it could not start.
func (s *Service) Run(ctx context.Context) error {
	ctx0 := ctx
	setupCtx, setupCancel := context.WithTimeout(ctx0, 30*time.Second)
	defer setupCancel()

	kv, err := s.o.JS.KeyValue(setupCtx, events.BucketEndpoints)
	if err != nil {
		return fmt.Errorf("worker: open kv bucket %s: %w", events.BucketEndpoints, err)
	}
	jkv, err := s.o.JS.KeyValue(setupCtx, events.BucketJobs)
	if err != nil {
		return fmt.Errorf("worker: open kv bucket %s: %w", events.BucketJobs, err)
	}
	s.records = records{kv: jkv}
	if s.results, err = s.o.JS.Stream(setupCtx, events.StreamResults); err != nil {
		return fmt.Errorf("worker: open stream %s: %w", events.StreamResults, err)
	}
	s.store = &endpointkv.Store{KV: kv}
	s.view = endpointkv.NewView(kv, s.log, s.o.OnEndpointState)
	s.router, err = router.New(router.Options{Config: s.o.Config, States: s.view})
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	s.asyncJS, err = jetstream.New(s.o.NC,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			s.met.outcomeErrors.Inc()
			s.log.Warn("publish request outcome failed", "subject", m.Subject, "err", err)
		}))
	if err != nil {
		return fmt.Errorf("worker: jetstream: %w", err)
	}
	s.finJS, err = jetstream.New(s.o.NC,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(15*time.Second))
	if err != nil {
		return fmt.Errorf("worker: jetstream: %w", err)
	}
	consumers, err := s.ensureConsumers(setupCtx)
	if err != nil {
		return err
	}
	cbCons, err := s.ensureCallbackConsumer(setupCtx)
	if err != nil {
		return err
	}

	var bg sync.WaitGroup // background actors that end with ctx
	viewCtx, stopView := context.WithCancel(context.Background())
	bg.Add(1)
	go func() { defer bg.Done(); _ = s.view.Run(viewCtx) }()
	defer func() { stopView(); bg.Wait() }()

	select {
	case <-s.view.Ready():
	case <-ctx0.Done():
		return nil
	}
	s.log.Info("endpoint view ready", "endpoints", len(s.view.Snapshot()))

	s.hard, s.hardCancel = context.WithCancel(context.Background())
	defer s.hardCancel()
	cb := &callbacks{js: s.o.JS, cons: cbCons, client: s.o.CallbackClient, secret: s.cfg.CallbackSecret, log: s.log, met: s.met,
		backoff: cmp.Or(s.o.callbackBackoff, callbackBackoff)}
	cbPull, stopCBPull := context.WithCancel(context.Background())
	cbPost, stopCBPost := context.WithCancel(context.Background())
	stopCB := func() { stopCBPull(); stopCBPost() }
	cbDone := cb.run(cbPull, cbPost, callbackSenders)

	// Interactive lane: a queue subscription plus the cancel broadcast.
	jobs := &tracker{} // every job handler, both lanes
	isem := make(chan struct{}, 8*s.cfg.Concurrency)
	isub, err := s.o.NC.QueueSubscribe(events.SubjectJobInteractive, events.QueueWorkers, func(m *nats.Msg) {
		select {
		case isem <- struct{}{}:
		default: // full: answer now rather than stall every call behind this one
			s.refuseBusy(m, cap(isem))
			return
		}
		if !jobs.add() {
			<-isem
			s.refuseInteractive(m)
			return
		}
		go func() {
			defer func() { <-isem; jobs.done() }()
			s.handleInteractive(m)
		}()
	})
	if err != nil {
		stopCB()
		<-cbDone
		return fmt.Errorf("worker: subscribe %s: %w", events.SubjectJobInteractive, err)
	}
	csub, err := s.o.NC.Subscribe(lane.SubjectCancel, func(m *nats.Msg) { s.cancelInteractive(string(m.Data)) })
	if err != nil {
		_ = isub.Unsubscribe()
		stopCB()
		<-cbDone
		return fmt.Errorf("worker: subscribe %s: %w", lane.SubjectCancel, err)
	}

	// Durable lane: a dispatcher pulling for free slots, Concurrency slots.
	d, err := s.startDurable()
	if err != nil {
		_ = isub.Unsubscribe()
		_ = csub.Unsubscribe()
		stopCB()
		<-cbDone
		return err
	}
	for range s.cfg.Concurrency {
		jobs.add()
		go func() { defer jobs.done(); s.slot(d) }()
	}
	bg.Add(1)
	go func() { defer bg.Done(); s.sampleQueueDepth(viewCtx, consumers) }()
	s.log.Info("worker running", "concurrency", s.cfg.Concurrency, "strategy", s.cfg.Strategy)
	// The subscriptions must be registered with the server before Ready:
	// a request sent right after would otherwise find no responders.
	if err := s.o.NC.FlushTimeout(5 * time.Second); err != nil {
		s.log.Warn("flush subscriptions", "err", err)
	}
	close(s.ready)

	<-ctx0.Done()
	s.log.Info("worker stopping")

	// 1. Take nothing new: drain the interactive subscription (calls
	//    already delivered to it still run, or are refused with a 503 once
	//    the grace began) and stop the durable dispatcher (a job it holds
	//    is NAKed, its pull requests end).
	if err := isub.Drain(); err != nil {
		_ = isub.Unsubscribe()
	}
	d.stop()
	// 2. Let in-flight jobs finish within the grace, then abandon them.
	done := make(chan struct{})
	go func() { jobs.closeAndWait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.o.ShutdownGrace):
		s.log.Warn("shutdown grace over; abandoning in-flight jobs")
		s.hardCancel()
		<-done
	}
	d.wait()
	s.tails.Wait() // every finished event acknowledged (or failed) and its job acked
	for deadline := time.Now().Add(2 * time.Second); isub.IsValid() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the drain ends once its last callback returned
	}
	_ = csub.Unsubscribe()
	// 3. Flush the outcome events.
	select {
	case <-s.asyncJS.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
		s.log.Warn("outcome events not all acknowledged at shutdown", "pending", s.asyncJS.PublishAsyncPending())
	}
	// 4. Take no more callbacks; let those being POSTed finish within the
	//    grace, then hand them back (NAK) to the other workers. Callbacks
	//    waiting for a retry are in the stream already.
	stopCBPull()
	select {
	case <-cbDone:
	case <-time.After(s.o.ShutdownGrace):
		s.log.Warn("callbacks still being posted at shutdown; handing them back")
		stopCBPost()
		<-cbDone
	}
	stopCB()
	// Release the connections to the endpoints (a stopped worker in a
	// process that goes on, as in dev mode or tests, would hold them).
	s.client.CloseIdleConnections()
	s.o.CallbackClient.CloseIdleConnections()
	s.log.Info("worker stopped")
	return nil
}

// ensureConsumers creates or updates the durable consumer of every
// priority.
func (s *Service) ensureConsumers(ctx context.Context) ([]jetstream.Consumer, error) {
	var out []jetstream.Consumer
	for _, p := range events.Priorities() {
		cc := jetstream.ConsumerConfig{
			Durable:       ConsumerName(p),
			Description:   "request workers: " + string(p) + " priority jobs",
			FilterSubject: events.JobSubmitSubject(p),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       s.cfg.AckWait,
			// Redeliver without limit: a job JetStream stopped delivering
			// would be lost with no record saying so (a NAK at shutdown or
			// for a wait on the last delivery). The worker enforces
			// max_deliver itself and ends such jobs with a record.
			MaxDeliver:    -1,
			MaxAckPending: s.cfg.MaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			// No BackOff (it would replace AckWait and redeliver running
			// jobs) and no InactiveThreshold (a durable must not vanish).
		}
		var c jetstream.Consumer
		var err error
		for {
			c, err = s.o.JS.CreateOrUpdateConsumer(ctx, events.StreamJobs, cc)
			if err == nil || ctx.Err() != nil || !retryable(err) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return nil, fmt.Errorf("worker: create consumer %s: %w", cc.Durable, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func retryable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrTimeout)
}

// sampleQueueDepth samples the pending count of every priority consumer.
func (s *Service) sampleQueueDepth(ctx context.Context, consumers []jetstream.Consumer) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		for i, c := range consumers {
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := c.Info(ictx)
			cancel()
			if err == nil {
				s.met.queueDepth.WithLabelValues(string(events.Priorities()[i])).Set(float64(info.NumPending))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tracker is a WaitGroup that refuses new work once closed, so that a
// subscription callback racing the shutdown cannot Add after Wait began.
type tracker struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}
