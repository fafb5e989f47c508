package natsx

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchboard-llm/switchboard/events"
)

// Dead-letter headers (contract): a dead letter carries the original data and
// headers plus these.
const (
	HeaderDeadReason  = "Switchboard-Dead-Reason"
	HeaderDeadSubject = "Switchboard-Dead-Subject"
	HeaderDeadStream  = "Switchboard-Dead-Stream"
	HeaderDeadSeq     = "Switchboard-Dead-Sequence"
)

// NewMsg wraps an encoded structured-mode CloudEvent in a NATS message whose
// Nats-Msg-Id is the event id, so that JetStream drops a duplicate.
func NewMsg(subject, id string, body []byte) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set("Content-Type", events.ContentType)
	m.Header.Set(jetstream.MsgIDHeader, id)
	m.Data = body
	return m
}

// EncodeMsg encodes p as the CloudEvent (source, id) on p's subject.
func EncodeMsg(source, id string, p events.Payload) (*nats.Msg, error) {
	body, err := events.Encode(source, id, p)
	if err != nil {
		return nil, err
	}
	return NewMsg(p.Subject(), id, body), nil
}

// Publisher publishes events to JetStream under one CloudEvent source.
type Publisher struct {
	JS     jetstream.JetStream
	Source string
}

// Publish encodes p with the given event id and publishes it on its subject,
// returning once JetStream acknowledged it (a duplicate id is acknowledged as
// a duplicate, not stored twice).
func (p Publisher) Publish(ctx context.Context, id string, data events.Payload) (*jetstream.PubAck, error) {
	m, err := EncodeMsg(p.Source, id, data)
	if err != nil {
		return nil, err
	}
	ack, err := p.JS.PublishMsg(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("publish %s on %s: %w", data.EventType(), m.Subject, err)
	}
	return ack, nil
}

// CallbackMsg is the message that queues the callback of job id: a copy
// of the job's finished event (header and body of fin, a message on
// switchboard.jobs.done.<id>) on switchboard.jobs.callback.<id>, with the
// same Nats-Msg-Id, so that however many times it is queued within the
// duplicate window it is stored once.
func CallbackMsg(id string, fin nats.Header, body []byte) *nats.Msg {
	m := nats.NewMsg(events.JobCallbackSubject(id))
	for k, v := range fin {
		m.Header[k] = slices.Clone(v)
	}
	m.Data = body
	return m
}

// DeadLetter copies a message that cannot be processed to the dead-letter
// stream on subject, with the reason and where it came from, and waits for
// JetStream's ack. Call it before Term: Term deletes from a work queue.
func DeadLetter(ctx context.Context, js jetstream.JetStream, subject string, msg jetstream.Msg, reason string) error {
	dl := nats.NewMsg(subject)
	for k, v := range msg.Headers() {
		dl.Header[k] = v
	}
	dl.Header.Set(HeaderDeadReason, reason)
	dl.Header.Set(HeaderDeadSubject, msg.Subject())
	id := "dead-" + msg.Subject()
	if md, err := msg.Metadata(); err == nil {
		dl.Header.Set(HeaderDeadStream, md.Stream)
		dl.Header.Set(HeaderDeadSeq, strconv.FormatUint(md.Sequence.Stream, 10))
		id = "dead-" + md.Stream + "-" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	dl.Header.Set(jetstream.MsgIDHeader, id)
	dl.Data = msg.Data()
	if _, err := js.PublishMsg(ctx, dl); err != nil {
		return fmt.Errorf("dead-letter %s: %w", msg.Subject(), err)
	}
	return nil
}

func isNoResponders(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}
