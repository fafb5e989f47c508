package natsx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerOptions configures an embedded nats-server with JetStream.
type ServerOptions struct {
	// Name is the server name (unique within a cluster).
	Name string
	// Listen is host:port for clients; port 0 picks a free one; "" serves
	// in-process connections only (see Server.ConnectOptions).
	Listen string
	// StoreDir holds JetStream data; "" uses a fresh temporary directory that
	// Shutdown removes.
	StoreDir string
	// Cluster, when set, joins the server to a cluster.
	Cluster *ClusterOptions
	// NoSync turns off fsync of every write (SyncAlways). Only benchmarks that
	// compare against an unsynced baseline should set it.
	NoSync bool
	// Logger, when set, receives the server's notices and errors.
	Logger server.Logger
}

// ClusterOptions joins an embedded server to a cluster.
type ClusterOptions struct {
	Name string
	// Listen is host:port for routes; port 0 picks a free one.
	Listen string
	// Routes are nats-route://host:port URLs of other members.
	Routes []string
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
	inProcess bool
	tmpDir    string
}

// StartServer starts an embedded nats-server with JetStream and waits until it
// accepts connections. JetStream syncs every write to disk (SyncAlways) unless
// NoSync is set: the default 2-minute sync interval can lose acknowledged
// writes on power loss.
func StartServer(o ServerOptions) (*Server, error) {
	opts := &server.Options{
		ServerName: o.Name,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		SyncAlways: !o.NoSync,
		NoSigs:     true,
		NoLog:      o.Logger == nil,
		MaxPayload: 8 << 20,
	}
	s := &Server{}
	if opts.StoreDir == "" {
		dir, err := os.MkdirTemp("", "switchboard-nats-*")
		if err != nil {
			return nil, fmt.Errorf("embedded nats: store dir: %w", err)
		}
		opts.StoreDir, s.tmpDir = dir, dir
	}
	if o.Listen == "" {
		opts.DontListen = true
		s.inProcess = true
	} else {
		host, port, err := splitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: listen: %w", err)
		}
		opts.Host, opts.Port = host, port
		if port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	if c := o.Cluster; c != nil {
		host, port, err := splitHostPort(c.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: cluster listen: %w", err)
		}
		if port == 0 {
			port = server.RANDOM_PORT
		}
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: port}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		s.removeTmp()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if o.Logger != nil {
		ns.SetLoggerV2(o.Logger, false, false, false)
	}
	s.Server = ns
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		s.removeTmp()
		return nil, errors.New("embedded nats: not ready for connections after 30s")
	}
	return s, nil
}

// ConnectOptions are the options a client needs to reach this server; with
// Listen "" that is an in-process connection.
func (s *Server) ConnectOptions() []nats.Option {
	if s.inProcess {
		return []nats.Option{nats.InProcessServer(s.Server)}
	}
	return nil
}

// URL is the client URL ("" for an in-process-only server).
func (s *Server) URL() string {
	if s.inProcess {
		return ""
	}
	return s.ClientURL()
}

// RouteURL is the nats-route:// URL of a clustered server.
func (s *Server) RouteURL() string {
	a := s.ClusterAddr()
	if a == nil {
		return ""
	}
	return fmt.Sprintf("nats-route://%s", net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port)))
}

// Shutdown stops the server gracefully, waits for it and removes a temporary
// store. It is safe to call more than once.
func (s *Server) Shutdown() {
	s.Server.Shutdown()
	s.WaitForShutdown()
	s.removeTmp()
}

func (s *Server) removeTmp() {
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", ps, err)
	}
	return host, port, nil
}
