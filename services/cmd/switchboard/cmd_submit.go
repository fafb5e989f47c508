package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/gateway"
)

// submitFlags are the flags of `switchboard submit`.
type submitFlags struct {
	model, system, file, priority, timeout, deadline, key, callback string
	messages                                                        []string
	maxTokens, maxAttempts                                          int
	metadata                                                        map[string]string
	wait                                                            bool
	waitTimeout                                                     time.Duration
	asJSON                                                          bool
}

func newSubmitCmd(g *globals) *cobra.Command {
	var fl submitFlags
	cmd := &cobra.Command{
		Use:   "submit",
		Short: "Submit a durable chat job straight to NATS",
		Long: `Submit a durable chat job: it is published to the SWITCHBOARD_JOBS work queue
on switchboard.jobs.submit.<priority> and counts as accepted only once
JetStream acknowledged it; then its record is created in KV switchboard-jobs.
This is exactly what POST /v1/jobs does, with the same validation, without a
gateway in between.

The chat request comes from --model and --message (one user message each, in
order; --system adds a system message first), or from --file: a job request
as POST /v1/jobs takes it ({"request": {...}, "priority": ...}) or a bare
chat-completions request ({"model": ..., "messages": [...]}); "-" reads stdin.
Without either, the prompt is read from stdin. Flags override the file.

The job id is --idempotency-key, else the file's "id", else generated.
Submitting the same id again gives the same job, never a second one.

It prints the job id. With --wait it waits until the job finished (at most
--wait-timeout) and prints the answer, exiting 1 if the job failed, was
cancelled or expired.`,
		Example: `  # Fire and forget; prints the job id
  switchboard submit --model gpt-4o-mini -m "Summarize RFC 9110 in one line"

  # High priority, at most 2 minutes, wait for the answer
  switchboard submit --model gpt-4o-mini -m "Hello" --priority high --timeout 2m --wait

  # From a file, idempotently (a retry of this command makes no second job)
  switchboard submit --file job.json --idempotency-key nightly-2024-06-01

  # A prompt from stdin
  git diff | switchboard submit --model gpt-4o --system "Review this diff" --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			body, err := fl.jobRequest(cmd, cmd.InOrStdin())
			if err != nil {
				return err
			}
			p := &gateway.Parser{}
			if len(cfg.Endpoints) > 0 {
				p.Models = gateway.ModelsOf(cfg.Endpoints)
			}
			job, err := p.Parse(body, fl.key)
			if err != nil {
				return fmt.Errorf("job refused: %w", err)
			}
			return withJobs(g, func(ctx context.Context, jobs *gateway.Jobs) error {
				return fl.submit(ctx, cmd.OutOrStdout(), jobs, job)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&fl.model, "model", "", "model to ask for (a configured model or alias)")
	f.StringArrayVarP(&fl.messages, "message", "m", nil, "a user message (repeatable)")
	f.StringVar(&fl.system, "system", "", "a system message, sent first")
	f.StringVarP(&fl.file, "file", "f", "", `job request or chat request JSON file ("-": stdin)`)
	f.IntVar(&fl.maxTokens, "max-tokens", 0, "max_tokens of the chat request")
	f.StringVar(&fl.priority, "priority", "", "high, normal (default) or low")
	f.StringVar(&fl.timeout, "timeout", "", "give up after this long from now, e.g. 90s or 10m (default worker.job_timeout)")
	f.StringVar(&fl.deadline, "deadline", "", "give up at this RFC 3339 time (instead of --timeout)")
	f.IntVar(&fl.maxAttempts, "max-attempts", 0, "upstream calls allowed, failovers included (default worker.max_attempts)")
	f.StringVar(&fl.key, "idempotency-key", "", "job id; resubmitting it gives the same job ([A-Za-z0-9_-]+)")
	f.StringToStringVar(&fl.metadata, "metadata", nil, "metadata key=value pairs, kept in the record")
	f.StringVar(&fl.callback, "callback-url", "", "URL that gets the finished job, signed")
	f.BoolVar(&fl.wait, "wait", false, "wait until the job finished and print the answer")
	f.DurationVar(&fl.waitTimeout, "wait-timeout", 10*time.Minute, "with --wait: give up waiting after this long (the job goes on)")
	f.BoolVar(&fl.asJSON, "json", false, "print the job record as JSON")
	return cmd
}

// jobRequest builds the POST /v1/jobs body from the flags, the file and stdin.
func (fl *submitFlags) jobRequest(cmd *cobra.Command, stdin io.Reader) ([]byte, error) {
	req := map[string]json.RawMessage{}
	chat := map[string]json.RawMessage{}
	if fl.file != "" {
		var b []byte
		var err error
		if fl.file == "-" {
			b, err = io.ReadAll(stdin)
		} else {
			b, err = os.ReadFile(fl.file)
		}
		if err != nil {
			return nil, fmt.Errorf("read --file: %w", err)
		}
		if err := json.Unmarshal(b, &req); err != nil {
			return nil, fmt.Errorf("--file %s: not a JSON object: %w", fl.file, err)
		}
		if _, ok := req["request"]; !ok { // a bare chat request
			chat, req = req, map[string]json.RawMessage{}
		} else if err := json.Unmarshal(req["request"], &chat); err != nil {
			return nil, fmt.Errorf("--file %s: request is not a JSON object: %w", fl.file, err)
		}
	}
	set := func(m map[string]json.RawMessage, k string, v any) {
		b, _ := json.Marshal(v)
		m[k] = b
	}
	msgs := fl.messages
	if len(msgs) == 0 && fl.file == "" {
		if f, ok := stdin.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				return nil, fmt.Errorf("no prompt: give --message, --file, or pipe a prompt on stdin")
			}
		}
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read the prompt from stdin: %w", err)
		}
		if strings.TrimSpace(string(b)) == "" {
			return nil, fmt.Errorf("no prompt: give --message, --file, or a prompt on stdin")
		}
		msgs = []string{string(b)}
	}
	if len(msgs) > 0 || fl.system != "" {
		var list []map[string]string
		if fl.system != "" {
			list = append(list, map[string]string{"role": "system", "content": fl.system})
		}
		if len(msgs) == 0 { // --system with a file: keep the file's messages after it
			var old []map[string]any
			json.Unmarshal(chat["messages"], &old)
			all := []any{list[0]}
			for _, m := range old {
				all = append(all, m)
			}
			set(chat, "messages", all)
		} else {
			for _, m := range msgs {
				list = append(list, map[string]string{"role": "user", "content": m})
			}
			set(chat, "messages", list)
		}
	}
	changed := cmd.Flags().Changed
	if fl.model != "" {
		set(chat, "model", fl.model)
	}
	if changed("max-tokens") {
		set(chat, "max_tokens", fl.maxTokens)
	}
	set(req, "request", chat)
	for _, o := range []struct {
		flag, field string
		v           any
	}{
		{"priority", "priority", fl.priority},
		{"timeout", "timeout", fl.timeout},
		{"deadline", "deadline", fl.deadline},
		{"max-attempts", "max_attempts", fl.maxAttempts},
		{"metadata", "metadata", fl.metadata},
		{"callback-url", "callback_url", fl.callback},
	} {
		if changed(o.flag) {
			set(req, o.field, o.v)
		}
	}
	if changed("deadline") && !changed("timeout") {
		delete(req, "timeout")
	}
	if changed("timeout") && !changed("deadline") {
		delete(req, "deadline")
	}
	return json.Marshal(req)
}

// submit submits job, prints what happened and, with --wait, the answer.
func (fl *submitFlags) submit(ctx context.Context, out io.Writer, jobs *gateway.Jobs, job *events.JobSubmitted) error {
	sub, err := jobs.Submit(ctx, job)
	if err != nil {
		return err
	}
	rec := sub.Record
	if !fl.wait {
		if fl.asJSON {
			return printRecord(out, rec, true)
		}
		if sub.Created {
			fmt.Fprintf(out, "job %s queued (priority %s)\n", rec.ID, job.Priority)
		} else {
			fmt.Fprintf(out, "job %s already exists (status %s)\n", rec.ID, rec.Status)
		}
		return nil
	}
	rec, err = waitJob(ctx, jobs, job.ID, fl.waitTimeout)
	if err != nil {
		return err
	}
	if !rec.Status.Terminal() {
		return fmt.Errorf("job %s is still %s after %s; see it with: switchboard jobs get %s --wait 60s",
			rec.ID, rec.Status, fl.waitTimeout, rec.ID)
	}
	if answer := answerText(rec.Response); answer != "" && !fl.asJSON && rec.Status == events.JobSucceeded {
		fmt.Fprintln(out, answer)
		return nil
	}
	if err := printRecord(out, rec, fl.asJSON); err != nil {
		return err
	}
	return finishedBadly(rec)
}
