package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Acknowledgement bodies of the JetStream protocol.
var (
	ackAck      = []byte("+ACK")
	ackNak      = []byte("-NAK")
	ackProgress = []byte("+WPI")
	ackTerm     = []byte("+TERM")
)

// errNotJobMessage: a message's reply subject is not a JetStream ack
// subject.
var errNotJobMessage = errors.New("not a JetStream message: reply subject is not an ack subject")

// pulledMsg is a message the durable intake pulled with its own pull
// requests (see durable). It implements jetstream.Msg the way the
// jetstream package does: every acknowledgement is a publish to the
// message's reply subject.
type pulledMsg struct {
	nc  *nats.Conn
	msg *nats.Msg
}

var _ jetstream.Msg = (*pulledMsg)(nil)

func (m *pulledMsg) Metadata() (*jetstream.MsgMetadata, error) { return ackMetadata(m.msg.Reply) }
func (m *pulledMsg) Data() []byte                              { return m.msg.Data }
func (m *pulledMsg) Headers() nats.Header                      { return m.msg.Header }
func (m *pulledMsg) Subject() string                           { return m.msg.Subject }
func (m *pulledMsg) Reply() string                             { return m.msg.Reply }
func (m *pulledMsg) Ack() error                                { return m.ack(ackAck) }
func (m *pulledMsg) Nak() error                                { return m.ack(ackNak) }
func (m *pulledMsg) InProgress() error                         { return m.ack(ackProgress) }
func (m *pulledMsg) Term() error                               { return m.ack(ackTerm) }

// DoubleAck acks and waits for the server to confirm it.
func (m *pulledMsg) DoubleAck(ctx context.Context) error {
	if m.msg.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	_, err := m.nc.RequestWithContext(ctx, m.msg.Reply, ackAck)
	return err
}

// NakWithDelay asks for redelivery after delay.
func (m *pulledMsg) NakWithDelay(delay time.Duration) error {
	if delay <= 0 {
		return m.ack(ackNak)
	}
	return m.ack(fmt.Appendf(nil, "%s {\"delay\": %d}", ackNak, delay.Nanoseconds()))
}

// TermWithReason terminates the message with a reason the server records
// in its advisory.
func (m *pulledMsg) TermWithReason(reason string) error {
	if reason == "" {
		return m.ack(ackTerm)
	}
	return m.ack(fmt.Appendf(nil, "%s %s", ackTerm, reason))
}

func (m *pulledMsg) ack(body []byte) error {
	if m.msg.Reply == "" {
		return jetstream.ErrMsgNoReply
	}
	return m.nc.Publish(m.msg.Reply, body)
}

// ackMetadata parses a JetStream ack subject:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>
//	$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>...]
func ackMetadata(subject string) (*jetstream.MsgMetadata, error) {
	rest, ok := strings.CutPrefix(subject, "$JS.ACK.")
	if !ok {
		return nil, errNotJobMessage
	}
	t := strings.Split(rest, ".")
	domain := ""
	switch {
	case len(t) == 7: // v1
	case len(t) >= 9: // v2: domain and account hash first
		domain = t[0]
		if domain == "_" {
			domain = ""
		}
		t = t[2:]
	default:
		return nil, errNotJobMessage
	}
	var n [5]uint64
	for i := range n {
		v, err := strconv.ParseUint(t[2+i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %s", errNotJobMessage, subject)
		}
		n[i] = v
	}
	return &jetstream.MsgMetadata{
		Sequence:     jetstream.SequencePair{Stream: n[1], Consumer: n[2]},
		NumDelivered: n[0],
		NumPending:   n[4],
		Timestamp:    time.Unix(0, int64(n[3])),
		Stream:       t[0],
		Consumer:     t[1],
		Domain:       domain,
	}, nil
}
