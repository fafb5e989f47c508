package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

func TestClassifyRealFailures(t *testing.T) {
	// A listener that is closed at once: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()

	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsSrv.Close()
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := http.NewResponseController(w).Hijack()
		c.Close()
	}))
	defer reset.Close()

	client := NewClient(4)
	tests := []struct {
		name      string
		url       string
		callerCtx func() (context.Context, context.CancelFunc)
		callCtx   func(context.Context) (context.Context, context.CancelFunc)
		want      events.ErrorClass
	}{
		{"refused", refused, bg, nocall, events.ClassConnect},
		{"endpoint timeout", hang.URL, bg, short, events.ClassTimeout},
		{"caller deadline", hang.URL, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, nocall, events.ClassCallerCanceled},
		{"untrusted certificate", tlsSrv.URL, bg, nocall, events.ClassTLS},
		{"closed without response", reset.URL, bg, nocall, events.ClassConnect},
		{"dns", "http://no-such-host.invalid", bg, nocall, events.ClassDNS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caller, cancel := tt.callerCtx()
			defer cancel()
			ctx, cancel2 := tt.callCtx(caller)
			defer cancel2()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tt.url, nil)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("call to %s succeeded", tt.url)
			}
			if got := Classify(caller, err); got != tt.want {
				t.Errorf("Classify(%v) = %q, want %q", err, got, tt.want)
			}
		})
	}
	if got := Classify(context.Background(), nil); got != events.ClassNone {
		t.Errorf("Classify(nil) = %q", got)
	}
	if got := Classify(context.Background(), errors.New("weird")); got != events.ClassConnect {
		t.Errorf("Classify(unknown) = %q, want connect", got)
	}
}

func bg() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
func nocall(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithCancel(ctx)
}
func short(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 50*time.Millisecond)
}

func TestThrottledUntil(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	h := func(kv ...string) http.Header {
		x := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			x.Set(kv[i], kv[i+1])
		}
		return x
	}
	tests := []struct {
		name   string
		header http.Header
		body   string
		want   time.Duration
		ok     bool
	}{
		{"retry-after seconds", h("Retry-After", "7"), "", 7 * time.Second, true},
		{"retry-after date", h("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat)), "", 90 * time.Second, true},
		{"retry-after-ms", h("Retry-After-Ms", "1500"), "", 1500 * time.Millisecond, true},
		{"openai reset header", h("X-Ratelimit-Reset-Requests", "6m0s"), "", 6 * time.Minute, true},
		{"longest wins", h("Retry-After", "2", "X-Ratelimit-Reset-Tokens", "30s"), "", 30 * time.Second, true},
		{"body hint seconds", nil, `{"error":{"message":"Rate limit reached. Please try again in 20s."}}`, 20 * time.Second, true},
		{"body hint fractional", nil, `Please try again in 1.5 seconds`, 1500 * time.Millisecond, true},
		{"body hint ms", nil, `try again in 250ms`, 250 * time.Millisecond, true},
		{"body hint retry after", nil, `retry after 3 seconds`, 3 * time.Second, true},
		{"capped at an hour", h("Retry-After", "86400"), "", time.Hour, true},
		{"nothing", nil, `{"error":"slow down"}`, 0, false},
		{"garbage header", h("Retry-After", "soon"), "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := tt.header
			if hdr == nil {
				hdr = http.Header{}
			}
			got, ok := ThrottledUntil(hdr, []byte(tt.body), now)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok && got.Sub(now) != tt.want {
				t.Errorf("until = now+%s, want now+%s", got.Sub(now), tt.want)
			}
		})
	}
}

func TestRedactAndTruncate(t *testing.T) {
	if got := Redact("bad key sk-secret-123 given", "sk-secret-123", ""); got != "bad key [redacted] given" {
		t.Errorf("Redact = %q", got)
	}
	if got := Truncate("abcdef", 3); got != "abc..." {
		t.Errorf("Truncate = %q", got)
	}
}
