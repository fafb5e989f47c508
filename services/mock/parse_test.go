package mock

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parsed is a comparable view of a parse result.
type parsed struct {
	Model        string
	Roles        []string
	Contents     []string
	Stream       bool
	IncludeUsage bool
	Err          string // "status param code" of the error
}

func viewParse(body []byte) parsed {
	req, err := parseChat(body, nil)
	if err != nil {
		return parsed{Err: fmt.Sprint(err.status, " ", err.param, " ", err.code)}
	}
	p := parsed{Model: string(req.model), Stream: req.stream, IncludeUsage: req.includeUsage}
	for _, m := range req.messages {
		p.Roles = append(p.Roles, string(m.role))
		p.Contents = append(p.Contents, string(m.content))
	}
	return p
}

// referenceParse reads a request with encoding/json, with the same rules
// as parseChat, so that fuzzing can compare the two.
func referenceParse(body []byte) parsed {
	fail := func(e *requestError) parsed { return parsed{Err: fmt.Sprint(e.status, " ", e.param, " ", e.code)} }
	if !json.Valid(body) {
		return fail(errNotJSON)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return fail(&requestError{400, "", "", "invalid_type"})
	}
	str := func(raw json.RawMessage) (string, bool) {
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err == nil && (len(raw) == 0 || raw[0] != 'n')
	}
	var p parsed
	switch m := top["model"]; kindOf(m) {
	case 0, 'n':
	default:
		s, ok := str(m)
		if !ok {
			return fail(invalidType("model", ""))
		}
		p.Model = s
	}
	if p.Model == "" {
		return fail(missing("model"))
	}
	var msgs []json.RawMessage
	switch m := top["messages"]; kindOf(m) {
	case 0, 'n':
		return fail(missing("messages"))
	case '[':
		if err := json.Unmarshal(m, &msgs); err != nil {
			panic(err)
		}
	default:
		return fail(invalidType("messages", ""))
	}
	for i, raw := range msgs {
		var obj map[string]json.RawMessage
		if kindOf(raw) != '{' {
			return fail(invalidType(fmt.Sprintf("messages[%d]", i), ""))
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			panic(err)
		}
		role := ""
		if r := obj["role"]; kindOf(r) != 0 && kindOf(r) != 'n' {
			s, ok := str(r)
			if !ok {
				return fail(invalidType(fmt.Sprintf("messages[%d].role", i), ""))
			}
			role = s
		}
		if role == "" {
			return fail(missing(fmt.Sprintf("messages[%d].role", i)))
		}
		c, has := obj["content"]
		switch kindOf(c) {
		case 0, '"', '[', 'n':
		default:
			return fail(invalidType(fmt.Sprintf("messages[%d].content", i), ""))
		}
		p.Roles = append(p.Roles, role)
		if has {
			p.Contents = append(p.Contents, string(c))
		} else {
			p.Contents = append(p.Contents, "")
		}
	}
	if len(msgs) == 0 {
		return fail(&requestError{400, "", "messages", "empty_array"})
	}
	boolOf := func(raw json.RawMessage, param string) (bool, *requestError) {
		switch string(raw) {
		case "", "null", "false":
			return false, nil
		case "true":
			return true, nil
		}
		return false, invalidType(param, "")
	}
	var err *requestError
	if p.Stream, err = boolOf(top["stream"], "stream"); err != nil {
		return fail(err)
	}
	switch o := top["stream_options"]; kindOf(o) {
	case 0, 'n':
	case '{':
		var opts map[string]json.RawMessage
		if err := json.Unmarshal(o, &opts); err != nil {
			panic(err)
		}
		if p.IncludeUsage, err = boolOf(opts["include_usage"], "stream_options.include_usage"); err != nil {
			return fail(err)
		}
	default:
		return fail(invalidType("stream_options", ""))
	}
	return p
}

var parseSeeds = []string{
	`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
	` { "model" : "m" , "messages" : [ { "role" : "user" , "content" : [ {"type":"text","text":"a]}\"b"} ] } ] , "stream" : true , "stream_options" : { "include_usage" : true } } `,
	`{"model":"a","model":"b","messages":[{"role":"x","role":"user","content":null,"content":"c"}],"stream":false}`,
	`{"mod\u0065l":"m\u00e9","messages":[{"r\u006fle":"us\u0065r","content":"q\"\\"}],"extra":{"nested":[1,2,{"a":"}"}]}}`,
	`{"Model":"m","messages":[{"role":"user"}]}`,
	`{"model":5,"messages":[]}`,
	`{"model":"m","messages":{}}`,
	`{"model":"m","messages":[1]}`,
	`{"model":"m","messages":[{"role":1}]}`,
	`{"model":"m","messages":[{"role":"u","content":1.5e3}]}`,
	`{"model":"m","messages":[{"role":"u"}],"stream":"yes"}`,
	`{"model":"m","messages":[{"role":"u"}],"stream_options":[]}`,
	`{"model":"m","messages":[{"role":"u"}],"stream_options":{"include_usage":0}}`,
	`[]`, `null`, `"str"`, `{`, `{"model":"m",}`, ``, `{"model":null,"messages":null}`,
}

func TestParseChat(t *testing.T) {
	for _, body := range parseSeeds {
		t.Run(body, func(t *testing.T) {
			if diff := cmp.Diff(referenceParse([]byte(body)), viewParse([]byte(body))); diff != "" {
				t.Errorf("(-encoding/json +parseChat):\n%s", diff)
			}
		})
	}
	got := viewParse([]byte(parseSeeds[3]))
	want := parsed{Model: "mé", Roles: []string{"user"}, Contents: []string{`"q\"\\"`}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("escapes (-want +got):\n%s", diff)
	}
}

func FuzzParseChat(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if diff := cmp.Diff(referenceParse([]byte(body)), viewParse([]byte(body))); diff != "" {
			t.Errorf("body %q (-encoding/json +parseChat):\n%s", body, diff)
		}
	})
}
