package evaluator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// committer writes endpoint records and publishes their status changes so
// that no change is lost and none is published before its write.
//
// Guarantee: per endpoint, status changes reach SWITCHBOARD_STATUS in
// revision order. A change is appended to the record's pending list in the
// write that makes it; pending changes are published oldest first, stopping
// at the first failure, and dropped from the record only once published, so
// before a change is published every older one is.
type committer struct {
	store  *endpointkv.Store
	status jetstream.Stream
	pub    natsx.Publisher
	log    *slog.Logger
	m      *metrics
	// onWrite, when set, sees every record this committer wrote.
	onWrite func(events.EndpointState)

	mu sync.Mutex
	// published is, per endpoint, the highest revision whose change this
	// process knows to be in SWITCHBOARD_STATUS (so, by the ordering
	// guarantee, every lower one is too). Revisions count in one life of the
	// bucket: it is cleared when the bucket is found created again.
	published map[string]uint64
	// bucketCreated is when the bucket was created, as last checked (zero:
	// not known), and checkedAt when that was.
	bucketCreated, checkedAt time.Time
}

// maxPending bounds the unpublished status changes a record carries (each
// holds a copy of the record).
const maxPending = 128

func newCommitter(store *endpointkv.Store, status jetstream.Stream, pub natsx.Publisher, log *slog.Logger, m *metrics) *committer {
	return &committer{store: store, status: status, pub: pub, log: log, m: m, published: map[string]uint64{}}
}

// statusChange is the event of a change made by the write that stores st
// (its revision is filled in when the write is read back).
func statusChange(st events.EndpointState, ch state.Change, at time.Time) events.StatusChanged {
	snap := st
	snap.Pending = nil
	snap.Revision = 0
	return events.StatusChanged{
		Endpoint: st.Endpoint, Health: ch.Health, Breaker: ch.Breaker, Throttle: ch.Throttle,
		Override: ch.Override, Cause: ch.Cause, State: snap, At: at,
	}
}

// commit writes next over cur by compare-and-set on cur.Revision, with the
// status change ch (if any) pending in it, and then publishes the record's
// pending changes. The next write of the record drops those published (call
// tidy when there is none to come). It returns endpointkv.ErrConflict when
// another writer came first (nothing was written). A failed publish is not
// an error: the change stays pending in the record for a later pass.
func (c *committer) commit(ctx context.Context, cur, next events.EndpointState, ch state.Change, at time.Time) (events.EndpointState, error) {
	ep := cur.Endpoint
	if cur.Revision < c.knownPublished(ep) {
		// A record is never older than a change it made: the bucket was
		// deleted and created again (revisions restart), or cur is a stale
		// copy. The first must not make new changes look published.
		c.checkBucket(ctx)
	}
	next.Pending = c.settle(ctx, ep, cur.Pending, 0)
	if ch.Changed() {
		next.Pending = append(next.Pending, statusChange(next, ch, at))
	}
	if n := len(next.Pending); n > maxPending {
		// SWITCHBOARD_STATUS has been unreachable for a long time: keep the
		// record small enough to write.
		c.log.Error("status changes could not be published for too long; dropping the oldest",
			"endpoint", ep, "dropped", n-maxPending, "first_dropped", next.Pending[0].ID())
		next.Pending = append([]events.StatusChanged(nil), next.Pending[n-maxPending:]...)
	}
	written, err := c.store.Put(ctx, next, cur.Revision)
	if err != nil {
		if errors.Is(err, endpointkv.ErrConflict) {
			c.m.conflicts.Inc()
		}
		return cur, err
	}
	c.wrote(written)
	if ch.Changed() {
		c.m.transition(ep, ch)
	}
	if len(written.Pending) > 0 {
		c.settle(ctx, ep, written.Pending, written.Revision)
	}
	return written, nil
}

// tidy drops the pending changes of st, when they are all known to be
// published, by compare-and-set; if someone wrote in between, their write
// settled them already. It leaves a record at rest without pending changes.
func (c *committer) tidy(ctx context.Context, st events.EndpointState) events.EndpointState {
	if len(st.Pending) == 0 || st.Pending[len(st.Pending)-1].Revision > c.knownPublished(st.Endpoint) {
		return st
	}
	return c.clear(ctx, st)
}

// clear drops the (published) pending changes of st by compare-and-set; if
// someone wrote in between, their write already settled them.
func (c *committer) clear(ctx context.Context, st events.EndpointState) events.EndpointState {
	cleared := st
	cleared.Pending = nil
	w, err := c.store.Put(ctx, cleared, st.Revision)
	if err != nil {
		if !errors.Is(err, endpointkv.ErrConflict) {
			c.log.Warn("clear published status changes", "endpoint", st.Endpoint, "err", err)
		}
		return st
	}
	c.wrote(w)
	return w
}

