package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// app holds what every command shares: where output goes, the process
// environment and the values of the client flags. It is built once per
// run by newRootCmd; tests build their own.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	client         clientFlags
}

// newRootCmd returns the daoli command tree writing to stdout and stderr
// and reading the environment through getenv.
func newRootCmd(stdout, stderr io.Writer, getenv func(string) string) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	root := &cobra.Command{
		Use:   "daoli",
		Short: "Container network virtualizer: identity (MAC, IP, ports) decoupled from location",
		Long: `daoli gives every container a network identity (MAC, IP, ports) that never
changes wherever it runs, and maps it to its location (server, ServerPort)
in the kernel of each server.

"daoli mapper" runs the registry; the other commands talk to it over HTTP.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          help,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (see '%s --help')", name(cmd), err, cmd.CommandPath())
	})
	root.AddCommand(
		newMapperCmd(a),
		newCACmd(a),
		newNetworkCmd(a),
		newServerCmd(a),
		newEndpointCmd(a),
		newServiceCmd(a),
		newWatchCmd(a),
		newAgentCmd(a),
		newAttachCmd(a),
		newDetachCmd(a),
		newMoveCmd(a),
		newStatusCmd(a),
		newAppCmd(a),
		newDemoCmd(a),
		newDockerPluginCmd(a),
		newHealthcheckCmd(a),
		newVersionCmd(a),
	)
	return root
}

// name is the command's path without the root, as errors show it after
// "daoli: ".
func name(cmd *cobra.Command) string {
	if !cmd.HasParent() {
		return cmd.Name()
	}
	_, path, _ := strings.Cut(cmd.CommandPath(), " ")
	return path
}

// groupCmd returns a command that only holds subcommands.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE:  help,
	}
}

// help is the RunE of commands that only hold subcommands. Being
// runnable, with cobra.NoArgs, makes an unknown subcommand an error
// rather than a request for help.
func help(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// exactArgs wants one positional argument per name.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return fmt.Errorf("%s: want %s, got %d arguments", name(cmd), strings.Join(names, " "), len(args))
		}
		return nil
	}
}

// minArgs wants at least one positional argument.
func minArgs(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("%s: want one or more %s", name(cmd), what)
		}
		return nil
	}
}
