package evaluator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

// event is one decoded health event and where it sits in the stream.
type event struct {
	seq      uint64
	endpoint string
	typ      string // "probe" or "outcome"
	env      *events.Envelope
	sig      state.Signal
	// observed is when the probe or call finished: the event's time.
	observed time.Time
	// throttleUntil is set for a 429: the quota group's new throttle end.
	throttleUntil *time.Time
	// run is the delivery run this replica received it in (none when
	// fetched from the stream).
	run run
	// streamLast is, for an event this replica received, the least the
	// stream's last sequence was when it was sent (its sequence plus the
	// messages pending after it); 0 when unknown.
	streamLast uint64
}

// errBadEvent marks an event that can never be applied.
var errBadEvent = errors.New("bad health event")

// parse decodes a message of SWITCHBOARD_HEALTH and checks that it belongs
// on its subject (switchboard.probe.<endpoint> or switchboard.outcome.<endpoint>).
func (s *Service) parse(subject string, data []byte, seq uint64) (event, error) {
	ev := event{seq: seq}
	parts := strings.Split(subject, ".")
	if len(parts) != 3 || parts[0] != "switchboard" || !events.ValidName(parts[2]) {
		return ev, fmt.Errorf("%w: subject %q is not switchboard.probe.<endpoint> or switchboard.outcome.<endpoint>", errBadEvent, subject)
	}
	ev.typ, ev.endpoint = parts[1], parts[2]
	env, err := s.dec.Decode(data)
	if err != nil {
		return ev, fmt.Errorf("%w: %v", errBadEvent, err)
	}
	ev.env = env
	ev.sig = state.Signal{EventID: env.ID, EventType: env.Type, Source: env.Source}
	switch p := env.Data.(type) {
	case *events.ProbeResult:
		if ev.typ != "probe" || p.Endpoint != ev.endpoint {
			return ev, fmt.Errorf("%w: a probe result for endpoint %q does not belong on %s", errBadEvent, p.Endpoint, subject)
		}
		ev.sig.Kind, ev.sig.Probe = state.SignalProbe, p
		ev.observed = state.Observed(p.StartedAt, p.LatencyMS)
		if p.ErrorClass == events.ClassHTTP429 {
			ev.throttleUntil = throttleEnd(p.ThrottledUntil, ev.observed)
		}
	case *events.RequestOutcome:
		if ev.typ != "outcome" || p.Endpoint != ev.endpoint {
			return ev, fmt.Errorf("%w: a request outcome for endpoint %q does not belong on %s", errBadEvent, p.Endpoint, subject)
		}
		ev.sig.Kind, ev.sig.Outcome = state.SignalOutcome, p
		ev.observed = state.Observed(p.StartedAt, p.LatencyMS)
		if p.Outcome == events.RequestError && p.ErrorClass == events.ClassHTTP429 {
			ev.throttleUntil = throttleEnd(p.ThrottledUntil, ev.observed)
		}
	default:
		return ev, fmt.Errorf("%w: event type %s does not belong on %s", errBadEvent, env.Type, subject)
	}
	return ev, nil
}

// throttleEnd is when a 429 observed at observed ends: its hint, else
// state.DefaultThrottle later (as the state machine does for the endpoint
// itself).
func throttleEnd(hint *time.Time, observed time.Time) *time.Time {
	if hint != nil {
		return hint
	}
	end := observed.Add(state.DefaultThrottle)
	return &end
}

// clock is the time an event is applied at: when it was observed, but never
// after the wall clock and never before the record's own clock.
func clock(cur events.EndpointState, observed, wall time.Time) time.Time {
	t := observed
	if t.IsZero() || t.After(wall) {
		t = wall
	}
	if t.Before(cur.UpdatedAt) {
		t = cur.UpdatedAt
	}
	return t
}

// maxUnwritten bounds how many events are applied in memory before the
// record is written, so that a lost compare-and-set race wastes little.
const maxUnwritten = 64

// held is a message this replica received, parsed.
type held struct {
	msg jetstream.Msg
	ev  event
}

// heldSet are the events of one endpoint this replica holds.
type heldSet struct {
	bySeq map[uint64]event
	seqs  []uint64 // sorted
}

