package mock

import "sync/atomic"

// Route names used in [Stats].
const (
	RouteHealth  = "health"
	RouteModels  = "models"
	RouteChat    = "chat_completions"
	RouteAdmin   = "admin"
	RouteUnknown = "unknown"
)

// Fault names used in [Stats].
const (
	FaultLatency   = "latency"
	FaultHang      = "hang"
	FaultRateLimit = "rate_limit"
	FaultError     = "error"
	FaultMalformed = "malformed"
	FaultTruncate  = "truncate"
	FaultOutage    = "outage"
)

type route uint8

const (
	routeHealth route = iota
	routeModels
	routeChat
	routeAdmin
	routeUnknown
	numRoutes
)

var routeNames = [numRoutes]string{RouteHealth, RouteModels, RouteChat, RouteAdmin, RouteUnknown}

type fault uint8

const (
	faultLatency fault = iota
	faultHang
	faultRateLimit
	faultError
	faultMalformed
	faultTruncate
	faultOutage
	numFaults
)

var faultNames = [numFaults]string{FaultLatency, FaultHang, FaultRateLimit, FaultError, FaultMalformed, FaultTruncate, FaultOutage}

// Stats is a snapshot of a server's counters. Maps hold only non-zero counts.
type Stats struct {
	// Requests counts every request, admin ones included.
	Requests int64 `json:"requests"`
	// ByRoute counts requests by route (RouteHealth, RouteModels, ...).
	ByRoute map[string]int64 `json:"by_route"`
	// ByStatus counts written response statuses. Requests that were hung,
	// reset or aborted before a status was written are not counted here.
	ByStatus map[int]int64 `json:"by_status"`
	// Faults counts injected faults by kind (FaultLatency, FaultHang, ...).
	Faults map[string]int64 `json:"faults"`
	// Hanging is the number of requests being held without an answer now.
	Hanging int64 `json:"hanging"`
}

// counters are updated lock-free on every request.
type counters struct {
	routes   [numRoutes]atomic.Int64
	statuses [600]atomic.Int64
	faults   [numFaults]atomic.Int64
	hanging  atomic.Int64
}

func (c *counters) status(code int) {
	if code >= 0 && code < len(c.statuses) {
		c.statuses[code].Add(1)
	}
}

func (c *counters) snapshot() Stats {
	st := Stats{
		ByRoute:  make(map[string]int64),
		ByStatus: make(map[int]int64),
		Faults:   make(map[string]int64),
		Hanging:  c.hanging.Load(),
	}
	for i := range c.routes {
		if n := c.routes[i].Load(); n > 0 {
			st.ByRoute[routeNames[i]] = n
			st.Requests += n
		}
	}
	for code := range c.statuses {
		if n := c.statuses[code].Load(); n > 0 {
			st.ByStatus[code] = n
		}
	}
	for i := range c.faults {
		if n := c.faults[i].Load(); n > 0 {
			st.Faults[faultNames[i]] = n
		}
	}
	return st
}
