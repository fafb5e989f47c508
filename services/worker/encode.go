package worker

import (
	"encoding/json"
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/natsx"
)

// eventEncoder writes the structured-mode CloudEvents the worker publishes
// (request outcomes, job finished) around data it marshalled itself: the
// same document events.Encode makes, without the generic CloudEvents
// machinery, which marshals the data twice and costs more than the rest of
// a job's handling. Payloads are validated first, exactly as
// events.Encode does; tests check that events.Decoder, with the JSON
// Schemas, accepts what it writes.
type eventEncoder struct {
	source []byte // the JSON string of the source
}

func newEventEncoder(source string) eventEncoder {
	// The CloudEvents SDK keeps a source as a normalized URI reference.
	if u, err := url.Parse(source); err == nil {
		source = u.String()
	}
	b, _ := json.Marshal(source)
	return eventEncoder{source: b}
}

// encode validates p and returns the CloudEvent (id) whose data is data,
// the JSON of p.
func (e eventEncoder) encode(id string, p events.Payload, data []byte, now time.Time) ([]byte, error) {
	if id == "" {
		return nil, fmt.Errorf("encode %s: event id is empty", p.EventType())
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", p.EventType(), err)
	}
	jid, err := json.Marshal(id)
	if err != nil {
		return nil, err
	}
	typ := p.EventType()
	b := make([]byte, 0, len(data)+256)
	b = append(b, `{"specversion":"1.0","id":`...)
	b = append(b, jid...)
	b = append(b, `,"source":`...)
	b = append(b, e.source...)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","datacontenttype":"application/json","dataschema":"`...)
	b = append(b, events.DataSchema(typ)...)
	b = append(b, `","time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","data":`...)
	b = append(b, data...)
	b = append(b, '}')
	return b, nil
}

// msg marshals p and wraps its CloudEvent in a NATS message on p's
// subject with Nats-Msg-Id = id.
func (e eventEncoder) msg(id string, p events.Payload, now time.Time) (*nats.Msg, error) {
	data, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", p.EventType(), err)
	}
	return e.msgWithData(id, p, data, now)
}

// msgWithData is msg with p already marshalled to data.
func (e eventEncoder) msgWithData(id string, p events.Payload, data []byte, now time.Time) (*nats.Msg, error) {
	body, err := e.encode(id, p, data, now)
	if err != nil {
		return nil, err
	}
	return natsx.NewMsg(p.Subject(), id, body), nil
}
