// Command switchboard is the one binary of Switchboard: a subcommand per
// service (prober, evaluator, worker, gateway), the whole system in one
// process (dev), the mock endpoint (mock) and the operator commands.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := execute(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "switchboard:", err)
		os.Exit(1)
	}
}

func execute(args []string) error {
	root := newRootCmd()
	root.SetArgs(args)
	return root.Execute()
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "switchboard",
		Short: "Keep LLM traffic alive when model endpoints fail",
		Long: `Switchboard probes OpenAI-compatible endpoints, keeps per-endpoint health and
circuit-breaker state in NATS JetStream, and runs chat jobs on the best healthy
endpoint, failing over when one breaks. Its services talk only over NATS.

Start with 'switchboard dev': the whole system in one process, on built-in
mock endpoints.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.register(root)
	for _, c := range subcommands(g) {
		root.AddCommand(c)
	}
	return root
}
