package prober

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natstest"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
	"github.com/switchboard-llm/switchboard/services/mock"
)

// The benchmark's helpers run as child processes of the test binary: the
// environment variable names which one, and the child prints "ADDR <addr>"
// on stdout and runs until its stdin closes.
const (
	benchChildEnv   = "SWITCHBOARD_PROBER_BENCH_CHILD"
	childMock       = "mock"
	childNATS       = "nats"        // JetStream with sync_interval always, as deployed
	childNATSNoSync = "nats-nosync" // the unsynced baseline
)

func runChildMock() int {
	s, err := mock.New(mock.Config{Name: "bench"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ADDR", ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }() //nolint:errcheck // EOF or error: either way, stop
	if err := s.Run(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func runChildNATS(noSync bool) int {
	srv, err := natsx.StartServer(natsx.ServerOptions{Name: "bench", Listen: "127.0.0.1:0", NoSync: noSync})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ADDR", srv.ClientURL())
	io.Copy(io.Discard, os.Stdin) //nolint:errcheck
	srv.Shutdown()
	return 0
}

// child is a helper process started from the test binary.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
}

func startChild(b *testing.B, kind string) *child {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+kind)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s child: %v", kind, err)
	}
	c := &child{cmd: cmd, stdin: stdin}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		b.Fatalf("%s child: read address: %q, %v", kind, line, err)
	}
	c.addr = addr
	return c
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on Linux.
const clockTicks = 100

// cpu is the child's user+system CPU time so far, from /proc/<pid>/stat.
func (c *child) cpu(b *testing.B) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		b.Fatalf("read child stat: %v", err)
	}
	// Fields after the parenthesised command: state is field 3, utime 14, stime 15.
	rest := data[bytes.LastIndexByte(data, ')')+2:]
	f := strings.Fields(string(rest))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// selfCPU is this process's user+system CPU time so far.
func selfCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// vmRSS is this process's resident set size in bytes, from /proc/self/status.
func vmRSS(b *testing.B) float64 {
	b.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

const (
	benchEndpoints = 1000
	benchKinds     = 2 // health and models
)

// BenchmarkProber1000 runs one prober on 1,000 endpoints (health and models
// probes, 1 s interval, so about 2,000 probes a second) against one mock
// server, publishing every result to JetStream: nats=sync_always is the
// deployed setting (every write fsynced), nats=no_sync the baseline that
// shows what the publishing side does when NATS is not the bottleneck.
// One op is one probe round (2,000 probes), so an op takes about a second
// of wall time by design; the figures that matter are the reported ones:
//
//	probes/s          probes finished per second of wall time
//	cpu-s/round       this process's CPU seconds per round: the prober alone,
//	                  since the mock and nats-server run in child processes
//	cpu-%             the same as a share of one core
//	mock-cpu-s/round  the mock child's CPU, nats-cpu-s/round the nats-server child's
//	heap-MB, sys-MB, rss-MB   memory of this process at the end
//	published         results JetStream acknowledged (warm-up round included)
//	superseded        results replaced by a newer one of their pair before NATS
//	                  took them (NATS slower than the probes)
//	pub-errors        results JetStream did not acknowledge
//	skipped           probes shed because the prober was overloaded
//
// Run it with: go test -run '^$' -bench Prober1000 -benchtime 10x ./services/prober/
func BenchmarkProber1000(b *testing.B) {
	b.Run("nats=sync_always", func(b *testing.B) { benchProber(b, childNATS) })
	b.Run("nats=no_sync", func(b *testing.B) { benchProber(b, childNATSNoSync) })
}

func benchProber(b *testing.B, natsKind string) {
	mockChild := startChild(b, childMock)
	natsChild := startChild(b, natsKind)
	nc := natstest.Connect(b, natsChild.addr)
	js := natstest.JetStream(b, nc)
	natstest.Provision(b, js, 1)

	eps := make([]config.Endpoint, benchEndpoints)
	for i := range eps {
		eps[i] = config.Endpoint{
			Name:          fmt.Sprintf("e%d", i),
			BaseURL:       fmt.Sprintf("http://%s/e%d/v1", mockChild.addr, i),
			Models:        []string{"mock-small", "mock-large"},
			HealthPath:    "/health",
			Probes:        []string{"health", "models"},
			CheckInterval: time.Second,
			Timeout:       time.Second,
		}
	}
	cfg := config.Default()
	cfg.Endpoints = eps
	cfg.Prober.Vantage = "bench"
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	p, err := New(Options{Config: cfg, JS: js, Log: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	}()

	const perRound = benchEndpoints * benchKinds
	waitProbes := func(n int64) {
		deadline := time.Now().Add(time.Duration(b.N)*2*time.Second + 30*time.Second)
		for p.completed.Load() < n {
			if time.Now().After(deadline) {
				b.Fatalf("only %d of %d probes after %s", p.completed.Load(), n, time.Duration(b.N)*2*time.Second+30*time.Second)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Warm up: the first round (spread over the first second), so that
	// connections, buffers and metric series exist.
	waitProbes(perRound)

	start := p.completed.Load()
	cpu0, mock0, nats0 := selfCPU(b), mockChild.cpu(b), natsChild.cpu(b)
	t0 := time.Now()
	b.ResetTimer()
	waitProbes(start + int64(b.N)*perRound)
	b.StopTimer()
	elapsed := time.Since(t0)
	cpu, mockCPU, natsCPU := selfCPU(b)-cpu0, mockChild.cpu(b)-mock0, natsChild.cpu(b)-nats0
	probes := p.completed.Load() - start

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rounds := float64(b.N)
	b.ReportMetric(float64(probes)/elapsed.Seconds(), "probes/s")
	b.ReportMetric(cpu.Seconds()/rounds, "cpu-s/round")
	b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds(), "cpu-%")
	b.ReportMetric(mockCPU.Seconds()/rounds, "mock-cpu-s/round")
	b.ReportMetric(natsCPU.Seconds()/rounds, "nats-cpu-s/round")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	b.ReportMetric(float64(ms.Sys)/(1<<20), "sys-MB")
	b.ReportMetric(vmRSS(b)/(1<<20), "rss-MB")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines")
	b.ReportMetric(float64(p.published.Load()), "published")
	b.ReportMetric(counterValue(p.m.publishErrors.WithLabelValues(reasonSuperseded)), "superseded")
	b.ReportMetric(counterValue(p.m.publishErrors.WithLabelValues(reasonPublish)), "pub-errors")
	skipped := 0.0
	for i := range benchEndpoints {
		for _, k := range []events.ProbeKind{events.ProbeHealth, events.ProbeModels} {
			skipped += counterValue(p.m.probes.WithLabelValues(fmt.Sprintf("e%d", i), string(k),
				string(events.ProbeInconclusive), string(events.ClassInternal)))
		}
	}
	b.ReportMetric(skipped, "skipped")
}