func newHeldSet(evs ...event) heldSet {
	h := heldSet{bySeq: make(map[uint64]event, len(evs))}
	for _, ev := range evs {
		h.bySeq[ev.seq] = ev
		h.seqs = append(h.seqs, ev.seq)
	}
	slices.Sort(h.seqs)
	return h
}

// first returns the held event with the lowest sequence at or after seq.
func (h heldSet) first(seq uint64) (event, bool) {
	i, _ := slices.BinarySearch(h.seqs, seq)
	if i == len(h.seqs) {
		return event{}, false
	}
	return h.bySeq[h.seqs[i]], true
}

// handleBatch processes messages taken together from one shard's queue and
// acknowledges each: bad ones are dead-lettered, those of unknown endpoints
// ignored, and each endpoint's events are applied together (see applyUpTo)
// so that a backlog costs one write per status change, not one per event.
func (s *Service) handleBatch(ctx context.Context, batch []delivery) {
	var order []string
	byEndpoint := map[string][]held{}
	for _, d := range batch {
		msg := d.msg
		md, err := msg.Metadata()
		if err != nil {
			s.log.Error("health message without metadata", "subject", msg.Subject(), "err", err)
			_ = msg.Term()
			continue
		}
		seq := md.Sequence.Stream
		ev, err := s.parse(msg.Subject(), msg.Data(), seq)
		if err != nil {
			s.deadLetter(ctx, msg, seq, err)
			continue
		}
		ev.run = d.run
		ev.streamLast = seq + md.NumPending
		if !s.known[ev.endpoint] {
			switch s.ignored.add(ev.endpoint) {
			case ignoredNew:
				s.log.Warn("ignoring events for an endpoint not in the config", "endpoint", ev.endpoint, "subject", msg.Subject())
			case ignoredFull:
				s.log.Warn("ignoring events for more endpoints not in the config; no longer logging each",
					"endpoint", ev.endpoint, "logged", maxIgnored)
			}
			s.m.events.WithLabelValues(ev.typ, ResultIgnored).Inc()
			_ = msg.Ack()
			continue
		}
		if byEndpoint[ev.endpoint] == nil {
			order = append(order, ev.endpoint)
		}
		byEndpoint[ev.endpoint] = append(byEndpoint[ev.endpoint], held{msg, ev})
	}
	for _, ep := range order {
		hs := byEndpoint[ep]
		evs := make([]event, len(hs))
		var target uint64
		for i, h := range hs {
			evs[i] = h.ev
			target = max(target, h.ev.seq)
		}
		applied, err := s.applyUpTo(ctx, ep, target, newHeldSet(evs...))
		if err != nil {
			// Events of this endpoint later in this replica's runs may not
			// take these as applied.
			s.runEpoch.Add(1)
		}
		for _, h := range hs {
			switch {
			case err != nil && !applied[h.ev.seq]:
				s.m.events.WithLabelValues(h.ev.typ, ResultError).Inc()
				if ctx.Err() != nil {
					_ = h.msg.Nak() // to another replica at once
				} else {
					_ = h.msg.NakWithDelay(time.Second)
				}
			case applied[h.ev.seq]:
				_ = h.msg.Ack()
			default:
				s.m.events.WithLabelValues(h.ev.typ, ResultDuplicate).Inc()
				_ = h.msg.Ack()
			}
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("apply health events; they will be redelivered", "endpoint", ep, "up_to", target, "err", err)
		}
	}
}

// deadLetter copies an event that can never be applied to the dead-letter
// stream, with the reason, and terminates it.
func (s *Service) deadLetter(ctx context.Context, msg jetstream.Msg, seq uint64, reason error) {
	token := "unknown"
	if parts := strings.Split(msg.Subject(), "."); len(parts) == 3 && events.ValidName(parts[2]) {
		token = parts[2]
	}
	s.log.Warn("dead-lettering a health event that cannot be applied", "subject", msg.Subject(), "seq", seq, "err", reason)
	if err := natsx.DeadLetter(ctx, s.js, events.DeadSubject("health", token), msg, reason.Error()); err != nil {
		s.log.Error("dead-letter health event; it will be redelivered", "subject", msg.Subject(), "seq", seq, "err", err)
		s.m.events.WithLabelValues("invalid", ResultError).Inc()
		_ = msg.NakWithDelay(time.Second)
		return
	}
	s.m.events.WithLabelValues("invalid", ResultDeadLetter).Inc()
	_ = msg.Term()
}

