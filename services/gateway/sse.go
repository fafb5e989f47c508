package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// sseKeepalive is how often an idle event stream gets a comment line, so
// proxies keep it open and a dead client is noticed.
const sseKeepalive = 15 * time.Second

// sseQuery is what GET /v1/events was asked for.
type sseQuery struct {
	types  []string // nil: every type
	job    string
	policy jetstream.DeliverPolicy
	seq    uint64
	since  *time.Time
}

func (q sseQuery) wants(typ string) bool { return q.types == nil || slices.Contains(q.types, typ) }

// parseSSEQuery reads types, job, since and the Last-Event-ID header.
func parseSSEQuery(r *http.Request, now time.Time) (sseQuery, *Error) {
	v := r.URL.Query()
	q := sseQuery{policy: jetstream.DeliverNewPolicy}
	if t := v.Get("types"); t != "" {
		for _, typ := range strings.Split(t, ",") {
			typ = strings.TrimSpace(typ)
			if !slices.Contains(events.Types(), typ) {
				return q, badRequest("types", "invalid_request", "types: %q is not an event type (one of %s)",
					typ, strings.Join(events.Types(), ", "))
			}
			q.types = append(q.types, typ)
		}
	}
	if j := v.Get("job"); j != "" {
		if err := events.CheckName("job", j); err != nil {
			return q, badRequest("job", "invalid_request", "%v", err)
		}
		q.job = j
	}
	since := v.Get("since")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		// Resume after the last status event the client saw.
		if n, err := strconv.ParseUint(id, 10, 64); err == nil {
			since = strconv.FormatUint(n+1, 10)
		}
	}
	if since != "" {
		if n, err := strconv.ParseUint(since, 10, 64); err == nil && n > 0 {
			q.policy, q.seq = jetstream.DeliverByStartSequencePolicy, n
		} else if t, err := time.Parse(time.RFC3339Nano, since); err == nil {
			q.policy, q.since = jetstream.DeliverByStartTimePolicy, &t
		} else if d, err := time.ParseDuration(since); err == nil && d > 0 {
			t := now.Add(-d)
			q.policy, q.since = jetstream.DeliverByStartTimePolicy, &t
		} else {
			return q, badRequest("since", "invalid_request",
				"since %q is not a stream sequence number, an RFC 3339 time or a duration such as 10m", since)
		}
	}
	return q, nil
}

// sseEvent is one message bound for the client.
type sseEvent struct {
	seq  uint64 // status stream sequence, the SSE id; 0 = none
	data []byte
}

// serveEvents is GET /v1/events: status changes from SWITCHBOARD_STATUS
// (from now on, or from ?since=), plus, with ?job=ID, that job's finished
// event from SWITCHBOARD_RESULTS (even if it finished before). Each is one
// SSE event whose "event" is the CloudEvent type and whose data is the
// structured-mode CloudEvent; status events carry their stream sequence as
// the SSE id, so a reconnecting EventSource resumes where it left off.
func (g *Gateway) serveEvents(w http.ResponseWriter, r *http.Request) {
	q, e := parseSSEQuery(r, g.now())
	if e != nil {
		writeError(w, e)
		return
	}
	g.streamEvents(w, r, q)
}

// serveStatusEvents feeds the status page: status changes only, from now.
func (g *Gateway) serveStatusEvents(w http.ResponseWriter, r *http.Request) {
	g.streamEvents(w, r, sseQuery{types: []string{events.TypeStatusChanged}, policy: jetstream.DeliverNewPolicy})
}

func (g *Gateway) streamEvents(w http.ResponseWriter, r *http.Request, q sseQuery) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ch := make(chan sseEvent, 64)
	consume := func(stream string, cfg jetstream.OrderedConsumerConfig, status bool) (jetstream.ConsumeContext, error) {
		// A consumer whose client went away goes soon, not after the
		// 5-minute default.
		cfg.InactiveThreshold = 30 * time.Second
		cons, err := g.js.OrderedConsumer(ctx, stream, cfg)
		if err != nil {
			return nil, err
		}
		return cons.Consume(func(m jetstream.Msg) {
			ev := sseEvent{data: m.Data()}
			if status {
				if md, err := m.Metadata(); err == nil {
					ev.seq = md.Sequence.Stream
				}
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
			}
		})
	}
	if q.wants(events.TypeStatusChanged) {
		cc, err := consume(events.StreamStatus, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.SubjectStatusAll}, DeliverPolicy: q.policy, OptStartSeq: q.seq, OptStartTime: q.since,
		}, true)
		if err != nil {
			writeError(w, unavailable("follow stream "+events.StreamStatus, err))
			return
		}
		defer cc.Stop()
	}
	if q.job != "" && q.wants(events.TypeJobFinished) {
		cc, err := consume(events.StreamResults, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.JobDoneSubject(q.job)}, DeliverPolicy: jetstream.DeliverAllPolicy,
		}, false)
		if err != nil {
			writeError(w, unavailable("follow stream "+events.StreamResults, err))
			return
		}
		defer cc.Stop()
	}

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte("retry: 2000\n\n"))
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(sseKeepalive)
	defer tick.Stop()
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.stopping:
			return
		case <-tick.C:
			if _, err := w.Write([]byte(": keepalive\n\n")); err != nil {
				return
			}
		case ev := <-ch:
			var head struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(ev.data, &head) != nil || strings.ContainsAny(head.Type, "\r\n") || !q.wants(head.Type) {
				continue
			}
			buf = appendSSE(buf[:0], ev.seq, head.Type, ev.data)
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// appendSSE appends one SSE event; data lines are split so that a
// multi-line document stays one event.
func appendSSE(b []byte, seq uint64, typ string, data []byte) []byte {
	if seq > 0 {
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, '\n')
	}
	b = append(b, "event: "...)
	b = append(b, typ...)
	b = append(b, '\n')
	for line := range bytes.Lines(bytes.TrimRight(data, "\r\n")) {
		b = append(b, "data: "...)
		b = append(b, bytes.TrimRight(line, "\r\n")...)
		b = append(b, '\n')
	}
	return append(b, '\n')
}

func unavailable(what string, err error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "nats_unavailable",
		Message: what + ": " + err.Error()}
}
