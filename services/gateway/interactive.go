package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
)

// replyGrace is how long past a call's deadline (at most the timeout again)
// the gateway still waits for the worker's own deadline reply before it
// answers 504 itself.
const replyGrace = 2 * time.Second

// requestHeader is shared read-only by every interactive request message.
var requestHeader = nats.Header{lane.HeaderContentType: {events.ContentType}}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 1<<20 {
		return // do not keep the rare huge body alive
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// readBody reads r's body into dst, refusing more than limit bytes.
func readBody(r *http.Request, dst []byte, limit int64) ([]byte, *Error) {
	if r.ContentLength > limit {
		return dst, tooLarge(limit)
	}
	if r.ContentLength > 0 && int64(cap(dst)) < r.ContentLength+1 {
		dst = make([]byte, 0, r.ContentLength+1)
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := r.Body.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if int64(len(dst)) > limit {
			return dst, tooLarge(limit)
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, badRequest("", "invalid_request", "read request body: %v", err)
		}
	}
}

func tooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
		Message: "the request body is larger than the gateway's limit of " + strconv.FormatInt(limit, 10) + " bytes"}
}

// serveChat is POST /v1/chat/completions: the interactive lane.
func (g *Gateway) serveChat(w http.ResponseWriter, r *http.Request) {
	buf := getBuf()
	defer putBuf(buf)
	body, e := readBody(r, *buf, g.maxBody)
	*buf = body
	if e != nil {
		writeError(w, e)
		return
	}
	cr, err := events.ParseChatRequest(body)
	if err != nil {
		writeError(w, badRequest("", "invalid_request", "invalid chat-completions request: %v", err))
		return
	}
	if !g.models.Has(cr.Model) {
		writeError(w, &Error{Status: http.StatusNotFound, Type: typeInvalidRequest, Param: "model", Code: "model_not_found",
			Message: "The model " + quote(cr.Model) + " is not served by any configured endpoint (see GET /v1/models)."})
		return
	}

	id := nuid.Next()
	now := g.now().UTC()
	wt := g.inbox.register()
	defer g.inbox.release(wt)

	ev := getBuf()
	defer putBuf(ev) // kept: a refused call is sent again
	*ev = g.enc.append((*ev)[:0], id, body, now, now.Add(g.timeout))
	wt.start(g.timeout + min(replyGrace, g.timeout))
	start := time.Now()
	var rep lane.Reply
	for try := 1; ; try++ {
		err = g.nc.PublishMsg(&nats.Msg{Subject: events.SubjectJobInteractive, Reply: wt.subject, Header: requestHeader, Data: *ev})
		if err != nil {
			g.metrics.result("no_workers")
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "workers_unreachable",
				Message: "cannot reach the workers: " + err.Error()})
			return
		}
		m, err := wt.next(r.Context(), g.inbox)
		if err != nil {
			g.callFailed(w, r, wt, id, false)
			return
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			g.metrics.result("no_workers")
			w.Header().Set("Retry-After", "1")
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "no_workers",
				Message: "no request worker is running: start one (switchboard worker) and retry"})
			return
		}
		rep, err = lane.ParseReply(m)
		if err == nil && (rep.Stream == lane.StreamData || rep.Stream == lane.StreamEnd) {
			err = errors.New("a stream's " + rep.Stream + " message came before its start")
		}
		if err != nil {
			g.badReply(w, id, err)
			return
		}
		// A worker that is busy or stopping refused the call without
		// starting it: the queue group may pick another one.
		if !rep.Refused || rep.Stream == lane.StreamStart || try == lane.RefusedTries {
			break
		}
		g.metrics.refused.Inc()
	}
	stream := 0
	if cr.Stream {
		stream = 1
	}
	g.metrics.firstReply[stream].Observe(time.Since(start).Seconds())

	h := w.Header()
	h["X-Request-Id"] = []string{id}
	if rep.Endpoint != "" {
		h["X-Switchboard-Endpoint"] = []string{rep.Endpoint}
	}
	h["X-Switchboard-Attempts"] = []string{strconv.Itoa(rep.Attempts)}
	if rep.Stream == lane.StreamStart {
		g.relayStream(w, r, wt, id, rep)
		return
	}
	if rep.RetryAfter > 0 {
		h["Retry-After"] = []string{strconv.FormatInt(int64(rep.RetryAfter/time.Second), 10)}
	}
	ct := rep.ContentType
	if ct == "" {
		ct = lane.ContentTypeJSON
	}
	h["Content-Type"] = []string{ct}
	h["Content-Length"] = []string{strconv.Itoa(len(rep.Body))}
	w.WriteHeader(rep.Status)
	w.Write(rep.Body)
	if rep.Succeeded() {
		g.metrics.result("ok")
	} else {
		g.metrics.result("error")
	}
}

