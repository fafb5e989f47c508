package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// ContentType is the structured-mode CloudEvents media type every event
// travels with.
const ContentType = "application/cloudevents+json"

// Payload is the data of one event type.
type Payload interface {
	// EventType is the CloudEvent type constant.
	EventType() string
	// Subject is the NATS subject the event is published on.
	Subject() string
	// Validate checks the payload's invariants (the schema's and more).
	Validate() error
}

// ErrUnknownType is returned (wrapped) when an event's type is not one this
// contract knows.
var ErrUnknownType = errors.New("unknown event type")

// ErrMalformed is returned (wrapped) when a message is not a valid event.
var ErrMalformed = errors.New("malformed event")

// New builds the CloudEvent for p with the given source and id, stamped now.
func New(source, id string, p Payload) (event.Event, error) {
	ev := event.New()
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType(p.EventType())
	ev.SetTime(time.Now().UTC())
	ev.SetDataSchema(DataSchema(p.EventType()))
	if err := ev.SetData(event.ApplicationJSON, p); err != nil {
		return ev, fmt.Errorf("encode %s data: %w", p.EventType(), err)
	}
	return ev, nil
}

// Encode builds the CloudEvent for p and marshals it in structured mode.
// It refuses a payload that does not validate.
func Encode(source, id string, p Payload) ([]byte, error) {
	if id == "" {
		return nil, fmt.Errorf("encode %s: event id is empty", p.EventType())
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", p.EventType(), err)
	}
	ev, err := New(source, id, p)
	if err != nil {
		return nil, err
	}
	// The event's own MarshalJSON: json.Marshal would validate and compact
	// the output a second time.
	b, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", p.EventType(), err)
	}
	return b, nil
}

// Envelope is a decoded event: its CloudEvent attributes and typed data.
type Envelope struct {
	ID     string
	Source string
	Type   string
	Time   time.Time
	// Data is one of *ProbeResult, *RequestOutcome, *StatusChanged,
	// *JobSubmitted, *JobFinished, according to Type.
	Data Payload
}

// newPayload returns an empty payload for an event type.
func newPayload(eventType string) (Payload, bool) {
	switch eventType {
	case TypeProbeResult:
		return &ProbeResult{}, true
	case TypeRequestOutcome:
		return &RequestOutcome{}, true
	case TypeStatusChanged:
		return &StatusChanged{}, true
	case TypeJobSubmitted:
		return &JobSubmitted{}, true
	case TypeJobFinished:
		return &JobFinished{}, true
	}
	return nil, false
}

// Validator checks an event's data against its JSON Schema; schemas.Validate
// is one. Decode skips the schema check when it is nil.
type Validator func(dataschema string, data []byte) error

// Decoder decodes structured-mode CloudEvents into typed payloads.
type Decoder struct {
	// Schema, when set, validates the data of every event against the
	// schema its type names before it is unmarshalled.
	Schema Validator
}

// Decode parses one structured-mode CloudEvent. It rejects, with an error
// that says what is wrong (wrapping ErrMalformed or ErrUnknownType): bodies
// that are not JSON CloudEvents 1.0, missing attributes, unknown types, a
// dataschema other than the type's, and data that is not valid for its type.
func (d Decoder) Decode(body []byte) (*Envelope, error) {
	var ev event.Event
	// The event's own UnmarshalJSON: json.Unmarshal would scan the body
	// once more first to check that it is JSON, which the parser does too.
	if err := ev.UnmarshalJSON(body); err != nil {
		return nil, fmt.Errorf("%w: not a structured-mode CloudEvent: %v", ErrMalformed, err)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, oneLine(err.Error()))
	}
	if ev.SpecVersion() != event.CloudEventsVersionV1 {
		return nil, fmt.Errorf("%w: specversion %q, want 1.0", ErrMalformed, ev.SpecVersion())
	}
	p, ok := newPayload(ev.Type())
	if !ok {
		return nil, fmt.Errorf("%w %q (event %s from %s)", ErrUnknownType, ev.Type(), ev.ID(), ev.Source())
	}
	where := fmt.Sprintf("event %s (%s from %s)", ev.ID(), ev.Type(), ev.Source())
	if ds := ev.DataSchema(); ds != "" && ds != DataSchema(ev.Type()) {
		return nil, fmt.Errorf("%w: %s: dataschema %q, want %q", ErrMalformed, where, ds, DataSchema(ev.Type()))
	}
	if ct := ev.DataContentType(); ct != "" && ct != event.ApplicationJSON {
		return nil, fmt.Errorf("%w: %s: datacontenttype %q, want application/json", ErrMalformed, where, ct)
	}
	data := ev.Data()
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: %s: data is missing", ErrMalformed, where)
	}
	if d.Schema != nil {
		if err := d.Schema(DataSchema(ev.Type()), data); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, where, err)
		}
	}
	if err := json.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("%w: %s: data: %v", ErrMalformed, where, err)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %s", ErrMalformed, where, oneLine(err.Error()))
	}
	return &Envelope{ID: ev.ID(), Source: ev.Source(), Type: ev.Type(), Time: ev.Time(), Data: p}, nil
}

// Decode decodes with Go-level validation only; see Decoder.Decode.
func Decode(body []byte) (*Envelope, error) { return Decoder{}.Decode(body) }

func oneLine(s string) string {
	b := []byte(s)
	for len(b) > 0 && b[len(b)-1] == '\n' {
		b = b[:len(b)-1]
	}
	for i, c := range b {
		if c == '\n' {
			b[i] = ';'
		}
	}
	return string(b)
}
