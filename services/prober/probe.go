package prober

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/upstream"
)

// Body limits: a health answer is read only to reuse the connection, an
// error body only for its message and rate-limit hints; model lists of big
// relays run to a few hundred kilobytes.
const (
	healthBodyLimit = 64 << 10
	errorBodyLimit  = 64 << 10
	modelsBodyLimit = 8 << 20
	streamLimit     = 8 << 20
	// maxErrorLen bounds Error in a result.
	maxErrorLen = 512
	// snippetLen bounds the part of a body quoted in Error.
	snippetLen = 200
)

const userAgent = "switchboard-prober/1"

// endpoint is what the prober keeps of one configured endpoint.
type endpoint struct {
	name            string
	host            string
	key             config.Secret
	models          []string
	healthURL       string
	modelsURL       string
	chatURL         string
	completionModel string
	interval        time.Duration
	recheck         time.Duration // the interval after a failed probe
	timeout         time.Duration
	// chatBody asks with max_completion_tokens, chatBodyMaxTokens with the
	// older max_tokens that some relays still require.
	chatBody, chatBodyMaxTokens []byte
}

func (ep *endpoint) setChatBodies(prompt string, maxTokens int) {
	type message struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	type request struct {
		Model               string    `json:"model"`
		Messages            []message `json:"messages"`
		Stream              bool      `json:"stream"`
		MaxCompletionTokens int       `json:"max_completion_tokens,omitempty"`
		MaxTokens           int       `json:"max_tokens,omitempty"`
	}
	r := request{Model: ep.completionModel, Messages: []message{{"user", prompt}}, Stream: true, MaxCompletionTokens: maxTokens}
	ep.chatBody, _ = json.Marshal(r) // strings and ints always marshal
	r.MaxCompletionTokens, r.MaxTokens = 0, maxTokens
	ep.chatBodyMaxTokens, _ = json.Marshal(r)
}

// redact makes s fit for a result or a log line: without the key, short.
func (ep *endpoint) redact(s string) string {
	return upstream.Truncate(upstream.Redact(s, ep.key.Value()), maxErrorLen)
}

// newResult starts the result of a probe of t from vantage that starts at start.
func (t *task) newResult(vantage string, start time.Time) *events.ProbeResult {
	return &events.ProbeResult{
		Endpoint:   t.ep.name,
		Vantage:    vantage,
		Kind:       t.kind,
		IntervalMS: t.ep.interval.Milliseconds(),
		StartedAt:  start.UTC(),
	}
}

// probe runs one probe of t that started at start. ctx is the prober's own context: when it ends,
// the probe is the prober's failure (caller_canceled), never the endpoint's.
// Each probe is bounded by the endpoint's timeout.
func (p *Prober) probe(ctx context.Context, t *task, start time.Time) *events.ProbeResult {
	res := t.newResult(p.vantage, start)
	pctx, cancel := context.WithTimeout(ctx, t.ep.timeout)
	defer cancel()
	pr := probeRun{p: p, t: t, ctx: pctx, callerCtx: ctx, res: res, start: start}
	switch t.kind {
	case events.ProbeHealth:
		pr.health()
	case events.ProbeModels:
		pr.models()
	case events.ProbeCompletion:
		pr.completion()
	}
	res.LatencyMS = ms(time.Since(pr.start))
	if res.Outcome == events.ProbePass {
		res.ErrorClass, res.Error = events.ClassNone, ""
	}
	return res
}

