package mock

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode/utf8"
)

// maxRequestBody bounds a chat request body.
const maxRequestBody = 8 << 20

// replyRunes is how much of the last user message a reply quotes.
const replyRunes = 64

// ReplyContent is the assistant content the mock named name answers to a
// conversation whose last user message is prompt: "mock <name>: " followed
// by the first 64 characters of prompt. Tests of clients can rely on it.
func ReplyContent(name, prompt string) string {
	return "mock " + name + ": " + firstRunes(prompt, replyRunes)
}

// requestError is a 4xx answer to a bad request.
type requestError struct {
	status               int
	message, param, code string
}

// serveChat answers a chat completion request whose body was read into
// buf; the answer reuses buf.
func (s *Server) serveChat(w http.ResponseWriter, r *http.Request, st *faultState, n uint64, buf *[]byte, body []byte) {
	var msgs [8]chatMessage // room for typical requests without allocating
	req, rerr := parseChat(body, msgs[:0])
	var model string
	if rerr == nil {
		var ok bool
		if model, ok = s.models[string(req.model)]; !ok {
			rerr = &requestError{http.StatusNotFound,
				fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", string(req.model)), "model", "model_not_found"}
		}
	}
	var prompt string
	if rerr == nil {
		prompt, rerr = req.prompt()
	}
	if rerr != nil {
		s.writeError(w, rerr.status, rerr.message, "invalid_request_error", rerr.param, rerr.code)
		return
	}

	completionTokens := tokens(len(s.replyPrefix) + len(prompt))
	u := usage{req.promptTokens(), completionTokens}
	if req.stream {
		s.serveStream(w, r, st, n, model, prompt, u, req.includeUsage)
		return
	}

	// The request body is decoded: reuse its buffer for the answer.
	b := (*buf)[:0]
	b = append(b, `{"id":"chatcmpl-mock-`...)
	b = appendInt(b, int64(s.ids.Add(1)))
	b = append(b, `","object":"chat.completion","created":`...)
	b = appendInt(b, s.cfg.Now().Unix())
	b = append(b, `,"model":`...)
	b = appendString(b, model)
	b = append(b, `,"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	b = appendEscaped(b, s.replyPrefix)
	b = appendEscaped(b, prompt)
	b = append(b, `","refusal":null},"finish_reason":"stop"}],"usage":`...)
	b = u.append(b)
	b = append(b, "}\n"...)
	*buf = b
	s.writeBody(w, st, n, b)
}

// messageText returns up to replyRunes characters of a message's text: a
// string, the text parts of an array of content parts joined by spaces, or
// "" for null or no content.
func messageText(raw []byte) (string, error) {
	switch {
	case len(raw) == 0 || raw[0] == 'n':
		return "", nil
	case raw[0] == '"' && bytes.IndexByte(raw, '\\') < 0:
		// No escapes: the text is the bytes between the quotes.
		return string(firstRunesBytes(raw[1:len(raw)-1], replyRunes)), nil
	case raw[0] == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return firstRunes(s, replyRunes), nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("content parts must be objects with a type")
	}
	var text []byte
	for _, p := range parts {
		if p.Type != "text" {
			continue
		}
		if len(text) > 0 {
			text = append(text, ' ')
		}
		text = append(text, p.Text...)
	}
	return firstRunes(string(text), replyRunes), nil
}

// firstRunes returns the prefix of s holding at most n runes.
func firstRunes(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

func firstRunesBytes(b []byte, n int) []byte {
	for i := 0; i < len(b); n-- {
		if n == 0 {
			return b[:i]
		}
		_, size := utf8.DecodeRune(b[i:])
		i += size
	}
	return b
}

// tokens estimates the tokens in n bytes of text: about four bytes a token.
func tokens(n int) int { return (n + 3) / 4 }

type usage struct{ prompt, completion int }

func (u usage) append(b []byte) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = appendInt(b, int64(u.prompt))
	b = append(b, `,"completion_tokens":`...)
	b = appendInt(b, int64(u.completion))
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, int64(u.prompt+u.completion))
	return append(b, '}')
}

var errBodyTooLarge = errors.New("request body too large")

// readBody appends body to dst, failing once it exceeds limit bytes.
func readBody(dst []byte, body io.Reader, limit int) ([]byte, error) {
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := body.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if len(dst) > limit {
			return dst, errBodyTooLarge
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}