// applyUpTo applies every event of endpoint ep up to stream sequence target
// that its record has not applied yet, in stream order: those this replica
// holds (mine) and any earlier ones still in flight elsewhere, fetched from
// the stream. Each status change gets its own compare-and-set write (the
// state after it, the id <endpoint>@<revision>); events that change no
// status are written together. It returns the sequences this call applied.
func (s *Service) applyUpTo(ctx context.Context, ep string, target uint64, mine heldSet) (map[uint64]bool, error) {
	applied := map[uint64]bool{}
	var stale staleCheck
	cur, err := s.read(ctx, ep, true)
	if err != nil {
		return applied, err
	}
	err = endpointkv.RetryConflicts(ctx, func() error {
		fixed, err := stale.fix(ctx, s, cur, mine)
		if err != nil {
			return err
		}
		if fixed.AppliedSeq < target {
			next, err := s.run(ctx, fixed, target, mine, applied)
			if errors.Is(err, endpointkv.ErrConflict) {
				// Someone else wrote first: re-read, then re-apply.
				reread, rerr := s.read(ctx, ep, false)
				if rerr != nil {
					return rerr
				}
				cur = reread
				return err
			}
			if err != nil {
				return err
			}
			fixed = next
		}
		s.c.tidy(ctx, fixed)
		return nil
	})
	if errors.Is(err, endpointkv.ErrConflictLimit) {
		return applied, fmt.Errorf("apply the events of endpoint %s up to %d: %w", ep, target, err)
	}
	return applied, err
}

// staleCheck finds a record whose applied_seq the stream does not reach:
// SWITCHBOARD_HEALTH was deleted and created again (its sequences restart
// at 1), or a single server lost its last asynchronously flushed writes in
// a crash. New events then reuse sequences at or below applied_seq, and
// taken as duplicates they would be ignored until the stream passed the
// old sequence.
type staleCheck struct {
	// last is the stream's last sequence when it was found below a record's
	// applied_seq (0: not asked yet).
	last uint64
}

// fix returns cur, or, when cur's applied_seq is beyond the stream's last
// sequence, cur with applied_seq set just below the first event this
// replica holds: those events, and the endpoint's later ones, are applied.
// The stream is asked only when an event held looks applied and the
// stream was not known to reach applied_seq when it was delivered.
func (c *staleCheck) fix(ctx context.Context, s *Service, cur events.EndpointState, mine heldSet) (events.EndpointState, error) {
	if len(mine.seqs) == 0 || cur.AppliedSeq < mine.seqs[0] {
		return cur, nil // nothing held looks applied
	}
	if c.last == 0 || cur.AppliedSeq <= c.last {
		var reach uint64 // the stream reached this when the events were sent
		for _, ev := range mine.bySeq {
			reach = max(reach, ev.streamLast)
		}
		if cur.AppliedSeq <= reach {
			return cur, nil // real duplicates
		}
		last, err := s.healthLastSeq(ctx)
		if err != nil {
			return cur, fmt.Errorf("check applied_seq %d of endpoint %s against the stream: %w", cur.AppliedSeq, cur.Endpoint, err)
		}
		if cur.AppliedSeq <= last {
			return cur, nil
		}
		c.last = last
	}
	from := mine.seqs[0] - 1
	s.log.Warn("the record applied events beyond the stream's last sequence (the stream was recreated or lost its last writes); applying the events from the first one held",
		"endpoint", cur.Endpoint, "applied_seq", cur.AppliedSeq, "stream_last_seq", c.last, "from", from+1)
	s.m.staleSeqs.Inc()
	cur.AppliedSeq = from
	return cur, nil
}

// healthLastSeq asks for the last sequence of SWITCHBOARD_HEALTH.
func (s *Service) healthLastSeq(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	str, err := s.js.Stream(ctx, events.StreamHealth)
	if err != nil {
		return 0, err
	}
	return str.CachedInfo().State.LastSeq, nil
}

