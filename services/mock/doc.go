// Package mock is an OpenAI-compatible endpoint with fault injection, for
// demos (switchboard dev runs three), tests of the prober, workers and
// gateway, and benchmarks. With no fault configured it answers from pooled
// buffers with hand-built JSON, so its own cost stays small next to what it
// is measured against.
//
// # OpenAI API
//
// Routes match on the path suffix, so any prefix works: a benchmark can serve
// a thousand endpoints from one server as http://host/e17/v1 and so on.
//
//	GET  .../health             200 {"status":"ok"}; no API key needed
//	GET  .../models             the model list, OpenAI format
//	POST .../chat/completions   a chat completion, or server-sent events with "stream": true
//
// Replies are deterministic: the content is [ReplyContent] of the last user
// message, "mock <name>: <its first 64 characters>", and usage counts are
// estimates of about four bytes a token. A stream sends a chunk with the role,
// Config.StreamChunks content chunks, a chunk with finish_reason "stop", a
// usage chunk if stream_options.include_usage is set, then "data: [DONE]".
// Bad requests get OpenAI error bodies: 400 invalid_request_error for invalid
// JSON or a missing model or messages, 404 model_not_found for a model not in
// Config.Models, and 401 invalid_api_key when Config.APIKey is set and the
// "Authorization: Bearer" header does not carry it. Every response carries
// the header X-Mock-Endpoint with the endpoint's name.
//
// # Faults
//
// [Faults] (latency, error and 429 rates, hangs, malformed and truncated
// bodies, scheduled outages) apply to models and chat completions. Health
// checks fail during outages and, unless apply_to_health is false, at
// error_rate; other faults leave health alone. Random faults are reproducible:
// each is a hash of Config.Seed and the request's sequence number.
//
// # Admin API
//
// On the same port, never subject to faults, and protected by the API key
// if one is set:
//
//	GET   /_mock/faults   the current faults as JSON (zero fields omitted)
//	PUT   /_mock/faults   replace them; 400 with the reason on unknown fields or bad values
//	PATCH /_mock/faults   merge: fields present in the body replace the current ones
//	GET   /_mock/stats    request counts by route, by status and by injected fault
//	POST  /_mock/down     start a "down now" outage (faults.down = true)
//	POST  /_mock/up       end it (faults.down = false; scheduled outages still apply)
//
// Fault fields, all optional (durations are Go duration strings):
//
//	latency, latency_min, latency_max   added delay: latency plus a uniform draw in [min, max]
//	error_rate, error_status            share of requests failed, and with what (default 500)
//	apply_to_health                     whether error_rate also fails health (default true)
//	rate_limit_rate, retry_after        share of 429s, and their Retry-After (default 1s)
//	hang_rate                           share of requests never answered
//	malformed_rate                      share of 200s whose body is not a valid answer
//	truncate_rate                       share of answers cut off mid-body
//	outages                             [{"every":"60s","for":"10s","offset":"0s"}], from the server's start
//	down                                down now
//	outage_mode                         "status" (503, default), "reset" (connection reset) or "hang"
//
// For example, to make an endpoint fail half of its calls and then take it down:
//
//	curl -X PATCH localhost:9001/_mock/faults -d '{"error_rate":0.5,"error_status":503}'
//	curl -X POST localhost:9001/_mock/down
package mock
