// Package evaluator is the state evaluator (DESIGN §2): it consumes probe
// results and request outcomes from SWITCHBOARD_HEALTH, runs them through the
// health and circuit-breaker state machine (services/internal/state), keeps
// each endpoint's record in the KV bucket switchboard-endpoints by
// compare-and-set, and publishes a status-change event on
// switchboard.status.<endpoint> after every write that changed health,
// breaker, throttle or override.
//
// Any number of replicas share one durable consumer and stay correct:
//
//   - Each endpoint's events are applied exactly once and in stream order,
//     whichever replica receives them. The record remembers the stream
//     sequence of the last event it applied (applied_seq). A replica that
//     holds event S asks the stream leader for the endpoint's next event
//     after applied_seq; if that is an earlier one still in flight elsewhere,
//     it applies that one first, so a slow or dead replica never holds an
//     endpoint back and never reorders it. An event at or below applied_seq
//     is a duplicate and is only acknowledged. The question is skipped when
//     the replica itself received every stream message since applied_seq (a
//     run of first deliveries with consecutive consumer sequences).
//   - Events an endpoint has queued together are applied together: one write
//     per status change, the others batched into as few writes as possible.
//   - Every write is a compare-and-set on the KV revision; a loser re-reads
//     and re-applies.
//   - A status change is written into the record (pending) in the same write
//     that makes it, published after the write with Nats-Msg-Id
//     <endpoint>@<revision>, and then cleared. If the publish fails or the
//     replica dies in between, the next writer of that record, or any
//     replica's timer, publishes it; per endpoint, changes reach
//     SWITCHBOARD_STATUS in revision order, and a duplicate collapses on its
//     id.
//   - Time-driven transitions (open -> half_open, lease expiry, throttle end)
//     are made by a timer over a live view of every record, without traffic.
//   - A replica never stops consuming while it runs: a consumer that is gone
//     (deleted, lost by a restarted server, removed with its stream) is
//     created again with backoff. A record whose applied_seq the stream no
//     longer reaches (the stream was recreated or lost its last writes) is
//     moved back, and a recreated bucket resets what is known published.
//
// The state machine runs on event time: an event is applied at the time it
// was observed (its start plus its latency), never later than the wall clock
// and never before the record's own clock (updated_at), so that a backlog is
// judged by when things happened and a record's time never runs backwards.
package evaluator
