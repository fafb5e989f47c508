package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
	"github.com/switchboard-llm/switchboard/services/worker"
)

// Environment of a child worker process: the test binary re-executed.
const (
	envChildWorker = "SWITCHBOARD_E2E_WORKER" // the config file
	envChildNATS   = "SWITCHBOARD_E2E_NATS"   // the NATS URL
)

// childWorker runs a worker as its own process, as `switchboard worker`
// does, until SIGTERM (or until it is killed).
func childWorker() int {
	log := testLog()
	cfg, err := config.Load(os.Getenv(envChildWorker))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg.NATS.URL = os.Getenv(envChildNATS)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	nc, err := natsx.Connect(ctx, cfg.NATS, "e2e-worker", log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	w, err := worker.New(worker.Options{Config: cfg, NC: nc, JS: js, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startChild starts a worker process with the given instance name.
func startChild(t *testing.T, cfgFile, natsURL string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildWorker+"="+cfgFile, envChildNATS+"="+natsURL)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("worker process %d stderr:\n%s", cmd.Process.Pid, stderr.String())
		}
	})
	return cmd
}

// TestWorkerKilledMidJobs: a worker process is killed with SIGKILL while
// about a thousand jobs are in flight or queued; a fresh worker process
// takes over, and every job still finishes exactly once. Every job has a
// callback URL, and every callback still arrives (at least once: one in
// flight at the kill is POSTed again).
func TestWorkerKilledMidJobs(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 300
	}
	srv := natstest.RunServer(t)
	nc, js := connect(t, srv.ClientURL())
	natstest.Provision(t, js, 1)
	ep := startMock(t, mock.Config{Name: "a", Models: []string{"m"},
		Faults: mock.Faults{LatencyMin: mock.Duration(50 * time.Millisecond), LatencyMax: mock.Duration(100 * time.Millisecond)}})

	dir := t.TempDir()
	writeCfg := func(instance string) string {
		f := filepath.Join(dir, instance+".yaml")
		y := fmt.Sprintf(`endpoints:
  - name: a
    base_url: %s
    models: [m]
worker:
  instance: %s
  concurrency: 32
  ack_wait: 3s
  max_deliver: 5
  callback_timeout: 1s
`, ep.url, instance)
		if err := os.WriteFile(f, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}

	done := watchDone(t, nc)
	first := startChild(t, writeCfg("k1"), srv.ClientURL())
	var hookMu sync.Mutex
	callbacks := map[string]int{} // by event id
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // a slow receiver: some callbacks are in flight at the kill
		hookMu.Lock()
		callbacks[r.Header.Get(worker.HeaderEventID)]++
		hookMu.Unlock()
	}))
	t.Cleanup(hook.Close)
	msgs, ids := newJobs(t, n, "crash", func(j *events.JobSubmitted) { j.CallbackURL = hook.URL + "/" + j.ID })
	submit(t, js, msgs)
	natstest.WaitFor(t, time.Minute, "a quarter of the jobs finished", func() bool { return done.count() >= n/4 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := done.count()
	t.Logf("worker k1 killed with %d of %d jobs finished", killedAt, n)
	startChild(t, writeCfg("k2"), srv.ClientURL())
	natstest.WaitFor(t, 2*time.Minute, "every job finished", func() bool { return done.count() >= n })

	redelivered := checkExactlyOnce(t, js, ids)
	t.Logf("%d jobs were redelivered after the kill", redelivered)
	if redelivered == 0 {
		t.Error("no job was redelivered: the kill hit no job in flight, so the test proved nothing")
	}

	missing := func() (n int) {
		hookMu.Lock()
		defer hookMu.Unlock()
		for _, id := range ids {
			if callbacks[events.FinishedEventID(id)] == 0 {
				n++
			}
		}
		return n
	}
	natstest.WaitFor(t, time.Minute, "every job's callback", func() bool { return missing() == 0 })
	hookMu.Lock()
	again := 0
	for _, c := range callbacks {
		again += c - 1
	}
	t.Logf("%d callbacks for %d jobs: %d POSTed again after the kill", len(callbacks)+again, n, again)
	if len(callbacks) != n {
		t.Errorf("callbacks for %d distinct event ids, want %d", len(callbacks), n)
	}
	hookMu.Unlock()
}
