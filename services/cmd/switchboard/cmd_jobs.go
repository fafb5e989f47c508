package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/gateway"
	"github.com/switchboard-llm/switchboard/services/internal/config"
)

func newJobsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Read and cancel durable jobs",
		Long: `Read and cancel durable jobs in KV switchboard-jobs, straight over NATS (no
gateway needed). Records expire after nats.streams.job_ttl (default 24h).`,
	}
	cmd.AddCommand(newJobsGetCmd(g), newJobsCancelCmd(g))
	return cmd
}

func newJobsGetCmd(g *globals) *cobra.Command {
	var (
		wait   time.Duration
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Print a job's record: status, attempts, result or error",
		Long: `Print the record of job ID: its status (queued, running, succeeded, failed,
cancelled, expired), every attempt (endpoint, outcome, latency, error class),
and the answer or the error. With --wait it first waits until the job
finished or the wait is over, whichever comes first. With --json it prints
the record as stored.

It exits 1 if the job does not exist or finished without success (failed,
cancelled or expired).`,
		Example: `  switchboard jobs get 01HZX7Q3
  switchboard jobs get 01HZX7Q3 --wait 30s
  switchboard jobs get 01HZX7Q3 --json | jq .attempts`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := events.CheckName("job id", id); err != nil {
				return err
			}
			return withJobs(g, func(ctx context.Context, jobs *gateway.Jobs) error {
				rec, err := waitJob(ctx, jobs, id, wait)
				if err != nil {
					return err
				}
				if err := printRecord(cmd.OutOrStdout(), rec, asJSON); err != nil {
					return err
				}
				return finishedBadly(rec)
			})
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait until the job finished, at most this long (e.g. 30s)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the record as JSON")
	return cmd
}

func newJobsCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job that has not finished",
		Long: `Mark job ID cancelled (compare-and-set on its record) and publish its finished
event; workers skip it, and a call already running is abandoned. A job that
already finished cannot be cancelled: the command then exits 1 with its status.`,
		Example: "  switchboard jobs cancel 01HZX7Q3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if err := events.CheckName("job id", id); err != nil {
				return err
			}
			return withJobs(g, func(ctx context.Context, jobs *gateway.Jobs) error {
				if _, err := jobs.Cancel(ctx, id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "job %s cancelled\n", id)
				return nil
			})
		},
	}
}

// withJobs connects to NATS and runs fn with the jobs bucket until it
// returns or SIGINT/SIGTERM.
func withJobs(g *globals, fn func(ctx context.Context, jobs *gateway.Jobs) error) error {
	return g.withNATS(context.Background(), "cli", func(ctx context.Context, _ *config.Config, js jetstream.JetStream) error {
		host, _ := os.Hostname()
		jobs, err := gateway.OpenJobs(ctx, js, "/cli/"+host)
		if err != nil {
			return fmt.Errorf("%w (is Switchboard running against this NATS?)", err)
		}
		return fn(ctx, jobs)
	})
}

// waitJob returns the record of id once it is terminal or wait passed.
func waitJob(ctx context.Context, jobs *gateway.Jobs, id string, wait time.Duration) (events.JobRecord, error) {
	end := time.Now().Add(wait)
	for {
		rec, err := jobs.Wait(ctx, id, time.Until(end))
		if err != nil || rec.Status.Terminal() || !time.Now().Before(end) || ctx.Err() != nil {
			return rec, err
		}
	}
}

// finishedBadly is the error of a job that ended without success, so that
// scripts can tell from the exit status.
func finishedBadly(rec events.JobRecord) error {
	if rec.Status.Terminal() && rec.Status != events.JobSucceeded {
		return fmt.Errorf("job %s %s", rec.ID, rec.Status)
	}
	return nil
}

// printRecord prints a job record for people, or as JSON.
func printRecord(out io.Writer, rec events.JobRecord, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rec)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	ts := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	row("id", rec.ID)
	row("status", string(rec.Status))
	row("lane", string(rec.Lane))
	row("priority", string(rec.Priority))
	row("model", rec.Model)
	row("endpoint", rec.Endpoint)
	row("submitted", ts(&rec.SubmittedAt))
	row("started", ts(rec.StartedAt))
	row("finished", ts(rec.FinishedAt))
	row("deadline", ts(rec.Deadline))
	if rec.Error != nil {
		msg := rec.Error.Message
		if rec.Error.Class != "" {
			msg = string(rec.Error.Class) + ": " + msg
		}
		row("error", msg)
	}
	row("dead letter", rec.DeadLetter)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rec.Attempts) > 0 {
		fmt.Fprintln(out, "\nattempts:")
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  N\tENDPOINT\tMODEL\tOUTCOME\tSTATUS\tLATENCY\tERROR")
		for _, a := range rec.Attempts {
			status := ""
			if a.StatusCode != 0 {
				status = fmt.Sprint(a.StatusCode)
			}
			errText := a.Error
			if a.ErrorClass != "" {
				errText = strings.TrimSuffix(string(a.ErrorClass)+": "+a.Error, ": ")
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%.0f ms\t%s\n", a.N, a.Endpoint, a.Model, a.Outcome, status, a.LatencyMS, errText)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if answer := answerText(rec.Response); answer != "" {
		fmt.Fprintf(out, "\n%s\n", answer)
	}
	return nil
}

// answerText is the first choice's message content of a chat completion.
func answerText(resp json.RawMessage) string {
	if len(resp) == 0 {
		return ""
	}
	var c struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if json.Unmarshal(resp, &c) != nil || len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Message.Content
}
