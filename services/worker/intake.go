package worker

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// Timing of the durable intake's pull requests.
const (
	// pollWait is how long a long-poll waits for jobs when every priority
	// has one out: an idle worker sends one per priority per pollWait. It
	// also bounds how long free slots stay promised to the long-poll of
	// one priority while jobs of a higher one wait.
	pollWait = 2 * time.Second
	// pollWaitPartial is the long-poll wait while fewer slots are free than
	// there are priorities, so that a priority without a long-poll is
	// looked at again soon.
	pollWaitPartial = 100 * time.Millisecond
	// coldRecheck is how often a priority that had no job is asked again
	// while slots run jobs of another one: about the longest a new
	// high-priority job waits behind a backlog of normal ones.
	coldRecheck = 25 * time.Millisecond
	// pullErrorPause is how long a consumer is left alone after a pull
	// request failed (e.g. 409 Exceeded MaxAckPending).
	pullErrorPause = 250 * time.Millisecond
	// pullLostAfter is how long past its expiry an unanswered pull request
	// is given up (its answer was lost with a connection, say); a job that
	// still answers it later goes to a free slot, or is NAKed.
	pullLostAfter = 10 * time.Second
)

// delivery is a job message and when it reached this worker. Its AckWait
// began at the latest then.
type delivery struct {
	msg jetstream.Msg
	at  time.Time
}

// durable is the durable lane's intake. A dispatcher pulls jobs only for
// slots that asked for one: it never has more messages asked for (by pull
// requests not yet answered) than slots are free, so this worker never
// holds a message no slot is running. A message's AckWait thus runs only
// while a slot works on it (the keep-alive extends it), and jobs behind
// busy slots wait in the stream, where any free worker can take them.
//
// The pull requests are the JetStream protocol's own ($JS.API.CONSUMER.
// MSG.NEXT), answered on one long-lived wildcard subscription, each on a
// reply subject of its own: requests are pipelined (no round trip waits
// for another) and cost no subscription each. A status answer (404, 408,
// 409) ends the request its subject names; a job names its consumer (in
// its ack subject) and counts against that consumer's oldest open request,
// as the server serves them in order.
type durable struct {
	s       *Service
	nc      *nats.Conn
	next    []string // MSG.NEXT subject of each consumer, by priority, high first
	names   []string // consumer names, same order
	inbox   string   // replies arrive on inbox.<seq>
	sub     *nats.Subscription
	answers chan *nats.Msg

	idle chan struct{} // a slot asks for a job
	work chan delivery // the job for a slot that asked
	quit chan struct{} // closed by stop
	done chan struct{} // closed when the dispatcher returned
}

// startDurable subscribes the intake's reply inbox and starts the
// dispatcher.
func (s *Service) startDurable() (*durable, error) {
	opts := s.o.JS.Options()
	prefix := jetstream.DefaultAPIPrefix
	switch {
	case opts.Domain != "":
		prefix = "$JS." + opts.Domain + ".API."
	case opts.APIPrefix != "":
		prefix = strings.TrimSuffix(opts.APIPrefix, ".") + "."
	}
	d := &durable{
		s: s, nc: s.o.NC, inbox: s.o.NC.NewInbox(),
		answers: make(chan *nats.Msg, 4*s.cfg.Concurrency+64),
		idle:    make(chan struct{}), work: make(chan delivery),
		quit: make(chan struct{}), done: make(chan struct{}),
	}
	for _, p := range events.Priorities() {
		d.next = append(d.next, prefix+"CONSUMER.MSG.NEXT."+events.StreamJobs+"."+ConsumerName(p))
		d.names = append(d.names, ConsumerName(p))
	}
	// A full channel would drop answers, but at most as many jobs are
	// asked for as slots are free, plus one status per request.
	sub, err := s.o.NC.ChanSubscribe(d.inbox+".*", d.answers)
	if err != nil {
		return nil, fmt.Errorf("worker: subscribe the job pull inbox: %w", err)
	}
	d.sub = sub
	go d.dispatch()
	return d, nil
}

