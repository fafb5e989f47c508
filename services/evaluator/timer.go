package evaluator

import (
	"context"
	"time"

	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// timer runs every tick_interval until ctx ends: it makes the time-driven
// transitions that are due (open -> half_open, lease expiry, throttle end)
// and publishes status changes that their writer left pending. Replicas
// racing here are safe: compare-and-set lets one write, and the others find
// nothing due any more.
func (s *Service) timer(ctx context.Context) {
	t := time.NewTicker(s.cfg.Evaluator.TickInterval)
	defer t.Stop()
	// pendingSeen remembers, per endpoint, the revision at which the
	// previous pass saw pending changes: a record still at that revision one
	// pass later was left by its writer, not just written.
	pendingSeen := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.pass(ctx, pendingSeen)
		}
	}
}

func (s *Service) pass(ctx context.Context, pendingSeen map[string]uint64) {
	s.c.checkBucketEvery(ctx)
	now := s.now()
	for ep, st := range s.view.Snapshot() {
		if ctx.Err() != nil {
			return
		}
		if at, ok := state.NextTick(st); ok && !now.Before(at) {
			if err := s.tick(ctx, ep); err != nil && ctx.Err() == nil {
				s.log.Warn("time-driven transition", "endpoint", ep, "err", err)
			}
		}
		if len(st.Pending) == 0 {
			delete(pendingSeen, ep)
			continue
		}
		if pendingSeen[ep] != st.Revision {
			pendingSeen[ep] = st.Revision
			continue
		}
		if err := s.c.recover(ctx, ep); err != nil && ctx.Err() == nil {
			s.log.Warn("publish pending status changes", "endpoint", ep, "err", err)
		}
	}
}

// tick runs the time-driven transitions due now on one record.
func (s *Service) tick(ctx context.Context, ep string) error {
	return endpointkv.RetryConflicts(ctx, func() error {
		cur, err := s.read(ctx, ep, false)
		if err != nil {
			return err
		}
		if cur.Revision == 0 {
			return nil // no record: nothing is due
		}
		t := clock(cur, s.now(), s.now())
		next, ch := state.Tick(s.settings, cur, t)
		if !ch.Write {
			return nil
		}
		w, err := s.c.commit(ctx, cur, next, ch, t)
		if err != nil {
			return err
		}
		s.c.tidy(ctx, w)
		return nil
	})
}
