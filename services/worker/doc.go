// Package worker is the request worker (DESIGN §4): it takes chat jobs from
// the durable lane (the SWITCHBOARD_JOBS work queue) and the interactive lane
// (NATS requests on switchboard.jobs.interactive), chooses an endpoint with
// services/internal/router, calls it, fails over on endpoint failures within
// the job's attempt budget and deadline, and reports every upstream call as a
// switchboard.request.outcome.v1 event.
//
// Durable jobs end in exactly one terminal record in KV switchboard-jobs and
// one switchboard.chat.job.finished.v1 event, however often they are
// delivered: the terminal record is written by compare-and-set and never
// overwritten, the finished event's Nats-Msg-Id is derived from the job id,
// and a worker that finds a terminal record re-publishes the finished event
// (which collapses) before it acks. docs/worker.md describes the design.
package worker
