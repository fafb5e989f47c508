package gateway

import (
	"encoding/json"
	"net/url"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// jobEventEncoder writes the structured-mode CloudEvent of an interactive
// JobSubmitted straight into a buffer: the same document events.Encode
// makes (attributes, dataschema, data), without the generic CloudEvents
// machinery, which would cost more than the rest of the gateway's work on
// a call. Tests check that events.Decoder accepts what it writes.
type jobEventEncoder struct {
	head []byte // `{"specversion":"1.0","source":...,"type":...,...,"id":"`
}

func newJobEventEncoder(source string) jobEventEncoder {
	// The CloudEvents SDK keeps a source as a URI reference, normalized.
	if u, err := url.Parse(source); err == nil {
		source = u.String()
	}
	src, _ := json.Marshal(source)
	b := []byte(`{"specversion":"1.0","type":"` + events.TypeJobSubmitted +
		`","datacontenttype":"application/json","dataschema":"` + events.DataSchema(events.TypeJobSubmitted) + `","source":`)
	b = append(b, src...)
	b = append(b, `,"id":"`...)
	return jobEventEncoder{head: b}
}

// append appends the event of job id (a valid name, so it needs no
// escaping) with request (valid JSON: events.ParseChatRequest accepted it).
func (e jobEventEncoder) append(b []byte, id string, request []byte, submitted, deadline time.Time) []byte {
	b = append(b, e.head...)
	b = append(b, id...)
	b = append(b, `","time":"`...)
	b = submitted.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","data":{"id":"`...)
	b = append(b, id...)
	b = append(b, `","request":`...)
	b = append(b, request...)
	b = append(b, `,"deadline":"`...)
	b = deadline.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","submitted_at":"`...)
	b = submitted.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `"}}`...)
	return b
}
