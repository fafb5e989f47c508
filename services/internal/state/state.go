// Package state is the pure health and circuit-breaker state machine of an
// endpoint (DESIGN §2): no I/O, no clock of its own. The evaluator applies
// signals to records it reads from and writes to KV by compare-and-set; the
// workers use Admit and AcquireLease to route and to take half-open trials.
//
// Every function takes the record by value and returns the next one, so a
// caller that loses a compare-and-set race simply re-reads and re-applies.
package state

import (
	"sort"
	"time"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

// Settings are the thresholds the machine runs on.
type Settings struct {
	Health  config.Health
	Breaker config.Breaker
	// QuotaGroups maps endpoint name -> quota group ("" = none).
	QuotaGroups map[string]string
}

// SettingsFrom takes the settings from a loaded config.
func SettingsFrom(c *config.Config) Settings {
	s := Settings{Health: c.Health, Breaker: c.Breaker, QuotaGroups: map[string]string{}}
	for _, ep := range c.Endpoints {
		s.QuotaGroups[ep.Name] = ep.QuotaGroup
	}
	return s
}

// SignalKind says what a Signal carries.
type SignalKind int

const (
	SignalProbe    SignalKind = iota + 1 // Probe is set
	SignalOutcome                        // Outcome is set
	SignalOperator                       // Operator is set
	SignalThrottle                       // ThrottleUntil is set: a 429 on another member of the quota group
)

// Command is an operator's command (switchboard endpoint drain|undrain|open|close|reset).
type Command string

const (
	CmdDrain   Command = "drain"   // override drain: no new work, probes go on
	CmdUndrain Command = "undrain" // override none
	CmdOpen    Command = "open"    // override force_open
	CmdClose   Command = "close"   // override force_closed
	CmdReset   Command = "reset"   // override none and a fresh record (unknown/closed, counters zero)
)

// Signal is one input to the machine.
type Signal struct {
	Kind     SignalKind
	Probe    *events.ProbeResult
	Outcome  *events.RequestOutcome
	Operator Command
	// Reason is the operator's free-text reason.
	Reason string
	// ThrottleUntil and ThrottleFrom (the member that got the 429) for SignalThrottle.
	ThrottleUntil time.Time
	ThrottleFrom  string
	// EventID, EventType and Source identify the CloudEvent that carried the
	// signal, for the status-change cause.
	EventID, EventType, Source string
}

// Change says what one Apply or Tick changed; Cause says why.
type Change struct {
	Health   *events.Transition
	Breaker  *events.Transition
	Throttle *events.ThrottleChange
	Override *events.Transition
	Cause    events.Cause
	// Write is true when the record changed at all (counters included) and
	// must be written, even if no status-change event is due.
	Write bool
}

// Changed reports whether a status-change event is due.
func (c Change) Changed() bool {
	return c.Health != nil || c.Breaker != nil || c.Throttle != nil || c.Override != nil
}

// Admission is whether a worker may send a call to an endpoint now.
type Admission struct {
	OK bool
	// NeedsLease: the breaker is half-open; the call needs a trial lease.
	NeedsLease bool
	// RetryAt is the earliest time the endpoint may admit again when !OK
	// (zero if unknown, e.g. drained or force_open).
	RetryAt time.Time
	// Reason says why not, e.g. "breaker open until 12:00:05", "throttled", "drained".
	Reason string
}

// QuotaPeers returns the other endpoints of endpoint's quota group, sorted;
// none when it has no group.
func (s Settings) QuotaPeers(endpoint string) []string {
	g := s.QuotaGroups[endpoint]
	if g == "" {
		return nil
	}
	var out []string
	for ep, eg := range s.QuotaGroups {
		if eg == g && ep != endpoint {
			out = append(out, ep)
		}
	}
	sort.Strings(out)
	return out
}
