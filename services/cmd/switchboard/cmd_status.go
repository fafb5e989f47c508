package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/endpointkv"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every endpoint's health, breaker, latency, error rate and last error",
		Long: `Show the state the evaluator keeps for every endpoint (the KV bucket
switchboard-endpoints): health (unknown, healthy, degraded, unhealthy), the
circuit breaker (closed, open with the time left, half_open with its trial
slots), the latency EWMA, the error rate of requests over breaker.error_rate_window
with the number of requests in it, the last error and how long ago, and since
when the health or breaker is what it is. NOTES shows an operator's override
(drained, forced open or closed) and a throttle (a 429's Retry-After).

With --json it prints the records themselves (a JSON array), as the evaluator
stores them.`,
		Example: `  switchboard status --config switchboard.yaml
  switchboard status --nats-url nats://127.0.0.1:4222 --json | jq '.[] | {endpoint, health, breaker}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withNATS(cmd.Context(), "status", func(ctx context.Context, cfg *config.Config, js jetstream.JetStream) error {
				return status(ctx, cmd.OutOrStdout(), cfg, js, asJSON)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the records as JSON")
	return cmd
}

// status prints every endpoint record as a table or as JSON.
func status(ctx context.Context, out io.Writer, cfg *config.Config, js jetstream.JetStream, asJSON bool) error {
	store, err := endpointkv.Open(ctx, js)
	if err != nil {
		return err
	}
	records, err := store.List(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		if records == nil {
			records = []events.EndpointState{}
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(records)
	}
	if len(records) == 0 {
		fmt.Fprintln(out, "no endpoint records yet (is an evaluator running?)")
		return nil
	}
	return printStatus(out, state.SettingsFrom(cfg), records, time.Now())
}

// printStatus prints the status table.
func printStatus(out io.Writer, s state.Settings, records []events.EndpointState, now time.Time) error {
	sort.Slice(records, func(i, j int) bool { return records[i].Endpoint < records[j].Endpoint })
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tHEALTH\tBREAKER\tLATENCY\tERROR RATE\tLAST ERROR\tSINCE\tNOTES")
	for _, st := range records {
		latency := "-"
		if st.LatencyEWMAMS > 0 {
			latency = fmt.Sprintf("%.0fms", st.LatencyEWMAMS)
		}
		rate := "-"
		if r, n := state.ErrorRate(s, st, now); n > 0 {
			rate = fmt.Sprintf("%.0f%% of %d", r*100, n)
		}
		lastErr := "-"
		if e := st.LastError; e != nil {
			lastErr = string(e.Class)
			if e.Message != "" {
				lastErr += ": " + truncate(e.Message, 40)
			}
			lastErr += " (" + ago(now, e.At) + ")"
		}
		since := st.HealthSince
		if st.BreakerSince.After(since) {
			since = st.BreakerSince
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", st.Endpoint, st.Health, breakerText(s, st, now),
			latency, rate, lastErr, ago(now, since), notes(st, now))
	}
	return tw.Flush()
}

func breakerText(s state.Settings, st events.EndpointState, now time.Time) string {
	switch st.Breaker {
	case events.BreakerOpen:
		if st.OpenUntil != nil {
			if left := st.OpenUntil.Sub(now); left > 0 {
				return fmt.Sprintf("open (%s left)", round(left))
			}
			return "open (half-opening)"
		}
	case events.BreakerHalfOpen:
		if h := st.HalfOpen; h != nil {
			return fmt.Sprintf("half_open (%d/%d ok, %d trying)", h.Successes, s.Breaker.HalfOpenRequests, len(h.Leases))
		}
	}
	return string(st.Breaker)
}

func notes(st events.EndpointState, now time.Time) string {
	var n []string
	switch st.Override {
	case events.OverrideDrain:
		n = append(n, "drained")
	case events.OverrideForceOpen:
		n = append(n, "forced open")
	case events.OverrideForceClosed:
		n = append(n, "forced closed")
	}
	if st.Override != events.OverrideNone && st.OverrideReason != "" {
		n[len(n)-1] += ": " + truncate(st.OverrideReason, 30)
	}
	if t := st.ThrottledUntil; t != nil && t.After(now) {
		n = append(n, "throttled for "+round(t.Sub(now)).String())
	}
	if len(n) == 0 {
		return "-"
	}
	return strings.Join(n, "; ")
}

// ago says how long before now t was, e.g. "3m12s ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	if d < 0 {
		return "just now"
	}
	return round(d).String() + " ago"
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute)
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func newWatchCmd(g *globals) *cobra.Command {
	var (
		asJSON bool
		since  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "watch [ENDPOINT...]",
		Short: "Print endpoint status changes as they happen",
		Long: `Print every switchboard.endpoint.status_changed.v1 event from the
