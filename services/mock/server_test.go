package mock

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usageJSON `json:"usage"`
}

type usageJSON struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func TestRoutes(t *testing.T) {
	_, ts := newTestServer(t, Config{Name: "a"})
	tests := []struct {
		name       string
		req        request
		wantStatus int
		wantBody   string // exact, when set
		wantIn     string // substring, when set
	}{
		{"health", request{path: "/health"}, 200, `{"status":"ok"}`, ""},
		{"v1 health", request{path: "/v1/health"}, 200, `{"status":"ok"}`, ""},
		{"prefixed health", request{path: "/anything/v1/health"}, 200, `{"status":"ok"}`, ""},
		{"head health", request{method: http.MethodHead, path: "/health"}, 200, "", ""},
		{"models", request{path: "/v1/models"}, 200, "", `"id":"mock-small","object":"model"`},
		{"prefixed models", request{path: "/e17/v1/models"}, 200, "", `"owned_by":"mock"`},
		{"models trailing slash", request{path: "/v1/models/"}, 200, "", `"object":"list"`},
		{"chat", chatRequestTo("/v1/chat/completions", "mock-small", "hi"), 200, "", `"content":"mock a: hi"`},
		{"prefixed chat", chatRequestTo("/e999/v1/chat/completions", "mock-large", "hi"), 200, "", `"object":"chat.completion"`},
		{"unknown path", request{path: "/v1/embeddings"}, 404, "", `"code":"unknown_url"`},
		{"get chat", request{path: "/v1/chat/completions"}, 405, "", `"code":"method_not_allowed"`},
		{"post models", request{method: http.MethodPost, path: "/v1/models", body: "{}"}, 405, "", `"code":"method_not_allowed"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, ts, tt.req)
			if got.err != nil {
				t.Fatalf("request: %v", got.err)
			}
			if got.status != tt.wantStatus {
				t.Errorf("status = %d, want %d (body %s)", got.status, tt.wantStatus, got)
			}
			if h := got.header.Get("X-Mock-Endpoint"); h != "a" {
				t.Errorf("X-Mock-Endpoint = %q, want %q", h, "a")
			}
			if tt.wantBody != "" && got.String() != tt.wantBody {
				t.Errorf("body = %s, want %s", got, tt.wantBody)
			}
			if tt.wantIn != "" && !strings.Contains(got.String(), tt.wantIn) {
				t.Errorf("body = %s, want it to contain %s", got, tt.wantIn)
			}
			if ct := got.header.Get("Content-Type"); got.status != 0 && tt.req.method != http.MethodHead && ct != "application/json" {
				t.Errorf("Content-Type = %q, want application/json", ct)
			}
		})
	}
}

type modelList struct {
	Object string  `json:"object"`
	Data   []model `json:"data"`
}

type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func TestModels(t *testing.T) {
	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	_, ts := newTestServer(t, Config{Name: "a", Models: []string{"x", `q"uote`}, Now: func() time.Time { return start }})
	got := do(t, ts, request{path: "/v1/models"})
	var list modelList
	if err := json.Unmarshal(got.body, &list); err != nil {
		t.Fatalf("decode %s: %v", got, err)
	}
	want := modelList{Object: "list", Data: []model{
		{ID: "x", Object: "model", Created: start.Unix(), OwnedBy: "mock"},
		{ID: `q"uote`, Object: "model", Created: start.Unix(), OwnedBy: "mock"},
	}}
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("models (-want +got):\n%s", diff)
	}
}

func TestChatCompletion(t *testing.T) {
	now := time.Unix(1700000000, 0)
	_, ts := newTestServer(t, Config{Name: "a", Now: func() time.Time { return now }})
	long := strings.Repeat("é", 70)
	tests := []struct {
		name, body, wantContent string
	}{
		{"string content", chatBody("mock-small", "what is 2+2?", false), "mock a: what is 2+2?"},
		{"escapes", chatBody("mock-small", "say \"hi\"\n\tnow\\", false), "mock a: say \"hi\"\n\tnow\\"},
		{"first 64 characters", chatBody("mock-small", long, false), "mock a: " + strings.Repeat("é", 64)},
		{"last user message wins", `{"model":"mock-small","messages":[{"role":"user","content":"one"},{"role":"assistant","content":"x"},{"role":"user","content":"two"},{"role":"assistant","content":null}]}`, "mock a: two"},
		{"content parts", `{"model":"mock-small","messages":[{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"here"}]}]}`, "mock a: look here"},
		{"no user message", `{"model":"mock-large","messages":[{"role":"system","content":"sys"}]}`, "mock a: sys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, ts, request{path: "/v1/chat/completions", body: tt.body})
			if got.status != http.StatusOK {
				t.Fatalf("status = %d, body %s", got.status, got)
			}
			var c completion
			if err := json.Unmarshal(got.body, &c); err != nil {
				t.Fatalf("decode %s: %v", got, err)
			}
			if !strings.HasPrefix(c.ID, "chatcmpl-mock-") {
				t.Errorf("id = %q, want prefix chatcmpl-mock-", c.ID)
			}
			if c.Object != "chat.completion" || c.Created != now.Unix() || len(c.Choices) != 1 || c.Usage == nil {
				t.Fatalf("completion = %+v", c)
			}
			ch := c.Choices[0]
			if diff := cmp.Diff(tt.wantContent, ch.Message.Content); diff != "" {
				t.Errorf("content (-want +got):\n%s", diff)
			}
			if ch.Message.Role != "assistant" || ch.FinishReason != "stop" || ch.Index != 0 {
				t.Errorf("choice = %+v, want assistant, stop, 0", ch)
			}
			if u := c.Usage; u.PromptTokens <= 0 || u.CompletionTokens <= 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
				t.Errorf("usage = %+v, want positive counts that add up", u)
			}
		})
	}
}

