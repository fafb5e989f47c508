package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// errReplyTimeout is returned by waiter.next when the call's deadline passed.
var errReplyTimeout = errors.New("no reply from the workers before the deadline")

// inbox receives the replies of every interactive call on one long-lived
// wildcard subscription (<prefix>.*) and hands each to the call whose inbox
// subject it arrived on, like nats.go's request mux: no call subscribes or
// unsubscribes, which would cost a round of interest propagation per call.
type inbox struct {
	nc     *nats.Conn
	prefix string // "<inbox prefix>.<nuid>." ; a call's inbox is prefix + token

	mu      sync.Mutex
	seq     uint64
	waiters map[string]*waiter // by token
	sub     *nats.Subscription
}

func newInbox(nc *nats.Conn) *inbox {
	return &inbox{nc: nc, prefix: nc.NewInbox() + ".", waiters: map[string]*waiter{}}
}

// subscribe starts receiving replies; close stops.
func (ib *inbox) subscribe() error {
	sub, err := ib.nc.Subscribe(ib.prefix+"*", ib.dispatch)
	if err != nil {
		return fmt.Errorf("subscribe interactive reply inbox: %w", err)
	}
	// Replies are dispatched without blocking, so the subscription never
	// falls behind for long; do not let a burst of stream chunks trip the
	// slow-consumer limit and drop a reply.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		sub.Unsubscribe()
		return fmt.Errorf("interactive reply inbox: %w", err)
	}
	ib.mu.Lock()
	ib.sub = sub
	ib.mu.Unlock()
	return nil
}

func (ib *inbox) close() {
	ib.mu.Lock()
	sub := ib.sub
	ib.sub = nil
	ib.mu.Unlock()
	if sub != nil {
		sub.Unsubscribe()
	}
}

// dispatch runs on the subscription's goroutine. It queues m for its call
// under the inbox lock, so a waiter released by a finished call can never
// receive a stray message.
func (ib *inbox) dispatch(m *nats.Msg) {
	if len(m.Subject) <= len(ib.prefix) {
		return
	}
	token := m.Subject[len(ib.prefix):]
	ib.mu.Lock()
	if w, ok := ib.waiters[token]; ok {
		w.push(m)
	}
	ib.mu.Unlock()
}

var waiterPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &waiter{ready: make(chan struct{}, 1), timer: t}
}}

// register makes a waiter for a new call, with its reply subject.
func (ib *inbox) register() *waiter {
	w := waiterPool.Get().(*waiter)
	ib.mu.Lock()
	ib.seq++
	w.token = strconv.FormatUint(ib.seq, 36)
	ib.waiters[w.token] = w
	ib.mu.Unlock()
	w.subject = ib.prefix + w.token
	return w
}

// release forgets w; replies still in flight for it are dropped.
func (ib *inbox) release(w *waiter) {
	ib.mu.Lock()
	delete(ib.waiters, w.token)
	ib.mu.Unlock()
	w.timer.Stop()
	clear(w.q)
	w.q, w.head = w.q[:0], 0
	select {
	case <-w.ready:
	default:
	}
	waiterPool.Put(w)
}

// waiter is one call's queue of replies. The queue is unbounded so that
// the dispatcher never waits for a slow HTTP client; a stream's size is
// bounded by the upstream's answer.
type waiter struct {
	token   string
	subject string
	q       []*nats.Msg // guarded by the inbox lock; q[head:] are pending
	head    int
	ready   chan struct{}
	timer   *time.Timer
}

// push queues m; the caller holds the inbox lock.
func (w *waiter) push(m *nats.Msg) {
	w.q = append(w.q, m)
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// start arms the call's deadline.
func (w *waiter) start(d time.Duration) { w.timer.Reset(d) }

// next returns the next reply, or errReplyTimeout when the deadline passed,
// or ctx's error when the client went away.
func (w *waiter) next(ctx context.Context, ib *inbox) (*nats.Msg, error) {
	for {
		ib.mu.Lock()
		if w.head < len(w.q) {
			m := w.q[w.head]
			w.q[w.head] = nil
			w.head++
			if w.head == len(w.q) {
				w.q, w.head = w.q[:0], 0
			}
			ib.mu.Unlock()
			return m, nil
		}
		ib.mu.Unlock()
		select {
		case <-w.ready:
		case <-w.timer.C:
			return nil, errReplyTimeout
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