// stop stops taking jobs: the dispatcher NAKs what it holds (for another
// worker) and ends its pull requests; slots stop asking.
func (d *durable) stop() {
	select {
	case <-d.quit:
	default:
		close(d.quit)
	}
}

// wait waits for the dispatcher.
func (d *durable) wait() { <-d.done }

func (d *durable) stopped() bool {
	select {
	case <-d.quit:
		return true
	default:
		return false
	}
}

// pullReq is a pull request not answered in full yet.
type pullReq struct {
	i        int // consumer
	n        int // jobs it may still bring
	long     bool
	giveUpAt time.Time
}

// consumerState is what the dispatcher knows of one consumer.
type consumerState struct {
	asked   int       // jobs its open requests may still bring
	queue   []string  // their reply subjects, oldest first (some may be closed)
	long    bool      // a long-poll is among them
	pending uint64    // jobs it held after the last one it delivered (NumPending)
	hot     bool      // it holds jobs, as far as the dispatcher knows
	checked time.Time // when it was last asked while cold
	pause   time.Time // no requests before this
}

// pulls is the dispatcher's book of open pull requests.
type pulls struct {
	st    []consumerState
	reqs  map[string]*pullReq // by reply subject
	asked int                 // jobs all open requests may still bring
}

func (p *pulls) open(reply string, r *pullReq) {
	p.reqs[reply] = r
	c := &p.st[r.i]
	c.queue = append(c.queue, reply)
	c.asked += r.n
	c.long = c.long || r.long
	p.asked += r.n
}

// close ends the request reply (a status answered it, or it was given up).
func (p *pulls) close(reply string) (*pullReq, bool) {
	r, ok := p.reqs[reply]
	if !ok {
		return nil, false
	}
	delete(p.reqs, reply)
	c := &p.st[r.i]
	c.asked -= r.n
	p.asked -= r.n
	if r.long {
		c.long = false
	}
	for len(c.queue) > 0 { // drop closed ones from the front
		if _, open := p.reqs[c.queue[0]]; open {
			break
		}
		c.queue = c.queue[1:]
	}
	return r, true
}

// job counts a job from consumer i against its oldest open request; false
// when it has none (a request given up).
func (p *pulls) job(i int) bool {
	for _, reply := range p.st[i].queue {
		r, open := p.reqs[reply]
		if !open {
			continue
		}
		r.n--
		p.st[i].asked--
		p.asked--
		if r.n == 0 { // filled: the server sends nothing more for it
			p.close(reply)
		}
		return true
	}
	return false
}

// noWaitOpen reports whether a no-wait request is still open.
func (p *pulls) noWaitOpen() bool {
	for _, r := range p.reqs {
		if !r.long {
			return true
		}
	}
	return false
}

// isStatus reports whether m is a status answer (no job).
func isStatus(m *nats.Msg) bool { return len(m.Data) == 0 && m.Header.Get("Status") != "" }