func TestReplyContent(t *testing.T) {
	_, ts := newTestServer(t, Config{Name: "n"})
	prompt := strings.Repeat("abc ", 30)
	got := do(t, ts, chatRequestTo("/v1/chat/completions", "mock-small", prompt))
	var c completion
	if err := json.Unmarshal(got.body, &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("decode %s: %v", got, err)
	}
	if diff := cmp.Diff(ReplyContent("n", prompt), c.Choices[0].Message.Content); diff != "" {
		t.Errorf("content differs from ReplyContent (-want +got):\n%s", diff)
	}
}

func TestChatValidation(t *testing.T) {
	_, ts := newTestServer(t, Config{Name: "a"})
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantParam  string
		wantCode   string
	}{
		{"invalid json", `{"model":`, 400, "", ""},
		{"not an object", `[1,2]`, 400, "", "invalid_type"},
		{"missing model", `{"messages":[{"role":"user","content":"x"}]}`, 400, "model", "missing_required_parameter"},
		{"missing messages", `{"model":"mock-small"}`, 400, "messages", "missing_required_parameter"},
		{"empty messages", `{"model":"mock-small","messages":[]}`, 400, "messages", "empty_array"},
		{"messages not an array", `{"model":"mock-small","messages":"hi"}`, 400, "messages", "invalid_type"},
		{"missing role", `{"model":"mock-small","messages":[{"content":"x"}]}`, 400, "messages[0].role", "missing_required_parameter"},
		{"content a number", `{"model":"mock-small","messages":[{"role":"user","content":3}]}`, 400, "messages[0].content", "invalid_type"},
		{"unknown model", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, 404, "model", "model_not_found"},
		{"bad content parts", `{"model":"mock-small","messages":[{"role":"user","content":[1]}]}`, 400, "messages[0].content", "invalid_value"},
		{"bad stream", `{"model":"mock-small","messages":[{"role":"user"}],"stream":1}`, 400, "stream", "invalid_type"},
		{"too large", `{"model":"mock-small","messages":[{"role":"user","content":"` + strings.Repeat("x", maxRequestBody) + `"}]}`, 413, "", "request_too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, ts, request{path: "/v1/chat/completions", body: tt.body})
			if got.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", got.status, tt.wantStatus, got)
			}
			e := decodeError(t, got)
			if e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
				t.Errorf("error = %+v, want invalid_request_error with a message", e.Error)
			}
			if diff := cmp.Diff(tt.wantParam, deref(e.Error.Param)); diff != "" {
				t.Errorf("param (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantCode, deref(e.Error.Code)); diff != "" {
				t.Errorf("code (-want +got):\n%s", diff)
			}
		})
	}
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// sseEvents splits a stream into its data payloads and reports whether the
// stream ended cleanly.
func sseEvents(body []byte) ([]string, error) {
	var events []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, data)
		}
	}
	return events, sc.Err()
}

