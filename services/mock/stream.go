package mock

import (
	"net/http"
	"unicode/utf8"
)

// serveStream answers a chat completion as server-sent events: a chunk with
// the role, StreamChunks content chunks (each after StreamDelay), a chunk
// with finish_reason "stop", the usage chunk if asked for, then [DONE].
// Every chunk is flushed. A malformed stream carries a broken chunk before
// [DONE]; a truncated one stops mid-chunk and the connection is aborted.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, st *faultState, n uint64, model, prompt string, u usage, includeUsage bool) {
	malformed := st.malformedRate > 0 && s.draw(n, drawMalformed) < st.malformedRate
	truncate := !malformed && st.truncateRate > 0 && s.draw(n, drawTruncate) < st.truncateRate
	switch {
	case malformed:
		s.stats.faults[faultMalformed].Add(1)
	case truncate:
		s.stats.faults[faultTruncate].Add(1)
	}

	h := w.Header()
	h["Content-Type"] = sseContentType
	h["Cache-Control"] = noCache
	s.stats.status(http.StatusOK)
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	send := func(b []byte) bool {
		if _, err := w.Write(b); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}

	buf := getBuf()
	defer putBuf(buf)
	// Every chunk starts with the same prefix; b[:prefix] keeps it between chunks.
	b := append((*buf)[:0], `data: {"id":"chatcmpl-mock-`...)
	b = appendInt(b, int64(s.ids.Add(1)))
	b = append(b, `","object":"chat.completion.chunk","created":`...)
	b = appendInt(b, s.cfg.Now().Unix())
	b = append(b, `,"model":`...)
	b = appendString(b, model)
	b = append(b, `,"choices":[`...)
	prefix := len(b)
	defer func() { *buf = b[:0] }()

	b = append(b, `{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`+"\n\n"...)
	if !send(b) {
		return
	}
	if malformed {
		send([]byte(`data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"mo` + "\n\ndata: [DONE]\n\n"))
		return
	}

	content := s.replyPrefix + prompt
	chunks := s.cfg.StreamChunks
	for i := 0; i < chunks; i++ {
		if s.cfg.StreamDelay > 0 && !s.wait(r.Context(), s.cfg.StreamDelay) {
			return // the client gave up
		}
		from, to := runeAligned(content, len(content)*i/chunks), runeAligned(content, len(content)*(i+1)/chunks)
		b = append(b[:prefix], `{"index":0,"delta":{"content":"`...)
		b = appendEscaped(b, content[from:to])
		b = append(b, `"},"finish_reason":null}]}`+"\n\n"...)
		if truncate && i == chunks/2 {
			w.Write(b[:prefix+(len(b)-prefix)/2]) //nolint:errcheck // aborting anyway
			abort(w)
		}
		if !send(b) {
			return
		}
	}

	b = append(b[:prefix], `{"index":0,"delta":{},"finish_reason":"stop"}]}`+"\n\n"...)
	if !send(b) {
		return
	}
	if includeUsage {
		b = append(b[:prefix], `],"usage":`...)
		b = u.append(b)
		b = append(b, "}\n\n"...)
		if !send(b) {
			return
		}
	}
	send(doneEvent)
}

var doneEvent = []byte("data: [DONE]\n\n")

// runeAligned moves i forward to the start of a rune in s.
func runeAligned(s string, i int) int {
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return i
}
