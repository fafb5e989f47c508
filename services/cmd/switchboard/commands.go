package main

import "github.com/spf13/cobra"

// subcommands lists every subcommand. Each lives in its own cmd_*.go file.
func subcommands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		newMockCmd(),
		newConfigCmd(g),
		newDevCmd(g),
		newProberCmd(g),
	}
}