// dispatch hands jobs to the slots that asked for one, never asking the
// consumers for more jobs than slots are free. Highest priority first:
//
//   - a consumer that holds jobs (hot: the last job it delivered said more
//     are pending) is asked for as many as slots are free, up to what it
//     holds, without waiting;
//   - a consumer that had none (cold) is asked once more every
//     coldRecheck, so that a new high-priority job goes first even while
//     the slots run a backlog of normal ones;
//   - when no consumer holds anything and every one was just asked, a
//     long-poll waits on each: one job each, highest priority first, as
//     far as free slots allow, and the rest of the free slots on the
//     priority that had jobs last (normal at first), so that a burst
//     starts at once.
func (d *durable) dispatch() {
	defer close(d.done)
	var (
		idle  int // slots that asked and got nothing yet
		seq   uint64
		p     = &pulls{st: make([]consumerState, len(d.next)), reqs: map[string]*pullReq{}}
		st    = p.st
		last  = slices.Index(events.Priorities(), events.PriorityNormal) // had jobs last
		sweep = time.NewTicker(time.Second)
		// reconnects is the connection's reconnect count as of the last
		// sweep: requests sent before a reconnect died with the old
		// connection (a restarted server knows nothing of them).
		reconnects = d.nc.Stats().Reconnects
	)
	defer sweep.Stop()
	defer func() { d.shutdown(p) }()

	send := func(i, n int, long bool, wait time.Duration, now time.Time) {
		seq++
		reply := d.inbox + "." + strconv.FormatUint(seq, 36)
		req := struct {
			Batch   int           `json:"batch"`
			Expires time.Duration `json:"expires,omitempty"`
			NoWait  bool          `json:"no_wait,omitempty"`
		}{Batch: n, NoWait: !long}
		giveUp := now.Add(pullLostAfter)
		if long {
			req.Expires = wait
			giveUp = giveUp.Add(wait)
		}
		body, _ := json.Marshal(req)
		if err := d.nc.PublishRequest(d.next[i], reply, body); err != nil {
			d.s.log.Warn("pull jobs", "consumer", d.names[i], "err", err)
			st[i].pause = now.Add(pullErrorPause)
			return
		}
		p.open(reply, &pullReq{i: i, n: n, long: long, giveUpAt: giveUp})
	}

	for {
		now := time.Now()
		// Ask, without waiting, for jobs for the free slots that no
		// request covers yet.
		for idle-p.asked > 0 {
			i := d.pick(st, now)
			if i < 0 {
				break
			}
			n := 1 // a look at a cold consumer
			if st[i].hot {
				n = int(min(uint64(idle-p.asked), st[i].pending-uint64(st[i].asked)))
			} else {
				st[i].checked = now
			}
			send(i, n, false, 0, now)
		}
		// Nothing held anywhere, every consumer just asked: long-polls.
		if free := idle - p.asked; free > 0 && !p.noWaitOpen() && !slices.ContainsFunc(st, func(c consumerState) bool { return c.hot }) {
			var unarmed []int
			for i := range st {
				if !st[i].long && !now.Before(st[i].pause) {
					unarmed = append(unarmed, i)
				}
			}
			wait := pollWait
			if free < len(unarmed) {
				wait = pollWaitPartial
			}
			batch := map[int]int{}
			for _, i := range unarmed {
				if free > 0 {
					batch[i]++
					free--
				}
			}
			if _, ok := batch[last]; ok {
				batch[last] += free
			}
			for _, i := range unarmed {
				if batch[i] > 0 {
					send(i, batch[i], true, wait, now)
				}
			}
		}

		select {
		case <-d.quit:
			return
		case <-d.idle:
			idle++
		case <-sweep.C:
			if rc := d.nc.Stats().Reconnects; rc != reconnects {
				reconnects = rc
				if len(p.reqs) > 0 {
					d.s.log.Info("nats reconnected; asking for jobs again", "open_requests", len(p.reqs))
				}
				for reply := range p.reqs {
					p.close(reply) // a job that still answers one goes to a free slot, or is NAKed
				}
				continue
			}
			for reply, r := range p.reqs {
				if now.After(r.giveUpAt) {
					p.close(reply)
					d.s.log.Warn("pull request unanswered; given up", "consumer", d.names[r.i])
				}
			}
		case m := <-d.answers:
			if isStatus(m) { // the end of a request, short of jobs
				status := m.Header.Get("Status")
				if status == "100" { // a heartbeat
					continue
				}
				r, known := p.close(m.Subject)
				if !known { // a request given up
					continue
				}
				c := &st[r.i]
				c.hot, c.pending = false, 0
				switch status {
				case "404", "408": // nothing there, or the wait is over
				default: // e.g. 409 Exceeded MaxAckPending, 503 no responders
					c.pause = time.Now().Add(pullErrorPause)
					d.s.log.Debug("pull jobs", "consumer", d.names[r.i], "status", status, "description", m.Header.Get("Description"))
				}
				continue
			}
			j := delivery{msg: &pulledMsg{nc: d.nc, msg: m}, at: time.Now()}
			known := false
			if md, err := j.msg.Metadata(); err == nil {
				if i := slices.Index(d.names, md.Consumer); i >= 0 && p.job(i) {
					known = true
					st[i].pending, st[i].hot = md.NumPending, md.NumPending > 0
					last = i
				}
			}
			if !known && idle-p.asked <= 0 { // a late answer and no slot for it
				_ = j.msg.Nak()
				continue
			}
			taken, ok := d.hand(j)
			if !ok {
				return
			}
			if taken {
				idle--
			}
		}
	}
}

