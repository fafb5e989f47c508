package events

import (
	"fmt"
	"regexp"
)

// Subjects, streams and KV buckets (contract, DESIGN §3).
const (
	SubjectProbeAll       = "switchboard.probe.>"
	SubjectOutcomeAll     = "switchboard.outcome.>"
	SubjectStatusAll      = "switchboard.status.>"
	SubjectJobSubmitAll   = "switchboard.jobs.submit.>"
	SubjectJobDoneAll     = "switchboard.jobs.done.>"
	SubjectJobDeadAll     = "switchboard.jobs.dead.>"
	SubjectJobCallbackAll = "switchboard.jobs.callback.>"
	SubjectDeadAll        = "switchboard.dead.>"
	SubjectJobInteractive = "switchboard.jobs.interactive"

	StreamHealth  = "SWITCHBOARD_HEALTH"
	StreamStatus  = "SWITCHBOARD_STATUS"
	StreamJobs    = "SWITCHBOARD_JOBS"
	StreamResults = "SWITCHBOARD_RESULTS"
	StreamDLQ     = "SWITCHBOARD_DLQ"
	// StreamCallbacks is the work queue of job callbacks still to POST.
	StreamCallbacks = "SWITCHBOARD_CALLBACKS"

	BucketEndpoints = "switchboard-endpoints"
	BucketJobs      = "switchboard-jobs"

	// QueueWorkers is the queue group of the interactive lane.
	QueueWorkers = "workers"
)

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ValidName reports whether s can be an endpoint name or job id: one NATS
// subject token and one KV key, [A-Za-z0-9_-]+, at most 128 bytes.
func ValidName(s string) bool { return len(s) <= 128 && tokenRE.MatchString(s) }

// CheckName returns an error saying why s is not a valid name of what.
func CheckName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if !ValidName(s) {
		return fmt.Errorf("%s %q must match [A-Za-z0-9_-]+ (at most 128 characters)", what, s)
	}
	return nil
}

// ProbeSubject is where probe results for endpoint are published.
func ProbeSubject(endpoint string) string { return "switchboard.probe." + endpoint }

// OutcomeSubject is where request outcomes for endpoint are published.
func OutcomeSubject(endpoint string) string { return "switchboard.outcome." + endpoint }

// StatusSubject is where status changes of endpoint are published.
func StatusSubject(endpoint string) string { return "switchboard.status." + endpoint }

// JobSubmitSubject is where durable jobs of priority p are submitted.
func JobSubmitSubject(p Priority) string { return "switchboard.jobs.submit." + string(p) }

// JobDoneSubject is where the finished event of job id is published.
func JobDoneSubject(id string) string { return "switchboard.jobs.done." + id }

// JobCallbackSubject is where the callback of job id waits to be POSTed:
// a copy of its finished event, kept in the work queue SWITCHBOARD_CALLBACKS
// until a worker delivered it (or gave up on it).
func JobCallbackSubject(id string) string { return "switchboard.jobs.callback." + id }

// JobDeadSubject is where a dead-lettered job is published.
func JobDeadSubject(id string) string { return "switchboard.jobs.dead." + id }

// DeadSubject is where an undecodable message that arrived on origin (a
// stream name in lower case, e.g. "health") is dead-lettered.
func DeadSubject(origin, token string) string { return "switchboard.dead." + origin + "." + token }
