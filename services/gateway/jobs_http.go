package gateway

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/switchboard-llm/switchboard/events"
)

// submitResponse is the answer to POST /v1/jobs: the job's record, so a
// client sees its id and status at once.
type submitResponse struct {
	events.JobRecord
	// Created is false when the job already existed (a resubmission).
	Created bool `json:"created"`
}

// serveSubmit is POST /v1/jobs: 202 with the queued record for a new job,
// 200 with the current record when a job with that id already exists.
func (g *Gateway) serveSubmit(w http.ResponseWriter, r *http.Request) {
	buf := getBuf()
	defer putBuf(buf)
	body, e := readBody(r, *buf, g.maxBody)
	*buf = body
	if e != nil {
		writeError(w, e)
		return
	}
	job, err := g.parser.Parse(body, r.Header.Get("Idempotency-Key"))
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			writeError(w, pe)
			return
		}
		writeError(w, badRequest("", "invalid_request", "%v", err))
		return
	}
	// The job is copied into the event before Submit returns, so the
	// pooled body can be reused afterwards.
	sub, err := g.jobs.Submit(r.Context(), job)
	if err != nil {
		g.log.Error("job not accepted", "job", job.ID, "err", err)
		writeError(w, unavailable("job "+job.ID+" was not accepted (it is safe to submit it again)", err))
		return
	}
	status := http.StatusOK
	if sub.Created {
		status = http.StatusAccepted
		g.metrics.submitted.WithLabelValues(string(job.Priority)).Inc()
		g.log.Info("job accepted", "job", job.ID, "priority", job.Priority, "model", sub.Record.Model)
	}
	w.Header().Set("Location", "/v1/jobs/"+job.ID)
	writeJSON(w, status, submitResponse{JobRecord: sub.Record, Created: sub.Created})
}

// parseWait reads ?wait= as a Go duration or whole seconds.
func parseWait(s string) (time.Duration, *Error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, badRequest("wait", "invalid_request", "wait %q is not a duration such as 30s", s)
	}
	return d, nil
}

func jobID(r *http.Request) (string, *Error) {
	id := r.PathValue("id")
	if err := events.CheckName("job id", id); err != nil {
		return "", badRequest("id", "invalid_request", "%v", err)
	}
	return id, nil
}

func jobNotFound(id string) *Error {
	return &Error{Status: http.StatusNotFound, Type: typeNotFound, Code: "job_not_found", Param: "id",
		Message: "no job " + quote(id) + " (job records expire after nats.streams.job_ttl)"}
}

// serveJob is GET /v1/jobs/{id}[?wait=30s]: the job's record; with wait,
// once the job is terminal or the wait (at most 60 s) is over.
func (g *Gateway) serveJob(w http.ResponseWriter, r *http.Request) {
	id, e := jobID(r)
	if e != nil {
		writeError(w, e)
		return
	}
	wait, e := parseWait(r.URL.Query().Get("wait"))
	if e != nil {
		writeError(w, e)
		return
	}
	ctx := r.Context()
	if wait > 0 {
		// A shutting-down gateway answers long-polls with what it has.
		var cancel func()
		ctx, cancel = contextUntil(ctx, g.stopping)
		defer cancel()
	}
	rec, err := g.jobs.Wait(ctx, id, wait)
	switch {
	case errors.Is(err, ErrJobNotFound):
		writeError(w, jobNotFound(id))
	case err != nil:
		writeError(w, unavailable("read job "+id, err))
	default:
		writeJSON(w, http.StatusOK, rec)
	}
}

// serveCancel is DELETE /v1/jobs/{id}: 200 with the cancelled record (also
// for a job cancelled before: a cancel may be retried), 404 for an unknown
// job, 409 for one that finished otherwise.
func (g *Gateway) serveCancel(w http.ResponseWriter, r *http.Request) {
	id, e := jobID(r)
	if e != nil {
		writeError(w, e)
		return
	}
	rec, err := g.jobs.Cancel(r.Context(), id)
	switch {
	case errors.Is(err, ErrJobNotFound):
		writeError(w, jobNotFound(id))
	case errors.Is(err, ErrJobFinished):
		writeError(w, &Error{Status: http.StatusConflict, Type: typeConflict, Code: "job_finished", Param: "id",
			Message: "job " + quote(id) + " already finished with status " + string(rec.Status) + "; it cannot be cancelled"})
	case err != nil:
		writeError(w, unavailable("cancel job "+id, err))
	default:
		g.log.Info("job cancelled", "job", id)
		writeJSON(w, http.StatusOK, rec)
	}
}
