package mock

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// drawKind separates the independent random draws made for one request.
type drawKind uint64

const (
	drawLatency drawKind = iota
	drawHang
	drawRateLimit
	drawError
	drawMalformed
	drawTruncate
	drawVariant
)

// draw returns a number in [0,1) that depends only on the seed, the
// request's sequence number n and the kind of draw: fault decisions are
// reproducible without a lock around a shared generator.
func (s *Server) draw(n uint64, k drawKind) float64 {
	h := mix64(mix64(s.seed^mix64(n)) + uint64(k))
	return float64(h>>11) * 0x1p-53
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// injectFaults applies, in order, hang, latency, rate limit and error.
// It reports whether the request has been dealt with.
func (s *Server) injectFaults(w http.ResponseWriter, r *http.Request, st *faultState, n uint64) bool {
	if st.hangRate > 0 && s.draw(n, drawHang) < st.hangRate {
		s.stats.faults[faultHang].Add(1)
		s.hang(w, r)
		return true
	}
	if st.anyLatency {
		d := st.latency + st.latencyMin
		if st.latencyMax > st.latencyMin {
			d += time.Duration(s.draw(n, drawLatency) * float64(st.latencyMax-st.latencyMin))
		}
		s.stats.faults[faultLatency].Add(1)
		if !s.wait(r.Context(), d) {
			return true // the client gave up
		}
	}
	if st.rateLimitRate > 0 && s.draw(n, drawRateLimit) < st.rateLimitRate {
		s.stats.faults[faultRateLimit].Add(1)
		h := w.Header()
		h["Retry-After"] = st.retryAfterHeader
		h["Retry-After-Ms"] = st.retryAfterMSHeader
		h["X-Ratelimit-Remaining-Requests"] = zeroHeader
		h["X-Ratelimit-Reset-Requests"] = st.resetHeader
		s.writeJSON(w, http.StatusTooManyRequests, st.rateLimitBody)
		return true
	}
	if st.errorRate > 0 && s.draw(n, drawError) < st.errorRate {
		s.stats.faults[faultError].Add(1)
		s.writeJSON(w, st.errorStatus, st.errorBody)
		return true
	}
	return false
}

var zeroHeader = []string{"0"}

// wait pauses for d. It returns false if ctx ended first, and true early
// when the server is closing.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.closed.Done():
		return true
	case <-ctx.Done():
		return false
	}
}

// hang holds the request until the client gives up or the server closes;
// then it aborts the connection, as a server going away would.
func (s *Server) hang(w http.ResponseWriter, r *http.Request) {
	s.stats.hanging.Add(1)
	defer s.stats.hanging.Add(-1)

	// net/http notices a client hanging up only once the body was read, so
	// read it, and let Close interrupt a client that sends it slowly.
	rc := http.NewResponseController(w)
	stop := context.AfterFunc(s.closed, func() {
		rc.SetReadDeadline(time.Now()) //nolint:errcheck // unsupported: the read ends with the client
	})
	io.Copy(io.Discard, io.LimitReader(r.Body, maxRequestBody)) //nolint:errcheck
	stop()

	select {
	case <-r.Context().Done():
	case <-s.closed.Done():
		panic(http.ErrAbortHandler)
	}
}

// outage answers a request that arrived while the endpoint is down.
func (s *Server) outage(w http.ResponseWriter, r *http.Request, st *faultState) {
	s.stats.faults[faultOutage].Add(1)
	switch st.mode {
	case OutageHang:
		s.hang(w, r)
	case OutageReset:
		resetConn(w)
	default:
		s.writeJSON(w, http.StatusServiceUnavailable, s.outageBody)
	}
}

// resetConn closes the client's connection without a response; on TCP it
// sends a reset so the client sees "connection reset by peer".
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // HTTP/2 or a recorder: abort instead
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) //nolint:errcheck // best effort: a FIN is fine too
	}
	conn.Close() //nolint:errcheck
}

// Malformed 200 bodies, picked by a draw: not JSON at all, cut-off JSON,
// and valid JSON that is not the expected object.
var malformedBodies = [...][]byte{
	[]byte("<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"),
	[]byte(`{"id":"chatcmpl-mock","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"mo`),
	[]byte(`{"status":"ok"}` + "\n"),
}

// writeBody sends a successful JSON answer, unless it is chosen to be
// malformed or truncated.
func (s *Server) writeBody(w http.ResponseWriter, st *faultState, n uint64, body []byte) {
	if st.malformedRate > 0 && s.draw(n, drawMalformed) < st.malformedRate {
		s.stats.faults[faultMalformed].Add(1)
		s.writeJSON(w, http.StatusOK, malformedBodies[int(s.draw(n, drawVariant)*float64(len(malformedBodies)))])
		return
	}
	if st.truncateRate > 0 && s.draw(n, drawTruncate) < st.truncateRate {
		s.stats.faults[faultTruncate].Add(1)
		h := w.Header()
		h["Content-Type"] = jsonContentType
		h.Set("Content-Length", strconv.Itoa(len(body)))
		s.stats.status(http.StatusOK)
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2]) //nolint:errcheck
		abort(w)
	}
	s.writeJSON(w, http.StatusOK, body)
}

// abort flushes what was written and cuts the connection mid-response.
func abort(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	panic(http.ErrAbortHandler)
}
