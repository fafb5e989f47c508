package stack

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
)

// addServices adds every service of the system to the group, each with its
// own connection-independent context and a child logger.
func (s *Stack) addServices(g *run.Group, nc *nats.Conn, js jetstream.JetStream) error {
	return nil
}
