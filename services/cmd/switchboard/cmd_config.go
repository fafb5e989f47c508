package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/switchboard-llm/switchboard/services/internal/config"
)

func newConfigCmd(_ *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the configuration file",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate a config file: every problem with its file, line and field",
		Long: `Validate a config file the way every service does before it starts: YAML
syntax, unknown fields, types, ${ENV} references (which must be set) and every
value's range. Prints each problem as FILE:LINE: FIELD: MESSAGE and exits 1 if
there is any; prints a one-line summary and exits 0 otherwise.`,
		Example: "  switchboard config check switchboard.yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d endpoints)\n", args[0], len(cfg.Endpoints))
			return nil
		},
	})
	return cmd
}
