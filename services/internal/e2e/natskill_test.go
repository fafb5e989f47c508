package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
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

// Environment of a child NATS server process: the test binary re-executed.
const (
	envChildNATSListen = "SWITCHBOARD_E2E_NATS_LISTEN"
	envChildNATSStore  = "SWITCHBOARD_E2E_NATS_STORE"
)

// childNATS runs a JetStream server, as `switchboard dev` does (SyncAlways),
// until SIGTERM, or until it is killed.
func childNATS() int {
	srv, err := natsx.StartServer(natsx.ServerOptions{Name: "crash", Listen: os.Getenv(envChildNATSListen), StoreDir: os.Getenv(envChildNATSStore)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	srv.Shutdown()
	return 0
}

// startChildNATS starts a NATS server process on addr with its store in
// dir and waits until it accepts connections; kill ends it with SIGKILL and
// waits until it is gone.
func startChildNATS(t *testing.T, addr, dir string) (kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChildNATSListen+"="+addr, envChildNATSStore+"="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	natstest.WaitFor(t, 20*time.Second, "the NATS process listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}

// TestNATSServerKilled: the NATS server process is killed with SIGKILL
// while a worker runs jobs, and started again on the same port and store.
// Every job JetStream had acknowledged is still there (each write was
// synced), the worker, never restarted, picks up where it was, and every
// job finishes exactly once.
func TestNATSServerKilled(t *testing.T) {
	n := 500
	addr, dir := natstest.FreeAddr(t), t.TempDir()
	kill := startChildNATS(t, addr, dir)
	url := "nats://" + addr
	nc, js := connect(t, url)
	natstest.Provision(t, js, 1)

	a := startMock(t, mock.Config{Name: "a", Models: []string{"m"},
		Faults: mock.Faults{LatencyMin: mock.Duration(10 * time.Millisecond), LatencyMax: mock.Duration(40 * time.Millisecond)}})
	cfg := &config.Config{Endpoints: []config.Endpoint{a.endpoint()}}
	cfg.Worker.Instance = "w1"
	cfg.Worker.AckWait = 5 * time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	runWorker(t, worker.Options{Config: cfg, NC: nc, JS: js})

	finished := func() int { return finishedCount(js) }
	msgs, ids := newJobs(t, n, "natskill")
	submit(t, js, msgs)
	var killedAt int
	natstest.WaitFor(t, time.Minute, "a fifth of the jobs finished", func() bool {
		killedAt = finished()
		return killedAt >= n/5
	})
	kill()
	startChildNATS(t, addr, dir)
	restarted := time.Now()
	natstest.WaitFor(t, 2*time.Minute, "every job finished", func() bool { return finished() >= n })
	t.Logf("NATS killed with about %d of %d jobs finished; the rest finished %s after it was back",
		killedAt, n, time.Since(restarted).Round(time.Millisecond))

	checkExactlyOnce(t, js, ids)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamJobs)
	if err == nil {
		var info *jetstream.StreamInfo
		if info, err = s.Info(ctx); err == nil && info.State.Msgs != 0 {
			t.Errorf("%d jobs still in %s", info.State.Msgs, events.StreamJobs)
		}
	}
	if err != nil {
		t.Error(err)
	}
}
