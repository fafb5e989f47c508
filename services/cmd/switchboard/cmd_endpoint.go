package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/events"
	"github.com/switchboard-llm/switchboard/services/evaluator"
	"github.com/switchboard-llm/switchboard/services/internal/config"
	"github.com/switchboard-llm/switchboard/services/internal/state"
)

func newEndpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "endpoint",
		Short: "Override an endpoint's routing: drain, undrain, open, close, reset",
		Long: `Operator overrides of an endpoint's state. Each command changes the endpoint's
record in KV by compare-and-set and publishes a status change (cause kind
operator, source /operator/<user>), so watchers and alerts see who did what.

  drain    take no new work; probes go on, so its health stays current
  open     force the breaker open: take no work (like drain, but reported as
           a breaker override)
  close    force the breaker closed: take work whatever the breaker says
           (a throttle from a 429 is still respected)
  undrain  remove any override (drain, open or close): back to automatic
  reset    forget everything: a fresh record (health unknown, breaker closed,
           counters zero, no throttle, no override)

The automatic breaker keeps running under an override; undrain shows it again.`,
		Example: `  switchboard endpoint drain relay-a --reason "provider maintenance 14:00-15:00"
  switchboard endpoint undrain relay-a
  switchboard endpoint close openai --reason "breaker flapping on a bad probe"
  switchboard endpoint reset openai`,
	}
	for _, c := range []struct {
		cmd   state.Command
		short string
	}{
		{state.CmdDrain, "Stop sending new work to an endpoint (probes go on)"},
		{state.CmdUndrain, "Remove any override (drain, open, close): back to automatic"},
		{state.CmdOpen, "Force an endpoint's breaker open: send it no work"},
		{state.CmdClose, "Force an endpoint's breaker closed: send it work whatever the breaker says"},
		{state.CmdReset, "Reset an endpoint's record: health unknown, breaker closed, counters zero"},
	} {
		cmd.AddCommand(newEndpointSubCmd(g, c.cmd, c.short))
	}
	return cmd
}

func newEndpointSubCmd(g *globals, command state.Command, short string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     string(command) + " NAME",
		Short:   short,
		Example: fmt.Sprintf("  switchboard endpoint %s relay-a --reason \"ticket OPS-123\"", command),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := events.CheckName("endpoint", name); err != nil {
				return err
			}
			source := "/operator/" + operatorName()
			var res evaluator.OperatorResult
			err := g.withNATS(cmd.Context(), "endpoint", func(ctx context.Context, cfg *config.Config, js jetstream.JetStream) error {
				var err error
				res, err = evaluator.Operate(ctx, js, state.SettingsFrom(cfg), name, command, reason, source, g.logger())
				return err
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			ch := res.Change
			if !ch.Changed() {
				if command == state.CmdReset {
					fmt.Fprintf(out, "%s: reset (counters cleared; health %s, breaker %s)\n", name, res.State.Health, res.State.Breaker)
				} else {
					fmt.Fprintf(out, "%s: no change (override already %s)\n", name, res.State.Override)
				}
				return nil
			}
			var parts []string
			for _, p := range []struct {
				what string
				t    *events.Transition
			}{{"override", ch.Override}, {"health", ch.Health}, {"breaker", ch.Breaker}} {
				if p.t != nil {
					parts = append(parts, fmt.Sprintf("%s %s -> %s", p.what, p.t.From, p.t.To))
				}
			}
			if ch.Throttle != nil {
				parts = append(parts, "throttle "+throttleText(ch.Throttle.From)+" -> "+throttleText(ch.Throttle.To))
			}
			fmt.Fprintf(out, "%s: %s (revision %d, by %s)\n", name, strings.Join(parts, ", "), res.State.Revision, source)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded in the record and the status change")
	return cmd
}

// operatorName names the person running the command, as a subject token.
func operatorName() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}
