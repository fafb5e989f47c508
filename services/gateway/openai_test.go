package gateway

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestOpenAISDK runs the official Go SDK against the gateway, changing only
// the base URL and the key: a chat completion, a streamed one, the model
// list and a refused key, all through a real worker to a real mock endpoint.
func TestOpenAISDK(t *testing.T) {
	st := startStack(t, true)
	ctx := context.Background()
	client := openai.NewClient(option.WithBaseURL(st.url+"/v1"), option.WithAPIKey(testKey), option.WithMaxRetries(0))

	t.Run("chat", func(t *testing.T) {
		var raw *http.Response
		c, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "small", // an alias of mock-small
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello through the gateway")},
		}, option.WithResponseInto(&raw))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Choices) != 1 || c.Choices[0].Message.Content != mock.ReplyContent("m1", "Hello through the gateway") {
			t.Errorf("completion %+v", c)
		}
		if ep := raw.Header.Get("X-Switchboard-Endpoint"); ep != "alpha" && ep != "beta" {
			t.Errorf("X-Switchboard-Endpoint %q", ep)
		}
		if got := raw.Header.Get("X-Switchboard-Attempts"); got != "1" {
			t.Errorf("X-Switchboard-Attempts %q", got)
		}
	})

	t.Run("stream", func(t *testing.T) {
		s := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:    "mock-large",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Stream me an answer")},
		})
		var acc openai.ChatCompletionAccumulator
		chunks := 0
		for s.Next() {
			acc.AddChunk(s.Current())
			chunks++
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if chunks < 3 || len(acc.Choices) != 1 || acc.Choices[0].Message.Content != mock.ReplyContent("m1", "Stream me an answer") {
			t.Errorf("%d chunks, accumulated %+v", chunks, acc.Choices)
		}
	})

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range page.Data {
			ids = append(ids, m.ID)
		}
		if !slices.Equal(ids, []string{"mock-large", "mock-small", "small"}) {
			t.Errorf("models %v", ids)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		bad := openai.NewClient(option.WithBaseURL(st.url+"/v1"), option.WithAPIKey("sk-nope"), option.WithMaxRetries(0))
		_, err := bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "mock-small", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized || apiErr.Code != "invalid_api_key" {
			t.Errorf("err %v, want a 401 invalid_api_key", err)
		}
	})

	t.Run("unknown model", func(t *testing.T) {
		_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: "gpt-99", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
		})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Code != "model_not_found" {
			t.Errorf("err %v, want a 404 model_not_found", err)
		}
	})
}
