package worker

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// Callback headers (contract).
const (
	// HeaderSignature is "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"
	// keyed with worker.callback_secret>"; absent when no secret is set.
	HeaderSignature = "Switchboard-Signature"
	// HeaderEventID is the finished event's id, "<job id>.finished": the
	// same on every retry, so receivers can drop duplicates.
	HeaderEventID = "Switchboard-Event-Id"
)

// CallbackConsumer is the durable consumer of SWITCHBOARD_CALLBACKS shared
// by all workers.
const CallbackConsumer = "workers-callbacks"

// Callback delivery: callbackTries POSTs at most, the pauses between them
// doubling from callbackBackoff (0.5 s, 1 s, 2 s, 4 s).
const (
	callbackTries   = 5
	callbackBackoff = 500 * time.Millisecond
	// callbackSenders is how many callbacks one worker POSTs at a time.
	callbackSenders = 4
	// callbackAckWaitMargin is added to worker.callback_timeout to make the
	// AckWait of a callback being POSTed: only a worker that died hands it
	// on.
	callbackAckWaitMargin = 5 * time.Second
	// callbackPoll is the expiry of a sender's pull request when none is
	// waiting.
	callbackPoll = 5 * time.Second
)

// Sign returns the Switchboard-Signature value of body sent at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// callbacks POSTs finished job records to their callback URLs. The
// callbacks wait in the work queue SWITCHBOARD_CALLBACKS (the worker that
// finishes a job queues a copy of its finished event there before it acks
// the job), and every worker pulls from it: a callback is acked once its
// POST succeeded, or when it failed for good, so a worker that dies
// mid-POST or with callbacks still to retry hands them to the others
// after callbackAckWait. Delivery is at least once: receivers drop
// duplicates by HeaderEventID.
type callbacks struct {
	js     jetstream.JetStream // for dead letters
	cons   jetstream.Consumer
	client *http.Client
	secret config.Secret
	log    *slog.Logger
	met    *metrics
	// backoff is the pause after the first failed try; it doubles.
	backoff time.Duration
}

// ensureCallbackConsumer creates or updates the shared callback consumer.
func (s *Service) ensureCallbackConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cc := jetstream.ConsumerConfig{
		Durable:     CallbackConsumer,
		Description: "request workers: job callbacks to POST",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     s.cfg.CallbackTimeout + callbackAckWaitMargin,
		// The worker counts the tries and acks a callback it gives up on:
		// one JetStream stopped delivering would sit in the work queue.
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	for {
		c, err := s.o.JS.CreateOrUpdateConsumer(ctx, events.StreamCallbacks, cc)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || !retryable(err) {
			return nil, fmt.Errorf("worker: create consumer %s: %w", CallbackConsumer, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// run starts n senders. They pull callbacks until pull ends and return
// once their POST in flight returned; post bounds the POSTs (ending it
// abandons them to another worker). The returned channel closes when
// every sender returned.
func (c *callbacks) run(pull, post context.Context, n int) <-chan struct{} {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for pull.Err() == nil {
				ctx, cancel := context.WithTimeout(pull, callbackPoll)
				batch, err := c.cons.Fetch(1, jetstream.FetchContext(ctx))
				if err == nil {
					for m := range batch.Messages() {
						c.handle(post, m)
					}
					err = batch.Error()
				}
				cancel()
				if err != nil && pull.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
					c.pullFailed(err)
					sleepCtx(pull, time.Second)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// pullFailed logs a failed pull: at debug level while the connection is
// down or the server restarts (the pull is tried again each second), as a
// warning otherwise.
func (c *callbacks) pullFailed(err error) {
	if errors.Is(err, jetstream.ErrServerShutdown) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrNoResponders) {
		c.log.Debug("pull job callbacks", "err", err)
		return
	}
	c.log.Warn("pull job callbacks", "err", err)
}

// handle POSTs one queued callback and acks it, or NAKs it with the next
// pause when the POST may succeed later and tries are left.
func (c *callbacks) handle(ctx context.Context, m jetstream.Msg) {
	env, err := events.Decode(m.Data())
	var fin *events.JobFinished
	if err == nil {
		var ok bool
		if fin, ok = env.Data.(*events.JobFinished); !ok {
			err = fmt.Errorf("event type %s is not %s", env.Type, events.TypeJobFinished)
		}
	}
	if err != nil { // nothing to POST, ever
		c.deadLetter(m, err)
		return
	}
	rec := &fin.JobRecord
	if u, err := url.Parse(rec.CallbackURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		c.met.callbacks.WithLabelValues("failed").Inc()
		c.log.Warn("callback url is not http(s); not called", "job", rec.ID)
		_ = m.Ack()
		return
	}
	try := 1
	if md, err := m.Metadata(); err == nil {
		try = int(md.NumDelivered)
	}
	status, err := c.post(ctx, rec)
	if err == nil && status < 300 {
		c.met.callbacks.WithLabelValues("delivered").Inc()
		_ = m.Ack()
		return
	}
	if ctx.Err() != nil { // this worker is stopping: another one tries again
		_ = m.Nak()
		return
	}
	retry := err != nil || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
	if !retry || try >= callbackTries {
		c.met.callbacks.WithLabelValues("failed").Inc()
		c.log.Warn("callback failed", "job", rec.ID, "tries", try, "status", status, "err", err)
		_ = m.Ack()
		return
	}
	c.met.callbacks.WithLabelValues("retried").Inc()
	c.log.Debug("callback failed; retrying", "job", rec.ID, "try", try, "status", status, "err", err)
	_ = m.NakWithDelay(c.backoff << (try - 1))
}

// deadLetter copies an undecodable callback to the dead-letter stream, on
// switchboard.dead.callbacks.<job id or "unknown">, and removes it from the
// queue; if the copy fails it is NAKed and tried again.
func (c *callbacks) deadLetter(m jetstream.Msg, cause error) {
	token := "unknown"
	if id := strings.TrimPrefix(m.Subject(), "switchboard.jobs.callback."); events.ValidName(id) {
		token = id
	}
	c.log.Error("undecodable job callback; dead-lettering it", "subject", m.Subject(), "err", cause)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := natsx.DeadLetter(ctx, c.js, events.DeadSubject("callbacks", token), m, "undecodable callback: "+cause.Error()); err != nil {
		c.log.Error("dead-letter a job callback; retrying later", "subject", m.Subject(), "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	c.met.callbacks.WithLabelValues("failed").Inc()
	_ = m.Term()
}

// post sends rec to its callback URL once.
func (c *callbacks) post(ctx context.Context, rec *events.JobRecord) (int, error) {
	body, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode callback: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rec.CallbackURL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("callback request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "switchboard-worker")
	req.Header.Set(HeaderEventID, events.FinishedEventID(rec.ID))
	if c.secret.IsSet() {
		req.Header.Set(HeaderSignature, Sign(c.secret.Value(), time.Now(), body))
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}