// pick chooses the consumer to ask (without waiting) for more jobs, or -1:
// the highest priority that is hot and holds more than it is asked for
// already, or is cold and due for another look. A consumer with a
// long-poll out is covered by it.
func (d *durable) pick(st []consumerState, now time.Time) int {
	for i := range st {
		c := &st[i]
		if c.long || now.Before(c.pause) {
			continue
		}
		if c.hot && uint64(c.asked) < c.pending {
			return i
		}
		if !c.hot && c.asked == 0 && now.Sub(c.checked) >= coldRecheck {
			return i
		}
	}
	return -1
}

// shutdown ends the dispatcher's pull requests: it waits briefly for the
// no-wait ones to be answered, unsubscribes (the server drops requests
// nobody listens to), and NAKs every job that still arrived, for another
// worker. A job the server was sending at the very moment of the
// unsubscribe is redelivered after AckWait.
func (d *durable) shutdown(p *pulls) {
	nak := func(m *nats.Msg) { _ = (&pulledMsg{nc: d.nc, msg: m}).Nak() }
	deadline := time.NewTimer(250 * time.Millisecond)
	defer deadline.Stop()
wait:
	for p.noWaitOpen() {
		select {
		case m := <-d.answers:
			if isStatus(m) {
				p.close(m.Subject)
				continue
			}
			nak(m)
			if md, err := ackMetadata(m.Reply); err == nil {
				if i := slices.Index(d.names, md.Consumer); i >= 0 {
					p.job(i)
				}
			}
		case <-deadline.C:
			break wait
		}
	}
	_ = d.sub.Unsubscribe()
	for {
		select {
		case m := <-d.answers:
			if !isStatus(m) {
				nak(m)
			}
		default:
			return
		}
	}
}

// hand gives a job to a slot that asked for one (taken). As a backstop, a
// job whose AckWait ran out before it could start is not run (see
// skipExpired); the record of that is written before the dispatcher pulls
// again, so this worker's own redelivery sees it. When the lane stops
// first, hand NAKs the job for another worker and reports !ok.
func (d *durable) hand(j delivery) (taken, ok bool) {
	if h := d.s.o.handOff; h != nil {
		h(j.msg)
	}
	if age := time.Since(j.at); age > d.s.cfg.AckWait {
		d.s.skipExpired(j.msg, age)
		return false, true
	}
	select {
	case d.work <- j:
		return true, true
	case <-d.quit:
		_ = j.msg.Nak()
		return false, false
	}
}

// slot runs durable jobs one at a time until the lane stops: it asks the
// dispatcher for a job only when it is free.
func (s *Service) slot(d *durable) {
	for {
		select {
		case d.idle <- struct{}{}:
		case <-d.quit:
			return
		}
		select {
		case j := <-d.work:
			if d.stopped() { // handed over as the lane stopped: not started
				_ = j.msg.Nak()
				return
			}
			s.handleDurable(j.msg)
		case <-d.quit:
			return
		}
	}
}
