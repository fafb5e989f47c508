package worker

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
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

// callbackTries is how often a callback is tried; the pauses between tries
// double from callbackBackoff.
const (
	callbackTries   = 5
	callbackBackoff = 500 * time.Millisecond
)

// maxPendingCallbacks bounds the callbacks a worker holds in memory (queued
// or being sent); more are dropped, counted as result "dropped" and logged.
const maxPendingCallbacks = 10000

// Sign returns the Switchboard-Signature value of body sent at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// callbacks posts finished job records to their callback URLs from a small
// pool of goroutines, so that no job waits for a callback. The queue is in
// memory and bounded (max): a worker that dies loses its pending callbacks,
// and one whose receivers cannot keep up drops new ones (the finished event
// in SWITCHBOARD_RESULTS is the durable signal).
type callbacks struct {
	client *http.Client
	secret config.Secret
	log    *slog.Logger
	met    *metrics
	max    int // pending callbacks at most

	mu     sync.Mutex
	queue  []*events.JobRecord
	closed bool
	wake   chan struct{}
	busy   int
}

func newCallbacks(c *http.Client, secret config.Secret, log *slog.Logger, met *metrics) *callbacks {
	return &callbacks{client: c, secret: secret, log: log, met: met, max: maxPendingCallbacks, wake: make(chan struct{}, 1)}
}

// enqueue schedules the callback of a finished record; it never blocks.
// When max callbacks are pending already it drops this one.
func (c *callbacks) enqueue(rec *events.JobRecord) {
	if u, err := url.Parse(rec.CallbackURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		c.log.Warn("callback url is not http(s); not called", "job", rec.ID)
		return
	}
	c.mu.Lock()
	if n := len(c.queue) + c.busy; n >= c.max {
		c.mu.Unlock()
		c.met.callbacks.WithLabelValues("dropped").Inc()
		c.log.Warn("callback queue full; callback dropped", "job", rec.ID, "pending", n)
		return
	}
	c.queue = append(c.queue, rec)
	c.mu.Unlock()
	c.signal()
}

func (c *callbacks) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *callbacks) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) + c.busy
}

// close lets the senders exit once the queue is empty.
func (c *callbacks) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.signal()
}

// start runs n senders until close was called and the queue is empty, or
// ctx ends (pending callbacks are then dropped, with a log line). The
// returned channel closes when every sender returned.
func (c *callbacks) start(ctx context.Context, n int) <-chan struct{} {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c.mu.Lock()
				if len(c.queue) > 0 {
					rec := c.queue[0]
					c.queue[0] = nil
					c.queue = c.queue[1:]
					c.busy++
					more := len(c.queue) > 0
					c.mu.Unlock()
					if more {
						c.signal() // keep the other senders going
					}
					c.send(ctx, rec)
					c.mu.Lock()
					c.busy--
					c.mu.Unlock()
					continue
				}
				closed := c.closed
				c.mu.Unlock()
				if closed {
					c.signal() // let the next sender see it too
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-c.wake:
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// send posts one callback, retrying network errors, 408, 429 and 5xx.
func (c *callbacks) send(ctx context.Context, rec *events.JobRecord) {
	body, err := json.Marshal(rec)
	if err != nil {
		c.log.Error("encode callback", "job", rec.ID, "err", err)
		return
	}
	pause := callbackBackoff
	for try := 1; ; try++ {
		status, err := c.post(ctx, rec, body)
		if err == nil && status < 300 {
			c.met.callbacks.WithLabelValues("delivered").Inc()
			return
		}
		retry := err != nil || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
		if !retry || try == callbackTries || ctx.Err() != nil {
			c.met.callbacks.WithLabelValues("failed").Inc()
			c.log.Warn("callback failed", "job", rec.ID, "tries", try, "status", status, "err", err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause *= 2
	}
}

func (c *callbacks) post(ctx context.Context, rec *events.JobRecord, body []byte) (int, error) {
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
