// Package natstest starts real embedded nats-servers with JetStream for tests:
// one node or a cluster in one process, on random loopback ports with
// temporary stores, all shut down when the test ends.
package natstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// Restartable runs one JetStream node on a fixed free 127.0.0.1 port with a
// store that outlives it, for tests that shut the server down (or lose it)
// and start it again: restart starts a fresh server on the same port and
// store (after the previous one was shut down). Whichever server runs when
// the test ends is shut down then, after everything registered later (the
// services) has stopped.
func Restartable(t testing.TB) (first *natsx.Server, restart func() *natsx.Server) {
	t.Helper()
	addr, dir := FreeAddr(t), t.TempDir()
	var cur *natsx.Server
	start := func() *natsx.Server {
		s, err := natsx.StartServer(natsx.ServerOptions{Name: "single", Listen: addr, StoreDir: dir})
		if err != nil {
			t.Fatalf("start nats on %s: %v", addr, err)
		}
		cur = s
		return s
	}
	first = start()
	t.Cleanup(func() { cur.Shutdown() })
	return first, start
}

// FreeAddr returns a 127.0.0.1 address nothing listens on (a port the
// system just handed out), for a server that must come back on it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// RunServer starts one JetStream node on a random 127.0.0.1 port.
func RunServer(t testing.TB) *natsx.Server {
	t.Helper()
	s, err := natsx.StartServer(natsx.ServerOptions{Name: "test", Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// RunCluster starts an n-node JetStream cluster on random 127.0.0.1 ports and
// waits until it has a meta leader.
func RunCluster(t testing.TB, n int) []*natsx.Server {
	t.Helper()
	var servers []*natsx.Server
	var routes []string
	for i := range n {
		s, err := natsx.StartServer(natsx.ServerOptions{
			Name:     fmt.Sprintf("n%d", i+1),
			Listen:   "127.0.0.1:0",
			StoreDir: t.TempDir(),
			Cluster:  &natsx.ClusterOptions{Name: "test", Listen: "127.0.0.1:0", Routes: routes},
		})
		if err != nil {
			t.Fatalf("start nats node %d: %v", i+1, err)
		}
		t.Cleanup(s.Shutdown)
		servers = append(servers, s)
		routes = append(routes, s.RouteURL())
	}
	// A meta leader alone is not enough: a stream placed before every peer
	// reported its stats fails with "no suitable peers for placement".
	WaitFor(t, 30*time.Second, "cluster meta leader with every peer online", func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == n {
				return true
			}
		}
		return false
	})
	return servers
}

// URLs joins the client URLs of servers.
func URLs(servers []*natsx.Server) string {
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Connect connects to urls; the connection is closed when the test ends.
func Connect(t testing.TB, urls string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("connect %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream handle on nc.
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// NATSConfig is the default NATS config with the given replicas.
func NATSConfig(replicas int) config.NATS {
	c := config.Default()
	c.NATS.Replicas = replicas
	return c.NATS
}

// Provision provisions every stream and bucket with the given replicas.
func Provision(t testing.TB, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := natsx.Provision(ctx, js, NATSConfig(replicas)); err != nil {
		t.Fatalf("provision: %v", err)
	}
}

// Start runs one node, connects and provisions it: the usual test setup.
func Start(t testing.TB) (*natsx.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	s := RunServer(t)
	nc := Connect(t, s.ClientURL())
	js := JetStream(t, nc)
	Provision(t, js, 1)
	return s, nc, js
}

// WaitFor polls cond every 10ms until it holds, failing the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Buffer is a bytes.Buffer safe for one writer (a logger, a running
// command) and a test reading it at the same time.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

func (b *Buffer) String() string { return string(b.Bytes()) }