// run applies, in memory, the events after cur.AppliedSeq up to target,
// each after the time-driven transitions due at its time, and writes by
// compare-and-set on cur's revision: at every status change, every
// maxUnwritten events and at the end. It returns the last record written
// (cur if none) and endpointkv.ErrConflict when a write lost the race;
// events written before that stay applied (and in applied).
func (s *Service) run(ctx context.Context, cur events.EndpointState, target uint64, mine heldSet, applied map[uint64]bool) (events.EndpointState, error) {
	ep := cur.Endpoint
	st := cur
	dirty := false
	var unwritten []event
	flush := func(ch state.Change, at time.Time) error {
		w, err := s.c.commit(ctx, cur, st, ch, at)
		if err != nil {
			return err
		}
		now := s.now()
		for _, ev := range unwritten {
			applied[ev.seq] = true
			s.m.events.WithLabelValues(ev.typ, ResultApplied).Inc()
			s.m.lag.Observe(now.Sub(ev.env.Time).Seconds())
		}
		cur, st, dirty, unwritten = w, w, false, nil
		return nil
	}
	for st.AppliedSeq < target {
		ev, ok, err := s.nextEvent(ctx, ep, st.AppliedSeq, target, mine)
		if err != nil {
			return cur, err
		}
		if !ok { // nothing decodable left up to target
			st.AppliedSeq, dirty = target, true
			break
		}
		t := clock(st, ev.observed, s.now())
		if ticked, ch := state.Tick(s.settings, st, t); ch.Write {
			st, dirty = ticked, true
			if ch.Changed() {
				if err := flush(ch, t); err != nil {
					return cur, err
				}
			}
		}
		if ev.throttleUntil != nil {
			// Before the endpoint's own write, so that a retry repeats it
			// harmlessly (a throttle only extends).
			if err := s.throttlePeers(ctx, ev, t); err != nil {
				return cur, err
			}
		}
		next, ch := state.Apply(s.settings, st, ev.sig, t)
		if err := next.Validate(); err != nil {
			// A bug in the state machine: skip the event rather than stop
			// the endpoint for good.
			s.log.Error("state machine produced an invalid record; event skipped", "endpoint", ep, "seq", ev.seq, "err", err)
			next, ch = st, state.Change{}
		}
		next.AppliedSeq = ev.seq
		st, dirty = next, true
		unwritten = append(unwritten, ev)
		if ch.Changed() || len(unwritten) >= maxUnwritten {
			if err := flush(ch, t); err != nil {
				return cur, err
			}
		}
	}
	if dirty {
		if err := flush(state.Change{}, st.UpdatedAt); err != nil {
			return cur, err
		}
	}
	return cur, nil
}

// throttlePeers extends the throttle of every other endpoint in ev's quota
// group. A throttle only ever extends, so this is idempotent.
func (s *Service) throttlePeers(ctx context.Context, ev event, t time.Time) error {
	sig := state.Signal{Kind: state.SignalThrottle, ThrottleUntil: *ev.throttleUntil, ThrottleFrom: ev.endpoint,
		EventID: ev.env.ID, EventType: ev.env.Type, Source: ev.env.Source}
	for _, peer := range s.settings.QuotaPeers(ev.endpoint) {
		err := endpointkv.RetryConflicts(ctx, func() error {
			cur, err := s.read(ctx, peer, false)
			if err != nil {
				return err
			}
			next, ch := state.Apply(s.settings, cur, sig, clock(cur, t, s.now()))
			if !ch.Write {
				return nil
			}
			w, err := s.c.commit(ctx, cur, next, ch, next.UpdatedAt)
			if err != nil {
				return err
			}
			s.c.tidy(ctx, w)
			return nil
		})
		if err != nil {
			return fmt.Errorf("throttle quota-group peer %s: %w", peer, err)
		}
	}
	return nil
}

// read returns the record of ep: from the live view when cached is true and
// it holds one (a stale copy only costs a compare-and-set conflict), else
// from KV; a fresh record when there is none.
func (s *Service) read(ctx context.Context, ep string, cached bool) (events.EndpointState, error) {
	if cached {
		if st, ok := s.view.Get(ep); ok {
			return st, nil
		}
	}
	st, err := s.store.Get(ctx, ep)
	if errors.Is(err, endpointkv.ErrNotFound) {
		return state.New(ep, s.now()), nil
	}
	return st, err
}

