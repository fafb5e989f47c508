package mock

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"unicode/utf8"
)

// A chat request is checked with json.Valid (pooled, no allocation) and then
// read by a small cursor that only picks out what the mock needs, leaving
// everything else as raw bytes. encoding/json's reflection costs ~15
// allocations a request, more than the rest of the mock together.
// FuzzParseChat holds this parser to a decoding with encoding/json.

// chatRequest is what the mock reads of a chat completion request. Its
// byte slices point into the request body.
type chatRequest struct {
	model        []byte // unescaped
	messages     []chatMessage
	stream       bool
	includeUsage bool
}

type chatMessage struct {
	role    []byte // unescaped
	content []byte // raw JSON: a string, an array of parts, null, or nil when absent
}

var errNotJSON = &requestError{http.StatusBadRequest,
	"We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)", "", ""}

func invalidType(param, want string) *requestError {
	return &requestError{http.StatusBadRequest, "Invalid type for '" + param + "': expected " + want + ".", param, "invalid_type"}
}

func missing(param string) *requestError {
	return &requestError{http.StatusBadRequest, "Missing required parameter: '" + param + "'.", param, "missing_required_parameter"}
}

// parseChat reads and validates a chat request, appending its messages to
// msgs (pass a stack array's slice: returning by value keeps it there).
// Where a key repeats the last one counts, as in encoding/json; keys are
// case-sensitive.
func parseChat(body []byte, msgs []chatMessage) (req chatRequest, _ *requestError) {
	if !json.Valid(body) {
		return req, errNotJSON
	}
	top := newCursor(body)
	if top.kind() != '{' {
		return req, &requestError{http.StatusBadRequest, "The request body must be a JSON object.", "", "invalid_type"}
	}
	var model, messages, stream, options []byte
	top.enter()
	for {
		key, val, ok := top.member()
		if !ok {
			break
		}
		switch {
		case keyIs(key, "model"):
			model = val
		case keyIs(key, "messages"):
			messages = val
		case keyIs(key, "stream"):
			stream = val
		case keyIs(key, "stream_options"):
			options = val
		}
	}

	switch kindOf(model) {
	case '"':
		req.model = unquote(model)
	case 0, 'n':
	default:
		return req, invalidType("model", "a string")
	}
	if len(req.model) == 0 {
		return req, missing("model")
	}

	switch kindOf(messages) {
	case '[':
	case 0, 'n':
		return req, missing("messages")
	default:
		return req, invalidType("messages", "an array")
	}
	req.messages = msgs[:0]
	list := newCursor(messages)
	list.enter()
	for i := 0; ; i++ {
		val, ok := list.element()
		if !ok {
			break
		}
		if kindOf(val) != '{' {
			return req, invalidType(fmt.Sprintf("messages[%d]", i), "an object")
		}
		var m chatMessage
		var role []byte
		obj := newCursor(val)
		obj.enter()
		for {
			key, v, ok := obj.member()
			if !ok {
				break
			}
			switch {
			case keyIs(key, "role"):
				role = v
			case keyIs(key, "content"):
				m.content = v
			}
		}
		switch kindOf(role) {
		case '"':
			m.role = unquote(role)
		case 0, 'n':
		default:
			return req, invalidType(fmt.Sprintf("messages[%d].role", i), "a string")
		}
		if len(m.role) == 0 {
			return req, missing(fmt.Sprintf("messages[%d].role", i))
		}
		switch kindOf(m.content) {
		case 0, '"', '[', 'n':
		default:
			return req, invalidType(fmt.Sprintf("messages[%d].content", i), "a string, an array of content parts or null")
		}
		req.messages = append(req.messages, m)
	}
	if len(req.messages) == 0 {
		return req, &requestError{http.StatusBadRequest, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", "messages", "empty_array"}
	}

	var err *requestError
	if req.stream, err = boolean(stream, "stream"); err != nil {
		return req, err
	}
	switch kindOf(options) {
	case '{':
		var include []byte
		obj := newCursor(options)
		obj.enter()
		for {
			key, v, ok := obj.member()
			if !ok {
				break
			}
			if keyIs(key, "include_usage") {
				include = v
			}
		}
		if req.includeUsage, err = boolean(include, "stream_options.include_usage"); err != nil {
			return req, err
		}
	case 0, 'n':
	default:
		return req, invalidType("stream_options", "an object")
	}
	return req, nil
}

// prompt returns the quoted part of the last user message (of the last
// message if none is from the user).
func (req *chatRequest) prompt() (string, *requestError) {
	last := len(req.messages) - 1
	for i := last; i >= 0; i-- {
		if string(req.messages[i].role) == "user" {
			last = i
			break
		}
	}
	text, err := messageText(req.messages[last].content)
	if err != nil {
		p := fmt.Sprintf("messages[%d].content", last)
		return "", &requestError{http.StatusBadRequest, "Invalid '" + p + "': " + err.Error() + ".", p, "invalid_value"}
	}
	return text, nil
}

// promptTokens estimates the prompt's tokens from the size of its contents.
func (req *chatRequest) promptTokens() int {
	n := 0
	for _, m := range req.messages {
		n += 3 + tokens(len(m.content))
	}
	return n
}

func boolean(raw []byte, param string) (bool, *requestError) {
	switch kindOf(raw) {
	case 0, 'n':
		return false, nil
	case 't':
		return true, nil
	case 'f':
		return false, nil
	}
	return false, invalidType(param, "a boolean")
}

// kindOf is the first byte of a raw JSON value, or 0 when it is absent.
func kindOf(raw []byte) byte {
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

// keyIs compares a raw (still quoted) object key with name.
func keyIs(key []byte, name string) bool {
	if plain(key) {
		return len(key) == len(name)+2 && string(key[1:len(key)-1]) == name
	}
	return string(unquote(key)) == name
}

// plain reports whether a string literal reads as its bytes: no escapes, and
// valid UTF-8 (encoding/json replaces invalid bytes with U+FFFD).
func plain(raw []byte) bool { return bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) }

// unquote returns the contents of a valid JSON string literal.
func unquote(raw []byte) []byte {
	if plain(raw) {
		return raw[1 : len(raw)-1]
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil // cannot happen: the body passed json.Valid
	}
	return []byte(s)
}

// cursor walks JSON text that passed json.Valid, so it needs no error
// handling: every value, string and bracket is well formed.
type cursor struct {
	b []byte
	i int
}

func newCursor(b []byte) cursor {
	c := cursor{b: b}
	c.space()
	return c
}

// kind is the first byte of the value at the cursor.
func (c *cursor) kind() byte { return c.b[c.i] }

// enter steps into the object or array at the cursor.
func (c *cursor) enter() { c.i++ }

func (c *cursor) space() {
	for c.i < len(c.b) {
		switch c.b[c.i] {
		case ' ', '\t', '\n', '\r':
			c.i++
		default:
			return
		}
	}
}

// more skips a separating comma and reports whether the object or array
// goes on, stepping past its closing bracket if not.
func (c *cursor) more() bool {
	c.space()
	switch c.b[c.i] {
	case '}', ']':
		c.i++
		return false
	case ',':
		c.i++
		c.space()
	}
	return true
}

// member returns the next key (quoted) and value of an object.
func (c *cursor) member() (key, val []byte, ok bool) {
	if !c.more() {
		return nil, nil, false
	}
	key = c.value()
	c.space()
	c.i++ // ':'
	return key, c.value(), true
}

// element returns the next value of an array.
func (c *cursor) element() ([]byte, bool) {
	if !c.more() {
		return nil, false
	}
	return c.value(), true
}

// value returns the raw value at the cursor and moves past it.
func (c *cursor) value() []byte {
	c.space()
	start := c.i
	switch c.b[c.i] {
	case '"':
		c.skipString()
	case '{', '[':
		for depth := 0; ; {
			switch c.b[c.i] {
			case '"':
				c.skipString()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			c.i++
			if depth == 0 {
				break
			}
		}
	default: // number, true, false, null
		for c.i < len(c.b) {
			switch c.b[c.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return c.b[start:c.i]
			}
			c.i++
		}
	}
	return c.b[start:c.i]
}

func (c *cursor) skipString() {
	c.i++
	for c.b[c.i] != '"' {
		if c.b[c.i] == '\\' {
			c.i++
		}
		c.i++
	}
	c.i++
}