func (c *committer) wrote(st events.EndpointState) {
	if c.onWrite != nil {
		c.onWrite(st)
	}
}

// settle makes sure the pending changes are published, oldest first, and
// returns those that could not be (the first failure and everything after
// it). Changes of revision fresh were just written, so they are known not
// to be published yet; for older ones SWITCHBOARD_STATUS is asked first.
func (c *committer) settle(ctx context.Context, ep string, pending []events.StatusChanged, fresh uint64) []events.StatusChanged {
	if len(pending) == 0 {
		return nil
	}
	var last uint64
	asked := false
	for i, p := range pending {
		known := c.knownPublished(ep)
		if p.Revision <= known {
			continue
		}
		if p.Revision != fresh && !asked {
			asked = true
			var err error
			if last, err = c.lastPublished(ctx, ep); err != nil {
				c.log.Warn("look up the last published status change", "endpoint", ep, "err", err)
				return pending[i:]
			}
			c.markPublished(ep, last)
		}
		if p.Revision <= last {
			continue
		}
		if _, err := c.pub.Publish(ctx, p.ID(), &p); err != nil {
			c.log.Warn("publish status change; it stays pending in the record", "endpoint", ep, "id", p.ID(), "err", err)
			c.m.publishFailures.Inc()
			return pending[i:]
		}
		if p.Revision != fresh {
			c.m.republished.Inc()
		}
		c.markPublished(ep, p.Revision)
	}
	return nil
}

func (c *committer) knownPublished(ep string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.published[ep]
}

func (c *committer) markPublished(ep string, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev > c.published[ep] {
		c.published[ep] = rev
	}
}

// lastPublished is the revision of the last status change of ep in
// SWITCHBOARD_STATUS (0 if none, or if it was published before the bucket
// was created: its revision counts in an earlier life of the bucket).
func (c *committer) lastPublished(ctx context.Context, ep string) (uint64, error) {
	m, err := c.status.GetLastMsgForSubject(ctx, events.StatusSubject(ep))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	created := c.bucketCreated
	c.mu.Unlock()
	if m.Time.Before(created) {
		return 0, nil
	}
	return revisionOf(ep, m.Header.Get(jetstream.MsgIDHeader))
}

// bucketCheckEvery is how often the timer checks whether the bucket was
// created again.
const bucketCheckEvery = 5 * time.Second

// checkBucket reads when the bucket was created; when that changed, the
// revisions this committer knew to be published belong to an earlier life
// of the bucket and are forgotten.
func (c *committer) checkBucket(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.store.KV.Status(ctx)
	if err != nil {
		c.log.Debug("check the endpoint bucket", "err", err)
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	created := bs.StreamInfo().Created
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checkedAt = time.Now()
	if created.Equal(c.bucketCreated) {
		return
	}
	if !c.bucketCreated.IsZero() {
		c.log.Warn("the endpoint bucket was created again; forgetting which status changes were published",
			"bucket", events.BucketEndpoints, "created", created)
	}
	c.bucketCreated = created
	clear(c.published)
}

// checkBucketEvery runs checkBucket if the last check is bucketCheckEvery old.
func (c *committer) checkBucketEvery(ctx context.Context) {
	c.mu.Lock()
	due := time.Since(c.checkedAt) >= bucketCheckEvery
	c.mu.Unlock()
	if due {
		c.checkBucket(ctx)
	}
}

// revisionOf parses a status-change id "<endpoint>@<revision>".
func revisionOf(ep, id string) (uint64, error) {
	rest, ok := strings.CutPrefix(id, ep+"@")
	if !ok {
		return 0, fmt.Errorf("status change id %q is not %s@<revision>", id, ep)
	}
	rev, err := strconv.ParseUint(rest, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("status change id %q: %w", id, err)
	}
	return rev, nil
}

// recover publishes and clears the pending changes of one record, if it
// still has them. It is the timer's pass over records whose writer died or
// could not publish.
func (c *committer) recover(ctx context.Context, ep string) error {
	cur, err := c.store.Get(ctx, ep)
	if err != nil || len(cur.Pending) == 0 {
		return err
	}
	if left := c.settle(ctx, ep, cur.Pending, 0); len(left) > 0 {
		return fmt.Errorf("endpoint %s: %d status changes still unpublished", ep, len(left))
	}
	c.clear(ctx, cur)
	return nil
}