SWITCHBOARD_STATUS stream as it is published: what changed (breaker, health,
throttle, override: from -> to) and why (the probe or request outcome that
caused it, with its error class and message; the timer; an operator).

It starts with changes from now on; --since 1h replays the last hour first.
Name endpoints to watch only those. --json prints each event (the CloudEvent,
one per line) instead. It runs until interrupted.`,
		Example: `  switchboard watch
  12:00:01 flaky breaker closed -> open (probe health fail http_5xx: "HTTP 503") health healthy -> unhealthy

  switchboard watch --since 1h flaky
  switchboard watch --json | jq -c '.data | {endpoint, breaker, health}'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if err := events.CheckName("endpoint", a); err != nil {
					return err
				}
			}
			if since < 0 {
				return fmt.Errorf("--since must be positive, got %s", since)
			}
			return g.withNATS(cmd.Context(), "watch", func(ctx context.Context, _ *config.Config, js jetstream.JetStream) error {
				return watch(ctx, js, cmd.OutOrStdout(), args, since, asJSON)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as a JSON line")
	cmd.Flags().DurationVar(&since, "since", 0, "first replay the changes of this long ago (e.g. 1h)")
	return cmd
}

// watch prints status changes until ctx ends.
func watch(ctx context.Context, js jetstream.JetStream, out io.Writer, endpoints []string, since time.Duration, asJSON bool) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectStatusAll}, DeliverPolicy: jetstream.DeliverNewPolicy}
	if len(endpoints) > 0 {
		cfg.FilterSubjects = nil
		for _, ep := range endpoints {
			cfg.FilterSubjects = append(cfg.FilterSubjects, events.StatusSubject(ep))
		}
	}
	if since > 0 {
		start := time.Now().Add(-since)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamStatus, cfg)
	if err != nil {
		return fmt.Errorf("watch %s: %w", events.StreamStatus, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("watch %s: %w", events.StreamStatus, err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("watch %s: %w", events.StreamStatus, err)
		}
		if asJSON {
			fmt.Fprintln(out, strings.TrimSpace(string(m.Data())))
			continue
		}
		env, err := events.Decode(m.Data())
		if err != nil {
			fmt.Fprintf(out, "undecodable status event on %s: %v\n", m.Subject(), err)
			continue
		}
		if c, ok := env.Data.(*events.StatusChanged); ok {
			fmt.Fprintln(out, changeLine(c))
		}
	}
}

// changeLine is one status change in words, e.g.
// 12:00:01 flaky breaker closed -> open (probe health fail http_5xx: "HTTP 503") health healthy -> unhealthy
func changeLine(c *events.StatusChanged) string {
	var parts []string
	if t := c.Breaker; t != nil {
		parts = append(parts, "breaker "+t.From+" -> "+t.To)
	}
	if t := c.Health; t != nil {
		parts = append(parts, "health "+t.From+" -> "+t.To)
	}
	if t := c.Throttle; t != nil {
		parts = append(parts, "throttle "+throttleText(t.From)+" -> "+throttleText(t.To))
	}
	if t := c.Override; t != nil {
		parts = append(parts, "override "+t.From+" -> "+t.To)
	}
	if len(parts) == 0 {
		parts = append(parts, "no change")
	}
	parts[0] += " (" + causeText(c.Cause) + ")"
	return c.At.Local().Format("15:04:05") + " " + c.Endpoint + " " + strings.Join(parts, " ")
}

func throttleText(t *time.Time) string {
	if t == nil {
		return "none"
	}
	return "until " + t.Local().Format("15:04:05")
}

func causeText(c events.Cause) string {
	var b strings.Builder
	switch c.Kind {
	case events.CauseProbe, events.CauseOutcome:
		if c.Kind == events.CauseProbe {
			b.WriteString("probe")
			if c.ProbeKind != "" {
				b.WriteString(" " + string(c.ProbeKind))
			}
		} else {
			b.WriteString("request")
		}
		if c.Outcome != "" {
			b.WriteString(" " + c.Outcome)
		}
		if c.ErrorClass != "" {
			b.WriteString(" " + string(c.ErrorClass))
		}
		if c.Error != "" {
			fmt.Fprintf(&b, ": %q", truncate(c.Error, 80))
		}
	case events.CauseQuota:
		b.WriteString("429 on quota-group member " + c.Endpoint)
	case events.CauseOperator:
		b.WriteString("operator")
		if who, ok := strings.CutPrefix(c.Source, "/operator/"); ok {
			b.WriteString(" " + who)
		}
		b.WriteString(": " + strings.TrimPrefix(c.Reason, "operator: "))
	default:
		b.WriteString(string(c.Kind) + ": " + c.Reason)
	}
	return b.String()
}
