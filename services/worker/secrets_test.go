package worker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/lane"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// TestAPIKeysNeverLeak: endpoints that echo the caller's key back in their
// error bodies (OpenAI's own 401 names the key it got) must not get it into
// an outcome event, a job record, a finished event, an interactive reply or
// a log line.
func TestAPIKeysNeverLeak(t *testing.T) {
	const echoKey = "sk-echo-0123456789-SECRET"
	const goodKey = "sk-good-0123456789-SECRET"
	echo := func(status int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			// Valid JSON, so that a worker relaying an upstream error body
			// as is (a 400) would relay the key.
			fmt.Fprintf(w, `{"error":{"message":"rejected, you sent %s","type":"server_error"}}`, r.Header.Get("Authorization"))
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	e5xx, e401, e400 := echo(http.StatusBadGateway), echo(http.StatusUnauthorized), echo(http.StatusBadRequest)
	good := startMock(t, mock.Config{Name: "good", Models: []string{"m"}, APIKey: goodKey})
	eps := []config.Endpoint{
		{Name: "echo5xx", BaseURL: e5xx.URL + "/v1", Models: []string{"m"}, Weight: 1, Tier: 1, APIKey: echoKey},
		{Name: "echo401", BaseURL: e401.URL + "/v1", Models: []string{"m"}, Weight: 1, Tier: 2, APIKey: echoKey},
		{Name: "good", BaseURL: good.url, Models: []string{"m"}, Weight: 1, Tier: 3, APIKey: goodKey},
		// A caller error is relayed to the client as the upstream sent it.
		{Name: "echo400", BaseURL: e400.URL + "/v1", Models: []string{"m400"}, Weight: 1, Tier: 1, APIKey: echoKey},
	}
	var logs natstest.Buffer
	e := newEnv(t, testConfig(eps...))
	e.startWorker(Options{Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})

	// A durable job fails over through both echoing endpoints to good.
	job := newJob(t)
	e.submit(job)
	rec := e.finished(job.ID, 20*time.Second)
	if rec.Status != events.JobSucceeded || len(rec.Attempts) != 3 {
		t.Fatalf("job %s after %d attempts, want succeeded after 3: %+v", rec.Status, len(rec.Attempts), rec.Attempts)
	}
	// An interactive call does the same.
	req, err := lane.NewRequest("/test", &events.JobSubmitted{ID: "interactive-1", Request: job.Request, SubmittedAt: time.Now()}, e.nc.NewRespInbox())
	if err != nil {
		t.Fatal(err)
	}
	reply, err := e.nc.RequestMsg(req, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := reply.Header.Get(lane.HeaderStatus); got != "200" {
		t.Fatalf("interactive call: status %s: %s", got, reply.Data)
	}
	e.outcomes("good", 2)

	// A 400 whose body quotes the key ends a durable job and is relayed
	// to an interactive caller: with the key taken out.
	bad := newJob(t)
	bad.Request = []byte(`{"model":"m400","messages":[{"role":"user","content":"hello"}]}`)
	e.submit(bad)
	if rec := e.finished(bad.ID, 20*time.Second); rec.Status != events.JobFailed || rec.Error == nil || rec.Error.StatusCode != http.StatusBadRequest {
		t.Fatalf("job with a 400: %s %+v, want failed with 400", rec.Status, rec.Error)
	}
	req, err = lane.NewRequest("/test", &events.JobSubmitted{ID: "interactive-2", Request: bad.Request, SubmittedAt: time.Now()}, e.nc.NewRespInbox())
	if err != nil {
		t.Fatal(err)
	}
	reply400, err := e.nc.RequestMsg(req, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := reply400.Header.Get(lane.HeaderStatus); got != "400" || !bytes.Contains(reply400.Data, []byte("rejected, you sent")) {
		t.Fatalf("interactive call with a 400: status %s: %s, want the upstream's 400 body", got, reply400.Data)
	}
	e.outcomes("echo400", 2)

	var stored [][]byte
	for _, stream := range []string{events.StreamHealth, events.StreamResults, "KV_" + events.BucketJobs} {
		stored = append(stored, streamBytes(t, e.js, stream)...)
	}
	stored = append(stored, reply.Data, []byte(fmt.Sprint(reply.Header)), reply400.Data, logs.Bytes())
	for _, b := range stored {
		for _, key := range []string{echoKey, goodKey, echoKey[:12]} {
			if bytes.Contains(b, []byte(key)) {
				t.Errorf("key %q leaked into: %s", key, b)
			}
		}
	}
	// The echoed bodies did reach the events, with the key taken out:
	// otherwise the checks above would prove nothing.
	if !bytes.Contains(bytes.Join(stored, nil), []byte("rejected, you sent")) {
		t.Error("no stored event quotes the endpoints' error bodies")
	}
}

// streamBytes returns the data of every message of a stream.
func streamBytes(t *testing.T, js jetstream.JetStream, stream string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted (a work queue, a KV overwrite)
		}
		out = append(out, m.Data, []byte(fmt.Sprint(m.Header)))
	}
	if len(out) == 0 {
		t.Fatalf("stream %s holds nothing to check", stream)
	}
	return out
}
