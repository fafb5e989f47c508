package main

import "github.com/spf13/cobra"

// subcommands lists every subcommand. Each lives in its own cmd_*.go file.
func subcommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		// The whole system, and a mock endpoint to run it against.
		newDevCmd(g),
		newMockCmd(),
		// One service each, for production.
		newProberCmd(g),
		newEvaluatorCmd(g),
		newWorkerCmd(g),
		newGatewayCmd(g),
		// Operators and users.
		newStatusCmd(g),
		newWatchCmd(g),
		newEndpointCmd(g),
		newSubmitCmd(g),
		newJobsCmd(g),
		newConfigCmd(g),
	}
}