// relayStream writes a streamed reply through to the client as it arrives.
// A stream that does not end with the worker's StreamEnd ends with an SSE
// error event and no "data: [DONE]", so the client can tell it broke.
func (g *Gateway) relayStream(w http.ResponseWriter, r *http.Request, wt *waiter, id string, start lane.Reply) {
	rc := http.NewResponseController(w)
	h := w.Header()
	ct := start.ContentType
	if ct == "" {
		ct = lane.ContentTypeSSE
	}
	h["Content-Type"] = []string{ct}
	h["Cache-Control"] = []string{"no-cache"}
	h["X-Accel-Buffering"] = []string{"no"}
	w.WriteHeader(http.StatusOK)
	if len(start.Body) > 0 {
		w.Write(start.Body)
	}
	if err := rc.Flush(); err != nil {
		g.clientGone(wt, id)
		return
	}
	for {
		m, err := wt.next(r.Context(), g.inbox)
		if err != nil {
			g.callFailed(w, r, wt, id, true)
			return
		}
		rep, err := lane.ParseReply(m)
		if err != nil {
			g.streamError(w, rc, id, lane.ErrorBody("bad reply from the worker: "+err.Error(), lane.TypeServer, lane.CodeInternal), "bad_reply")
			return
		}
		switch rep.Stream {
		case lane.StreamData:
			if _, err := w.Write(rep.Body); err != nil {
				g.clientGone(wt, id)
				return
			}
			if err := rc.Flush(); err != nil {
				g.clientGone(wt, id)
				return
			}
		case lane.StreamEnd:
			g.metrics.result("ok")
			return
		case lane.StreamError:
			body := rep.Body
			if !lane.IsErrorBody(body) {
				body = lane.ErrorBody("the upstream stream broke", lane.TypeUpstream, lane.CodeStreamBroken)
			}
			g.streamError(w, rc, id, body, "stream_broken")
			return
		default:
			g.streamError(w, rc, id, lane.ErrorBody("bad reply from the worker: a second stream start", lane.TypeServer, lane.CodeInternal), "bad_reply")
			return
		}
	}
}

// streamError ends a started stream with an error event.
func (g *Gateway) streamError(w http.ResponseWriter, rc *http.ResponseController, id string, body []byte, result string) {
	g.metrics.result(result)
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.Debug("interactive stream ended with an error", "job", id, "result", result, "error", string(body))
	}
	b := make([]byte, 0, len(body)+8)
	b = append(b, "data: "...)
	b = append(b, body...)
	b = append(b, "\n\n"...)
	w.Write(b)
	rc.Flush()
}

// callFailed answers a call whose reply did not come: the client went away
// (the workers are told to stop) or the deadline passed.
func (g *Gateway) callFailed(w http.ResponseWriter, r *http.Request, wt *waiter, id string, started bool) {
	if r.Context().Err() != nil {
		g.clientGone(wt, id)
		return
	}
	g.metrics.result("timeout")
	msg := "no answer from the workers within " + g.timeout.String()
	if started {
		g.streamError(w, http.NewResponseController(w), id, lane.ErrorBody(msg, lane.TypeUnavailable, lane.CodeDeadline), "timeout")
		return
	}
	writeError(w, &Error{Status: http.StatusGatewayTimeout, Type: typeUnavailable, Code: lane.CodeDeadline, Message: msg})
}

// clientGone tells the workers to stop a call whose client went away.
func (g *Gateway) clientGone(wt *waiter, id string) {
	g.metrics.result("client_gone")
	if err := lane.PublishCancel(g.nc, wt.subject); err != nil {
		g.log.Warn("interactive cancel not sent", "job", id, "err", err)
	}
}

func (g *Gateway) badReply(w http.ResponseWriter, id string, err error) {
	g.metrics.result("bad_reply")
	g.log.Error("bad interactive reply", "job", id, "err", err)
	writeError(w, &Error{Status: http.StatusBadGateway, Type: typeServer, Code: "bad_worker_reply",
		Message: "the worker's reply could not be read: " + err.Error()})
}
