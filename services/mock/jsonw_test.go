package mock

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uote\back`, "\n\r\t\x00\x1f\x7f", "é日本", "\xff\xfe bad utf8 \xc3", "\u2028\u2029", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("appendString(%q) = %s, not a JSON string: %v", s, b, err)
		}
		// encoding/json decodes to the same text (invalid UTF-8 becomes U+FFFD).
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("decoded (-encoding/json +appendString):\n%s", diff)
		}
	})
}

func TestAppendError(t *testing.T) {
	got := string(appendError(nil, `say "no"`, "invalid_request_error", "", "x"))
	want := `{"error":{"message":"say \"no\"","type":"invalid_request_error","param":null,"code":"x"}}` + "\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