// probeRun is one probe in progress.
type probeRun struct {
	p         *Prober
	t         *task
	ctx       context.Context // bounded by the endpoint's timeout
	callerCtx context.Context // the prober's own
	res       *events.ProbeResult
	start     time.Time
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// newRequest builds a request with the key; an error (which newEndpoint's
// URL checks rule out) makes the probe inconclusive, class internal.
func (r *probeRun) newRequest(method, url string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(r.ctx, method, url, rd)
	if err != nil {
		r.fail(events.ProbeInconclusive, events.ClassInternal, fmt.Sprintf("%s: build the request: %v", r.t.kind, err))
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	if k := r.t.ep.key; k.IsSet() {
		req.Header.Set("Authorization", "Bearer "+k.Value())
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// do sends a request built by newRequest; ok is false when the probe
// already has its verdict.
func (r *probeRun) do(what, method, url string, body []byte) (*http.Response, bool) {
	req, err := r.newRequest(method, url, body)
	if err != nil {
		return nil, false
	}
	if body != nil {
		req.Header.Set("Accept", "text/event-stream")
	}
	resp, err := r.p.client.Do(req)
	if err != nil {
		r.callFailed(what, err)
		return nil, false
	}
	r.res.StatusCode = upstream.EventStatus(resp.StatusCode)
	return resp, true
}

// fail sets the verdict of a failed probe.
func (r *probeRun) fail(outcome events.ProbeOutcome, class events.ErrorClass, msg string) {
	r.res.Outcome, r.res.ErrorClass, r.res.Error = outcome, class, r.t.ep.redact(msg)
}

// callFailed classifies an error of the HTTP call or of reading its body.
func (r *probeRun) callFailed(what string, err error) {
	class := upstream.Classify(r.callerCtx, err)
	outcome := events.ProbeFail
	msg := what + ": " + err.Error()
	switch class {
	case events.ClassCallerCanceled:
		outcome, msg = events.ProbeInconclusive, what+": the prober stopped"
	case events.ClassTimeout:
		if r.ctx.Err() != nil {
			msg = fmt.Sprintf("%s: no answer within the timeout of %s", what, r.t.ep.timeout)
		}
	}
	r.fail(outcome, class, msg)
}

// statusFailed sets the verdict of an answer with an unexpected status:
// 429 and the statuses that mean "the endpoint refused this request" are
// inconclusive, every other one fails.
func (r *probeRun) statusFailed(resp *http.Response, body []byte) {
	code := resp.StatusCode
	r.res.StatusCode = upstream.EventStatus(code)
	class := events.ClassOfStatus(code)
	outcome := events.ProbeFail
	switch class {
	case events.ClassHTTP429:
		outcome = events.ProbeInconclusive
		now := time.Now()
		until, ok := upstream.ThrottledUntil(resp.Header, body, now)
		if !ok {
			// No hint: assume the quota is back by the next probe.
			until = now.Add(r.t.ep.interval)
		}
		until = until.UTC()
		r.res.ThrottledUntil = &until
	case events.ClassClientError:
		outcome = events.ProbeInconclusive
	}
	msg := string(r.t.kind) + ": HTTP " + strconv.Itoa(code)
	if loc := resp.Header.Get("Location"); loc != "" && code >= 300 && code < 400 {
		msg += " redirect to " + loc
	}
	if s := r.snippet(body); s != "" {
		msg += ": " + s
	}
	r.fail(outcome, class, msg)
}

// snippet is the start of a body on one line, for an error message. The
// key is redacted before anything is cut, so no part of it survives.
func (r *probeRun) snippet(body []byte) string {
	s := upstream.Redact(string(body), r.t.ep.key.Value())
	s = strings.Join(strings.Fields(s[:min(len(s), 4*snippetLen)]), " ")
	return upstream.Truncate(s, snippetLen)
}

// readBody reads up to limit bytes of resp.Body and closes it. It reports
// whether the body was longer than limit.
func readBody(resp *http.Response, limit int64) ([]byte, bool, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if int64(len(b)) > limit {
		return b[:limit], true, err
	}
	return b, false, err
}

func ok2xx(code int) bool { return code >= 200 && code < 300 }

// health: GET {base}{health_path}; any 2xx passes.
func (r *probeRun) health() {
	resp, ok := r.do("health", http.MethodGet, r.t.ep.healthURL, nil)
	if !ok {
		return
	}
	body, _, err := readBody(resp, healthBodyLimit)
	if err != nil {
		r.callFailed("health: read body", err)
		return
	}
	if !ok2xx(resp.StatusCode) {
		r.statusFailed(resp, body)
		return
	}
	r.res.Outcome = events.ProbePass
}

// models: GET {base}/models; passes when the answer is a model list that
// holds every configured model.
func (r *probeRun) models() {
	resp, ok := r.do("models", http.MethodGet, r.t.ep.modelsURL, nil)
	if !ok {
		return
	}
	limit := int64(modelsBodyLimit)
	if !ok2xx(resp.StatusCode) {
		limit = errorBodyLimit
	}
	body, tooLong, err := readBody(resp, limit)
	if err != nil {
		r.callFailed("models: read body", err)
		return
	}
	if !ok2xx(resp.StatusCode) {
		r.statusFailed(resp, body)
		return
	}
	if tooLong {
		r.fail(events.ProbeFail, events.ClassBadBody, fmt.Sprintf("models: the list is larger than %d bytes", modelsBodyLimit))
		return
	}
	ids, err := parseModels(body)
	if err != nil {
		r.fail(events.ProbeFail, events.ClassBadBody, fmt.Sprintf("models: %v (body: %s)", err, r.snippet(body)))
		return
	}
	var missing []string
	for _, m := range r.t.ep.models {
		if !ids[m] {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		r.res.MissingModels = missing
		r.fail(events.ProbeFail, events.ClassModelMissing,
			fmt.Sprintf("models: %s not listed (%d models listed)", strings.Join(missing, ", "), len(ids)))
		return
	}
	r.res.Outcome = events.ProbePass
}

// parseModels reads an OpenAI model list, {"data":[{"id":...},...]}.
func parseModels(body []byte) (map[string]bool, error) {
	var list struct {
		Data *[]struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("the answer is not a model list: %v", err)
	}
	if list.Data == nil {
		return nil, errors.New("the answer has no data list of models")
	}
	ids := make(map[string]bool, len(*list.Data))
	for _, m := range *list.Data {
		ids[m.ID] = true
	}
	return ids, nil
}

// completion: a streamed chat completion of the configured prompt. It
// passes when the stream ends with [DONE] after at least one chunk, all of
// them JSON. TTFT is the time to the first data event.
func (r *probeRun) completion() {
	ep := r.t.ep
	r.res.Model = ep.completionModel
	body := ep.chatBody
	if r.t.useMaxTokens {
		body = ep.chatBodyMaxTokens
	}
	resp, ok := r.do("completion", http.MethodPost, ep.chatURL, body)
	if !ok {
		return
	}
	if !ok2xx(resp.StatusCode) {
		errBody, _, err := readBody(resp, errorBodyLimit)
		if err != nil {
			r.callFailed("completion: read body", err)
			return
		}
		if resp.StatusCode != http.StatusBadRequest || r.t.useMaxTokens ||
			!bytes.Contains(bytes.ToLower(errBody), []byte("max_completion_tokens")) {
			r.statusFailed(resp, errBody)
			return
		}
		// The relay does not know max_completion_tokens: ask again, once,
		// with max_tokens, and keep doing so if that works. The result is
		// that of the second request: its start, its latency.
		r.start = time.Now()
		r.res.StartedAt = r.start.UTC()
		if resp, ok = r.do("completion (with max_tokens)", http.MethodPost, ep.chatURL, ep.chatBodyMaxTokens); !ok {
			return
		}
		if !ok2xx(resp.StatusCode) {
			errBody, _, err := readBody(resp, errorBodyLimit)
			if err != nil {
				r.callFailed("completion: read body", err)
				return
			}
			r.statusFailed(resp, errBody)
			return
		}
		r.t.useMaxTokens = true
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
		r.completionJSON(resp)
		return
	}
	r.readStream(resp.Body)
}

// completionJSON reads a relay's non-streamed answer to a streamed request.
func (r *probeRun) completionJSON(resp *http.Response) {
	body, tooLong, err := readBody(resp, streamLimit)
	if err != nil {
		r.callFailed("completion: read body", err)
		return
	}
	r.res.TTFTMS = ms(time.Since(r.start))
	var c struct {
		Choices []json.RawMessage `json:"choices"`
	}
	if tooLong || json.Unmarshal(body, &c) != nil || len(c.Choices) == 0 {
		r.fail(events.ProbeFail, events.ClassBadBody, "completion: the answer is not a chat completion: "+r.snippet(body))
		return
	}
	r.res.Outcome = events.ProbePass
}

var (
	dataPrefix = []byte("data:")
	doneData   = []byte("[DONE]")
	errorKey   = []byte(`"error"`)
)

// errUnterminated marks a stream that ended without [DONE].
var errUnterminated = errors.New("the stream ended without data: [DONE]")

// readStream reads server-sent events up to data: [DONE].
func (r *probeRun) readStream(body io.Reader) {
	sc := newLineScanner(body, streamLimit)
	chunks := 0
	for {
		line, err := sc.next()
		if err != nil {
			if errors.Is(err, errStreamTooLong) {
				r.fail(events.ProbeFail, events.ClassBadBody, "completion: "+err.Error())
				return
			}
			class := upstream.Classify(r.callerCtx, err)
			switch {
			case class == events.ClassCallerCanceled, class == events.ClassTimeout:
				r.callFailed("completion: read stream", err)
			case errors.Is(err, io.EOF):
				r.fail(events.ProbeFail, events.ClassStreamBroken,
					fmt.Sprintf("completion: %v after %d chunks", errUnterminated, chunks))
			default:
				r.fail(events.ProbeFail, events.ClassStreamBroken,
					fmt.Sprintf("completion: the stream broke after %d chunks: %v", chunks, err))
			}
			return
		}
		data, ok := bytes.CutPrefix(line, dataPrefix)
		if !ok {
			continue // blank separators, comments, event: and id: fields
		}
		data = bytes.TrimSpace(data)
		if r.res.TTFTMS == 0 {
			r.res.TTFTMS = ms(time.Since(r.start))
		}
		if bytes.Equal(data, doneData) {
			if chunks == 0 {
				r.fail(events.ProbeFail, events.ClassBadBody, "completion: the stream had no chunk before [DONE]")
				return
			}
			r.res.Outcome = events.ProbePass
			// Read the end of the chunked body, so the connection is reused.
			io.CopyN(io.Discard, body, 4096) //nolint:errcheck // best effort
			return
		}
		if !json.Valid(data) {
			r.fail(events.ProbeFail, events.ClassBadBody,
				fmt.Sprintf("completion: chunk %d is not JSON: %s", chunks+1, r.snippet(data)))
			return
		}
		if bytes.Contains(data, errorKey) && streamError(data) {
			r.fail(events.ProbeFail, events.ClassBadBody, "completion: the stream carried an error: "+r.snippet(data))
			return
		}
		chunks++
	}
}

// streamError reports whether a chunk is an error object rather than a
// completion chunk, as relays send when an upstream fails mid-stream.
func streamError(data []byte) bool {
	var c struct {
		Error json.RawMessage `json:"error"`
	}
	return json.Unmarshal(data, &c) == nil && len(c.Error) > 0 && !bytes.Equal(c.Error, []byte("null"))
}

var errStreamTooLong = fmt.Errorf("the stream is longer than %d bytes", streamLimit)

// lineScanner splits a stream into lines (without the line ending),
// bounding the total it reads.
type lineScanner struct {
	r     io.Reader
	buf   []byte
	start int // of the unread part of buf
	total int
	limit int
	err   error
}

func newLineScanner(r io.Reader, limit int) *lineScanner {
	// Reading one byte past the limit tells a stream that is too long from
	// one that ends exactly at it.
	return &lineScanner{r: io.LimitReader(r, int64(limit)+1), buf: make([]byte, 0, 4096), limit: limit}
}

// next returns the next complete line. A last line without its newline is
// not returned: a stream cut mid-line is broken. The line is valid until the
// next call.
func (s *lineScanner) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(s.buf[s.start:], '\n'); i >= 0 {
			line := s.buf[s.start : s.start+i]
			s.start += i + 1
			return bytes.TrimSuffix(line, []byte("\r")), nil
		}
		if s.err != nil {
			return nil, s.err
		}
		if s.start > 0 { // keep the partial line at the front
			n := copy(s.buf, s.buf[s.start:])
			s.buf, s.start = s.buf[:n], 0
		}
		if len(s.buf) == cap(s.buf) {
			s.buf = append(s.buf, 0)[:len(s.buf)]
		}
		n, err := s.r.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+n]
		s.total += n
		switch {
		case s.total > s.limit:
			s.err = errStreamTooLong
		case err != nil:
			s.err = err
		}
	}
}