type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role    string  `json:"role,omitempty"`
			Content *string `json:"content,omitempty"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *usageJSON `json:"usage"`
}

func TestStream(t *testing.T) {
	tests := []struct {
		name         string
		chunks       int
		prompt       string
		includeUsage bool
	}{
		{"default chunks", 0, "stream me", false},
		{"one chunk", 1, "x", false},
		{"more chunks than runes", 40, "ab", false},
		{"multibyte", 7, "日本語のテキスト", false},
		{"include usage", 3, "count me", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ts := newTestServer(t, Config{Name: "s", StreamChunks: tt.chunks})
			body := chatBody("mock-small", tt.prompt, true)
			if tt.includeUsage {
				body = strings.TrimSuffix(body, "}") + `,"stream_options":{"include_usage":true}}`
			}
			got := do(t, ts, request{path: "/v1/chat/completions", body: body})
			if got.err != nil || got.status != http.StatusOK {
				t.Fatalf("status %d, err %v, body %s", got.status, got.err, got)
			}
			if ct := got.header.Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("Content-Type = %q, want text/event-stream", ct)
			}
			events, err := sseEvents(got.body)
			if err != nil {
				t.Fatalf("read events: %v", err)
			}
			if len(events) == 0 || events[len(events)-1] != "[DONE]" {
				t.Fatalf("events = %q, want [DONE] last", events)
			}
			events = events[:len(events)-1]
			wantChunks := tt.chunks
			if wantChunks == 0 {
				wantChunks = DefaultStreamChunks
			}
			wantEvents := 1 + wantChunks + 1 // role, content, stop
			if tt.includeUsage {
				wantEvents++
			}
			if len(events) != wantEvents {
				t.Fatalf("got %d events before [DONE], want %d: %q", len(events), wantEvents, events)
			}
			var content strings.Builder
			var id string
			for i, ev := range events {
				var c chunk
				if err := json.Unmarshal([]byte(ev), &c); err != nil {
					t.Fatalf("event %d %q: %v", i, ev, err)
				}
				if c.Object != "chat.completion.chunk" || c.Model != "mock-small" {
					t.Errorf("event %d = %+v", i, c)
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Errorf("event %d id %q, want %q like the first", i, c.ID, id)
				}
				if tt.includeUsage && i == len(events)-1 {
					if len(c.Choices) != 0 || c.Usage == nil || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
						t.Errorf("usage event = %s", ev)
					}
					continue
				}
				if len(c.Choices) != 1 {
					t.Fatalf("event %d has %d choices", i, len(c.Choices))
				}
				ch := c.Choices[0]
				switch {
				case i == 0:
					if ch.Delta.Role != "assistant" || ch.FinishReason != nil {
						t.Errorf("first event %s, want the role and no finish_reason", ev)
					}
				case i == wantChunks+1:
					if ch.FinishReason == nil || *ch.FinishReason != "stop" || ch.Delta.Content != nil {
						t.Errorf("final event %s, want finish_reason stop and an empty delta", ev)
					}
				default:
					if ch.FinishReason != nil || ch.Delta.Content == nil {
						t.Errorf("event %d %s, want content and finish_reason null", i, ev)
						continue
					}
					content.WriteString(*ch.Delta.Content)
				}
			}
			if diff := cmp.Diff(ReplyContent("s", tt.prompt), content.String()); diff != "" {
				t.Errorf("streamed content (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStreamDelayEndsOnClose(t *testing.T) {
	s, ts := newTestServer(t, Config{Name: "s", StreamDelay: time.Hour})
	done := make(chan response, 1)
	go func() {
		done <- do(t, ts, request{path: "/v1/chat/completions", body: chatBody("mock-small", "x", true)})
	}()
	waitFor(t, "the stream to start", func() bool { return s.Stats().ByStatus[200] == 1 })
	s.Close()
	got := <-done
	events, err := sseEvents(got.body)
	if got.err != nil || err != nil || events[len(events)-1] != "[DONE]" {
		t.Fatalf("after Close the stream should finish at once: err %v %v, events %q", got.err, err, events)
	}
}

func TestAuth(t *testing.T) {
	const key = "sk-test-secret-0123456789"
	_, ts := newTestServer(t, Config{Name: "a", APIKey: key})
	chat := chatBody("mock-small", "hi", false)
	tests := []struct {
		name       string
		req        request
		wantStatus int
	}{
		{"health needs no key", request{path: "/v1/health"}, 200},
		{"models without key", request{path: "/v1/models"}, 401},
		{"models with key", request{path: "/v1/models", header: map[string]string{"Authorization": "Bearer " + key}}, 200},
		{"lowercase scheme", request{path: "/v1/models", header: map[string]string{"Authorization": "bearer " + key}}, 200},
		{"wrong key", request{path: "/v1/models", header: map[string]string{"Authorization": "Bearer sk-test-secret-0123456780"}}, 401},
		{"key prefix", request{path: "/v1/models", header: map[string]string{"Authorization": "Bearer " + key[:10]}}, 401},
		{"no scheme", request{path: "/v1/models", header: map[string]string{"Authorization": key}}, 401},
		{"chat without key", request{path: "/v1/chat/completions", body: chat}, 401},
		{"chat with key", request{path: "/v1/chat/completions", body: chat, header: map[string]string{"Authorization": "Bearer " + key}}, 200},
		{"admin without key", request{path: "/_mock/faults"}, 401},
		{"admin with key", request{path: "/_mock/stats", header: map[string]string{"Authorization": "Bearer " + key}}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, ts, tt.req)
			if got.status != tt.wantStatus {
				t.Fatalf("status = %d, want %d (body %s)", got.status, tt.wantStatus, got)
			}
			if strings.Contains(string(got.body), key[3:]) {
				t.Errorf("body echoes the key: %s", got)
			}
			if got.status == 401 {
				e := decodeError(t, got)
				if deref(e.Error.Code) != "invalid_api_key" || e.Error.Type != "invalid_request_error" {
					t.Errorf("error = %+v, want invalid_api_key", e.Error)
				}
			}
		})
	}
}
