package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

// testKey is the bearer key of the "ci" client in configs with auth.
const testKey = "sk-gateway-test-0123456789"

// testConfig is a config with two endpoints (base URLs point nowhere
// unless baseURL is given) and, with auth, one API key.
func testConfig(t testing.TB, baseURL string, auth bool) *config.Config {
	t.Helper()
	if baseURL == "" {
		baseURL = "http://127.0.0.1:9/v1"
	}
	y := fmt.Sprintf(`
endpoints:
  - name: alpha
    base_url: %[1]s
    api_key: ${ALPHA_KEY}
    models: [mock-small]
    aliases: {small: mock-small}
  - name: beta
    base_url: %[1]s
    models: [mock-small, mock-large]
    tier: 2
worker:
  request_timeout: 5s
gateway:
  instance: test
`, baseURL)
	if auth {
		y += "  api_keys:\n    - name: ci\n      key: ${GW_KEY}\n    - name: other\n      key: ${GW_KEY2}\n"
	}
	env := map[string]string{"ALPHA_KEY": "sk-upstream-secret-alpha", "GW_KEY": testKey, "GW_KEY2": "sk-other-key-42"}
	cfg, err := config.Parse("test.yaml", []byte(y), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg
}

// testEnv is a running gateway on a real embedded NATS server.
type testEnv struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	url string
	gw  *Gateway
	reg *prometheus.Registry
	cfg *config.Config
}

type envOption func(*Options)

// startGateway runs a gateway on 127.0.0.1 against a fresh NATS server.
func startGateway(t testing.TB, cfg *config.Config, opts ...envOption) *testEnv {
	t.Helper()
	_, nc, js := natstest.Start(t)
	return startGatewayOn(t, nc, js, cfg, opts...)
}

func startGatewayOn(t testing.TB, nc *nats.Conn, js jetstream.JetStream, cfg *config.Config, opts ...envOption) *testEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	o := Options{Config: cfg, NC: nc, JS: js, Registerer: reg, Gatherer: reg, Listener: ln}
	for _, f := range opts {
		f(&o)
	}
	gw, err := New(o)
	if err != nil {
		t.Fatalf("new gateway: %v", err)
	}
	e, stop, done := runGateway(t, gw, o)
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("gateway run: %v", err)
		}
	})
	return e
}

// runGateway runs gw, made with o (o.Listener set), until stop is called,
// and waits until it is ready; done receives what Run returned.
func runGateway(t testing.TB, gw *Gateway, o Options) (e *testEnv, stop context.CancelFunc, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- gw.Run(ctx) }()
	reg, _ := o.Gatherer.(*prometheus.Registry)
	e = &testEnv{nc: o.NC, js: o.JS, url: "http://" + o.Listener.Addr().String(), gw: gw, reg: reg, cfg: o.Config}
	natstest.WaitFor(t, 10*time.Second, "gateway ready", func() bool {
		resp, err := http.Get(e.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return e, cancel, ran
}

// response is a finished HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// do sends a request with an optional bearer key and extra headers.
func (e *testEnv) do(t testing.TB, method, path, key string, body []byte, hdr ...string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// apiErr decodes an OpenAI-style error body.
func apiErr(t testing.TB, r response) errorDetail {
	t.Helper()
	var e errorJSON
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error body (%v): %s", err, r)
	}
	return e.Error
}

func chatBody(model, prompt string, stream bool) []byte {
	b, _ := json.Marshal(map[string]any{
		"model":    model,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
		"stream":   stream,
	})
	return b
}

func jobBody(t testing.TB, fields map[string]any) []byte {
	t.Helper()
	m := map[string]any{"request": json.RawMessage(chatBody("mock-small", "hello", false))}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// streamState is the message count and last sequence of a stream.
func streamState(t testing.TB, js jetstream.JetStream, name string) jetstream.StreamState {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	st := info.State
	st.Consumers = 0
	st.FirstTime, st.LastTime = time.Time{}, time.Time{}
	return st
}

// fakeWorker answers interactive calls in the lane protocol with handle.
type fakeWorker struct {
	nc      *nats.Conn
	mu      sync.Mutex
	jobs    []*events.JobSubmitted
	cancels []string
}

// replier sends one reply message for a call.
type replier func(r lane.Reply) error

func startFakeWorker(t testing.TB, nc *nats.Conn, handle func(job *events.JobSubmitted, reply replier)) *fakeWorker {
	t.Helper()
	fw := &fakeWorker{nc: nc}
	sub, err := nc.QueueSubscribe(events.SubjectJobInteractive, events.QueueWorkers, func(m *nats.Msg) {
		env, err := events.Decode(m.Data)
		if err != nil {
			t.Errorf("fake worker: decode: %v", err)
			return
		}
		job := env.Data.(*events.JobSubmitted)
		fw.mu.Lock()
		fw.jobs = append(fw.jobs, job)
		fw.mu.Unlock()
		inbox := m.Reply
		go handle(job, func(r lane.Reply) error { return nc.PublishMsg(r.Msg(inbox)) })
	})
	if err != nil {
		t.Fatal(err)
	}
	csub, err := nc.Subscribe(lane.SubjectCancel, func(m *nats.Msg) {
		fw.mu.Lock()
		fw.cancels = append(fw.cancels, string(m.Data))
		fw.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe(); csub.Unsubscribe() })
	return fw
}

func (fw *fakeWorker) cancelled() []string {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return append([]string(nil), fw.cancels...)
}

func (fw *fakeWorker) received() []*events.JobSubmitted {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return append([]*events.JobSubmitted(nil), fw.jobs...)
}

// sseReader reads server-sent events from a response body.
type sseReader struct {
	body io.ReadCloser
	buf  []byte
}

type sseMsg struct {
	id, event string
	data      string
}

// next returns the next event (comments and retry lines skipped).
func (s *sseReader) next() (sseMsg, error) {
	var m sseMsg
	var data []string
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			chunk := make([]byte, 4096)
			n, err := s.body.Read(chunk)
			s.buf = append(s.buf, chunk[:n]...)
			if n == 0 && err != nil {
				return m, err
			}
			continue
		}
		line := string(s.buf[:i])
		s.buf = s.buf[i+1:]
		switch {
		case line == "":
			if len(data) > 0 || m.event != "" {
				m.data = strings.Join(data, "\n")
				return m, nil
			}
		case strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		case strings.HasPrefix(line, "id: "):
			m.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			m.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:])
		default:
			return m, errors.New("unexpected SSE line " + line)
		}
	}
}
