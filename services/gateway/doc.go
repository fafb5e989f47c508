// Package gateway is Switchboard's HTTP front door (DESIGN §4, §5): the
// durable job API, the OpenAI-compatible interactive lane, the endpoint
// table, a server-sent event stream of status changes and job results, and
// a status page.
//
// # Durable jobs
//
// POST /v1/jobs validates the body against schemas.JobRequest and the
// JobSubmitted invariants, refuses a model no configured endpoint serves,
// and hands the job to a Submitter: the job is accepted (202) only after
// JetStream acknowledged it on switchboard.jobs.submit.<priority>, and then
// gets a `queued` record in KV switchboard-jobs. The job id is the
// Idempotency-Key header, else the body's "id", else generated; a repeated
// submission of an existing job returns that job with 200 and queues
// nothing. `switchboard submit` uses the same Parser and Submitter.
//
// GET /v1/jobs/{id} returns the record (?wait=30s long-polls until it is
// terminal, at most 60 s); DELETE /v1/jobs/{id} cancels a job that has not
// finished (compare-and-set to `cancelled`, then its finished event).
//
// # Interactive lane
//
// POST /v1/chat/completions is a core NATS request to the workers' queue
// group on switchboard.jobs.interactive, in the protocol of package lane.
// Nothing is stored on the way. Replies arrive on one long-lived wildcard
// inbox subscription and are dispatched to the waiting HTTP handler, so a
// call costs no subscription of its own. A streamed reply is relayed and
// flushed as it arrives; a stream that breaks after its start ends with an
// SSE error event and never with "data: [DONE]".
//
// # Errors and auth
//
// Every error is OpenAI-style JSON: {"error":{"message","type","param","code"}}.
// When gateway.api_keys is set, every /v1/ route requires
// "Authorization: Bearer <key>"; the key's name, never the key, appears in
// logs and metrics.
package gateway
