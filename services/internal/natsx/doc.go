// Package natsx is the services' NATS and JetStream adapter: connecting to an
// external NATS (user/password, token, nkey, creds, TLS), running an embedded
// nats-server with JetStream, provisioning every stream and KV bucket of the
// contract idempotently, and turning events into NATS messages.
//
// Only the github.com/nats-io/nats.go/jetstream API is used.
package natsx
