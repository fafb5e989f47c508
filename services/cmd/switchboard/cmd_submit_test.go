package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/gateway"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
)

func TestSubmitAndJobs(t *testing.T) {
	s, nc, js := natstest.Start(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "switchboard.yaml")
	cfg := "nats:\n  url: " + s.ClientURL() + "\nendpoints:\n  - name: alpha\n    base_url: http://127.0.0.1:9/v1\n    models: [mock-small]\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	chatFile := filepath.Join(dir, "chat.json")
	os.WriteFile(chatFile, []byte(`{"model":"mock-small","messages":[{"role":"user","content":"from a file"}],"temperature":0.2}`), 0o600)
	ctx := context.Background()
	jobs, err := gateway.OpenJobs(ctx, js, "/test")
	if err != nil {
		t.Fatal(err)
	}
	_ = nc

	out, err := runCLI(t, "", "-c", cfgPath, "submit", "--model", "mock-small", "-m", "hello", "--idempotency-key", "cli-1", "--priority", "high")
	if err != nil || out != "job cli-1 queued (priority high)\n" {
		t.Fatalf("submit: %q, %v", out, err)
	}
	out, err = runCLI(t, "", "-c", cfgPath, "submit", "--model", "mock-small", "-m", "hello", "--idempotency-key", "cli-1")
	if err != nil || out != "job cli-1 already exists (status queued)\n" {
		t.Fatalf("resubmit: %q, %v", out, err)
	}
	out, err = runCLI(t, "", "-c", cfgPath, "jobs", "get", "cli-1")
	if err != nil || !strings.Contains(out, "status     queued") || !strings.Contains(out, "priority   high") {
		t.Fatalf("jobs get: %q, %v", out, err)
	}

	// A bare chat request from a file, flags on top; JSON out.
	out, err = runCLI(t, "", "-c", cfgPath, "submit", "-f", chatFile, "--priority", "low", "--timeout", "2m", "--metadata", "team=ops", "--json")
	if err != nil {
		t.Fatalf("submit --file: %v: %s", err, out)
	}
	var rec events.JobRecord
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if rec.Priority != events.PriorityLow || rec.Metadata["team"] != "ops" || rec.Deadline == nil || !events.ValidName(rec.ID) {
		t.Errorf("record %+v", rec)
	}
	s2, _ := js.Stream(ctx, events.StreamJobs)
	m, err := s2.GetLastMsgForSubject(ctx, events.JobSubmitSubject(events.PriorityLow))
	if err != nil {
		t.Fatal(err)
	}
	env, err := events.Decode(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if job := env.Data.(*events.JobSubmitted); !strings.Contains(string(job.Request), `"temperature":0.2`) || !strings.Contains(string(job.Request), "from a file") {
		t.Errorf("queued request %s lost the file's fields", job.Request)
	}

	// A prompt from stdin, and refusals.
	if out, err := runCLI(t, "piped prompt", "-c", cfgPath, "submit", "--model", "mock-small", "--idempotency-key", "cli-stdin"); err != nil {
		t.Fatalf("stdin: %v %s", err, out)
	}
	if r, _, err := jobs.Get(ctx, "cli-stdin"); err != nil || r.Status != events.JobQueued {
		t.Errorf("stdin job: %+v %v", r, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"submit", "--model", "gpt-99", "-m", "x"}, `job refused: model "gpt-99" is not served`},
		{[]string{"submit", "--model", "mock-small", "-m", "x", "--timeout", "later"}, `timeout "later" is not a positive duration`},
		{[]string{"submit", "--model", "mock-small", "-m", "x", "--idempotency-key", "a.b"}, `Idempotency-Key "a.b" must match`},
		{[]string{"jobs", "get", "nope"}, "job nope: job not found"},
		{[]string{"jobs", "cancel", "nope"}, "job nope: job not found"},
	} {
		if out, err := runCLI(t, "", append([]string{"-c", cfgPath}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v (output %q), want an error with %q", tc.args, err, out, tc.want)
		}
	}

	// --wait prints the answer once a worker finished the job.
	go func() {
		var rev uint64
		var r events.JobRecord
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var err error
			if r, rev, err = jobs.Get(ctx, "cli-wait"); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		now := time.Now().UTC()
		r.Status, r.FinishedAt, r.UpdatedAt, r.Endpoint = events.JobSucceeded, &now, now, "alpha"
		r.Response = json.RawMessage(`{"choices":[{"message":{"role":"assistant","content":"the answer"}}]}`)
		b, _ := json.Marshal(r)
		jobs.KV.Update(ctx, "cli-wait", b, rev)
	}()
	out, err = runCLI(t, "", "-c", cfgPath, "submit", "--model", "mock-small", "-m", "q", "--idempotency-key", "cli-wait", "--wait", "--wait-timeout", "20s")
	if err != nil || out != "the answer\n" {
		t.Fatalf("submit --wait: %q, %v", out, err)
	}

	// Cancel, then get: the cancelled job exits 1 after printing its record.
	if out, err := runCLI(t, "", "-c", cfgPath, "jobs", "cancel", "cli-1"); err != nil || out != "job cli-1 cancelled\n" {
		t.Fatalf("cancel: %q %v", out, err)
	}
	out, err = runCLI(t, "", "-c", cfgPath, "jobs", "get", "cli-1", "--wait", "5s")
	if err == nil || err.Error() != "job cli-1 cancelled" || !strings.Contains(out, "caller_canceled: cancelled by the client") {
		t.Errorf("get a cancelled job: %q, %v", out, err)
	}
}
