package mock

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNewValidates(t *testing.T) {
	const key = "sk-secret\n"
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty means valid
	}{
		{"zero config", Config{}, ""},
		{"name with newline", Config{Name: "a\nb"}, `name "a\nb" must be printable ASCII`},
		{"empty model", Config{Models: []string{"a", ""}}, "models[1] is empty"},
		{"duplicate model", Config{Models: []string{"a", "a"}}, `model "a" is listed twice`},
		{"bad key", Config{APIKey: key}, "api key must be printable ASCII"},
		{"negative chunks", Config{StreamChunks: -1}, "stream chunks -1"},
		{"negative delay", Config{StreamDelay: -time.Second}, "stream delay -1s is negative"},
		{"bad faults", Config{Faults: Faults{TruncateRate: 2}}, "truncate_rate 2 is outside 0..1"},
		{"several problems", Config{Models: []string{""}, StreamChunks: -1}, "models[0] is empty; stream chunks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				s.Close()
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want ErrInvalidConfig containing %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "sk-secret") {
				t.Errorf("error %q contains the API key", err)
			}
		})
	}
}

func TestNewDoesNotKeepCallerSlices(t *testing.T) {
	models := []string{"a", "b"}
	outages := []Outage{{For: Duration(time.Second)}}
	s, err := New(Config{Models: models, Faults: Faults{Outages: outages}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	models[0], outages[0].For = "changed", Duration(time.Hour)
	if _, ok := s.models["a"]; !ok {
		t.Errorf("models changed with the caller's slice")
	}
	got := s.Faults()
	if got.Outages[0].For != Duration(time.Second) {
		t.Errorf("outages changed with the caller's slice: %+v", got.Outages)
	}
	got.Outages[0].For = Duration(time.Minute)
	if s.Faults().Outages[0].For != Duration(time.Second) {
		t.Errorf("Faults() shares memory with the server")
	}
}

func TestFaultsValidate(t *testing.T) {
	tests := []struct {
		name    string
		f       Faults
		wantErr string
	}{
		{"zero", Faults{}, ""},
		{"everything", Flaky("x").Faults, ""},
		{"all rates 1", Faults{ErrorRate: 1, RateLimitRate: 1, HangRate: 1, MalformedRate: 1, TruncateRate: 1}, ""},
		{"NaN rate", Faults{ErrorRate: math.NaN()}, "error_rate NaN is outside 0..1"},
		{"negative latency", Faults{Latency: Duration(-time.Second)}, "latency -1s is negative"},
		{"min without max", Faults{LatencyMin: Duration(time.Second)}, "latency_max 0s is less than latency_min 1s"},
		{"status 200", Faults{ErrorStatus: 200}, "error_status 200 is not a 4xx or 5xx status"},
		{"outage without for", Faults{Outages: []Outage{{Every: Duration(time.Minute)}}}, "outages[0].for must be positive"},
		{"outage negative offset", Faults{Outages: []Outage{{For: Duration(time.Second), Offset: Duration(-1)}}}, "must not be negative"},
		{"bad mode", Faults{OutageMode: "explode"}, `outage_mode "explode" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.f.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidFaults) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want ErrInvalidFaults containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFaultsJSON(t *testing.T) {
	f := Faults{
		Latency:       Duration(250 * time.Millisecond),
		LatencyMin:    Duration(time.Second),
		LatencyMax:    Duration(90 * time.Second),
		ErrorRate:     0.5,
		ErrorStatus:   503,
		ApplyToHealth: ptr(false),
		RetryAfter:    Duration(2 * time.Second),
		Outages:       []Outage{{Every: Duration(time.Minute), For: Duration(10 * time.Second), Offset: Duration(5 * time.Second)}},
		OutageMode:    OutageHang,
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"latency":"250ms","latency_min":"1s","latency_max":"1m30s","error_rate":0.5,"error_status":503,"apply_to_health":false,` +
		`"retry_after":"2s","outages":[{"every":"1m0s","for":"10s","offset":"5s"}],"outage_mode":"hang"}`
	if diff := cmp.Diff(want, string(b)); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
	var back Faults
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(f, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if b, _ := json.Marshal(Faults{}); string(b) != "{}" {
		t.Errorf("zero Faults = %s, want {}", b)
	}
}

func TestDurationUnmarshal(t *testing.T) {
	tests := []struct {
		in      string
		want    Duration
		wantErr bool
	}{
		{`"1.5s"`, Duration(1500 * time.Millisecond), false},
		{`"0s"`, 0, false},
		{`null`, 7, false}, // unchanged
		{`"soon"`, 0, true},
		{`1000`, 0, true},
		{`""`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			d := Duration(7)
			err := d.UnmarshalJSON([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && d != tt.want {
				t.Errorf("got %s, want %s", d, tt.want)
			}
		})
	}
}

func TestPresets(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
	}{{"fast", Fast("f")}, {"slow", Slow("s")}, {"flaky", Flaky("x")}} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			s.Close()
		})
	}
	if Flaky("a").Seed == Flaky("b").Seed {
		t.Errorf("flaky endpoints with different names share a seed")
	}
}

func TestFlakyFailsHealthSoon(t *testing.T) {
	cfg := Flaky("flaky")
	cfg.Faults.LatencyMin, cfg.Faults.LatencyMax = 0, 0
	_, ts := newTestServer(t, cfg)
	failed := 0
	for range 10 {
		if do(t, ts, request{path: "/health"}).status != 200 {
			failed++
		}
	}
	if failed == 0 {
		t.Errorf("10 health checks of a flaky endpoint all passed")
	}
}

func TestSetFaults(t *testing.T) {
	s, ts := newTestServer(t, Config{})
	s.SetFaults(Faults{ErrorRate: 1, ErrorStatus: 418})
	wantStatus(418)(t, do(t, ts, request{path: "/v1/models"}))
	s.SetFaults(Faults{})
	wantStatus(200)(t, do(t, ts, request{path: "/v1/models"}))

	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "error_rate 2") {
			t.Errorf("SetFaults with a bad rate: recovered %v, want a panic naming error_rate", r)
		}
	}()
	s.SetFaults(Faults{ErrorRate: 2})
}

func TestRun(t *testing.T) {
	s, err := New(Config{Name: "run", Faults: Faults{HangRate: 1}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.Run(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	resp, err := client.Get(base + "/v1/health")
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("health status %d", resp.StatusCode)
	}

	// A hung request must not hold up the shutdown.
	hung := make(chan error, 1)
	go func() {
		resp, err := client.Get(base + "/v1/models")
		if err == nil {
			resp.Body.Close()
		}
		hung <- err
	}()
	waitFor(t, "the request to hang", func() bool { return s.Stats().Hanging == 1 })
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(shutdownTimeout):
		t.Fatal("Run did not return after cancel")
	}
	if err := <-hung; err == nil {
		t.Errorf("hung request got an answer, want a connection error")
	}
	if _, err := client.Get(base + "/health"); err == nil {
		t.Errorf("server still answers after Run returned")
	}
}

func TestRunServeError(t *testing.T) {
	s, err := New(Config{Name: "run"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := s.Run(context.Background(), ln); err == nil || !strings.Contains(err.Error(), `mock "run": serve`) {
		t.Errorf("Run on a closed listener = %v, want a serve error", err)
	}
}
