// Package events is Switchboard's wire contract: one payload struct and one
// Type constant per CloudEvent type, the subjects and stream names they travel
// on, the KV records other programs read, and encode/decode of structured-mode
// CloudEvents (Content-Type: application/cloudevents+json) on
// github.com/cloudevents/sdk-go/v2.
//
// The package does not import NATS: services/internal/natsx turns an encoded
// event into a NATS message (the CloudEvent id doubles as Nats-Msg-Id).
//
// Everything exported here is contract (DESIGN.md §2, §3): subscribers,
// dashboards and alert rules outside this repository depend on it. Change a
// payload only compatibly (new optional fields); anything else is a new type
// version (".v2") with its own schema in schemas/.
package events
