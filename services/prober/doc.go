// Package prober probes every configured endpoint from one vantage point and
// publishes each result as a switchboard.probe.result.v1 CloudEvent on
// switchboard.probe.<endpoint>, with source /prober/<vantage>.
//
// # Probe kinds
//
//	health      GET {base_url}{health_path}: reachability (endpoints with a health_path)
//	models      GET {base_url}/models: the key works and every configured model is listed; no tokens
//	completion  POST {base_url}/chat/completions, streamed: a tiny real completion that
//	            costs tokens; only with prober.completion.enabled and "completion" in probes
//
// # Outcomes
//
// A probe passes, fails, or is inconclusive. Only a fail says the endpoint is
// broken: timeouts, refused or reset connections, DNS and TLS failures, 5xx,
// 401/403, malformed 200s, streams without their [DONE], missing models. A
// 429 is inconclusive with class http_429 and ThrottledUntil (the endpoint is
// up, its quota is not); a 400/404/413/422 is inconclusive with class
// client_error (the endpoint refused the probe itself); so is a probe the
// prober gave up on because it was overloaded (class internal). A probe cut
// short by the prober's own shutdown (class caller_canceled) is counted in
// the metrics but never published.
//
// # Scheduling
//
// One scheduler goroutine keeps every (endpoint, kind) pair in a timer heap.
// The first round starts within min(interval, 2s) of Run, spread at random;
// after that each pair is due one interval after its previous probe started,
// the interval scaled by a random factor in [1-jitter, 1+jitter] each time.
// A pair is back in the heap only when its probe has finished, so two probes
// of one pair never overlap. At most prober.max_concurrent probes run at once;
// a probe that waited more than its interval for a slot is not sent but
// published as inconclusive/internal, which sheds load so the probes that do
// run stay on time. Each probe is bounded by the endpoint's timeout.
//
// # Publishing
//
// Results go through an outbox to publisher goroutines that wait for
// JetStream's ack, so a slow NATS never delays a probe. The outbox holds at
// most one result per pair: when NATS is slower than the probes, a newer
// result replaces the unpublished older one (counted in
// switchboard_probe_publish_errors_total{reason="superseded"} and logged at
// most every 10 s), so memory stays bounded and every pair's freshest result
// goes out. At most one publish per pair is in flight, so each pair's results
// reach the stream in probe order. On shutdown the outbox is drained for up
// to 5 s.
//
// The API key is only ever written into the Authorization header: results,
// errors and log lines carry bodies and messages with the key redacted.
package prober