// nextEvent is the endpoint's first event after sequence pos, up to
// target: one this replica holds, or one still in flight elsewhere (fetched
// from the stream). Messages on the endpoint's subjects that cannot be
// decoded are passed over (whoever receives them dead-letters them). ok is
// false when there is none. The stream is not asked when the next held
// event came in a delivery run that covers every sequence from pos+1 on.
func (s *Service) nextEvent(ctx context.Context, ep string, pos, target uint64, mine heldSet) (event, bool, error) {
	from := pos + 1
	for from <= target {
		held, holds := mine.first(from)
		if holds && (held.seq == from || held.run.valid(s.runEpoch.Load()) && held.run.start <= from) {
			return held, true, nil
		}
		raw, err := s.lookup(ctx, from, "switchboard.*."+ep)
		if errors.Is(err, jetstream.ErrMsgNotFound) || err == nil && (raw.Sequence > target || holds && raw.Sequence > held.seq) {
			// Nothing (else) before the next event this replica holds, as
			// far as the answer goes. An event held is in the stream,
			// whatever a lagging answer says: it is never skipped.
			if holds {
				return held, true, nil
			}
			return event{}, false, nil
		}
		if err != nil {
			return event{}, false, fmt.Errorf("look up the events of endpoint %s after %d: %w", ep, pos, err)
		}
		if ev, ok := mine.bySeq[raw.Sequence]; ok {
			return ev, true, nil
		}
		if ev, ok := s.parsed.get(raw.Sequence); ok {
			return ev, true, nil
		}
		if ev, err := s.parse(raw.Subject, raw.Data, raw.Sequence); err == nil {
			s.parsed.put(ev)
			return ev, true, nil
		}
		from = raw.Sequence + 1
	}
	return event{}, false, nil
}

// lookup returns the first message of SWITCHBOARD_HEALTH at or after seq on
// subject (wildcards allowed), asking the stream leader. It never uses a
// direct get, even if the stream allows them: a direct get may be answered
// by a replica that has not stored the latest messages yet, and a message
// missed here would be skipped for good.
func (s *Service) lookup(ctx context.Context, seq uint64, subject string) (*jetstream.RawStreamMsg, error) {
	req, err := json.Marshal(struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj"`
	}{seq, subject})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reply, err := s.js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+events.StreamHealth, req)
	if err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     uint16 `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Subject string    `json:"subject"`
			Seq     uint64    `json:"seq"`
			Data    []byte    `json:"data"`
			Time    time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("get message: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == uint16(jetstream.JSErrCodeMessageNotFound) {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, fmt.Errorf("get message: %s (%d)", resp.Error.Description, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return nil, errors.New("get message: empty response")
	}
	m := resp.Message
	return &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: m.Seq, Data: m.Data, Time: m.Time}, nil
}

// parseCache keeps recently parsed events fetched from the stream, so that
// a replica that lost a compare-and-set race does not decode them again.
type parseCache struct {
	mu    sync.Mutex
	bySeq map[uint64]event
	order []uint64
}

const parseCacheSize = 4096

func (c *parseCache) get(seq uint64) (event, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev, ok := c.bySeq[seq]
	return ev, ok
}

func (c *parseCache) put(ev event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bySeq == nil {
		c.bySeq = map[uint64]event{}
	}
	if _, ok := c.bySeq[ev.seq]; ok {
		return
	}
	if len(c.order) >= parseCacheSize {
		delete(c.bySeq, c.order[0])
		c.order = c.order[1:]
	}
	c.bySeq[ev.seq] = ev
	c.order = append(c.order, ev.seq)
}

// maxIgnored bounds the names of endpoints not in the config that an
// evaluator remembers (to log each once).
const maxIgnored = 1024

// What ignoredSet.add says about a name.
const (
	ignoredSeen = iota // logged before (or beyond the bound): do not log
	ignoredNew         // the first event of this endpoint: log it
	ignoredFull        // the first name beyond the bound: log that no more are logged
)

// ignoredSet remembers the endpoints not in the config whose events were
// logged, so that each is logged once. Anyone can publish on any subject,
// so it holds at most maxIgnored names.
type ignoredSet struct {
	mu    sync.Mutex
	names map[string]bool
	full  bool
}

func (s *ignoredSet) add(ep string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.names[ep]:
		return ignoredSeen
	case len(s.names) < maxIgnored:
		if s.names == nil {
			s.names = map[string]bool{}
		}
		s.names[ep] = true
		return ignoredNew
	case !s.full:
		s.full = true
		return ignoredFull
	}
	return ignoredSeen
}
