package main

import (
	"context"
	"fmt"
	"io"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newServiceCmd(a *app) *cobra.Command {
	cmd := groupCmd("service", "List services (the endpoints that share one IP:port); export one to another network")
	cmd.Aliases = []string{"svc"}
	a.addClientFlags(cmd)
	cmd.AddCommand(newServiceExportCmd(a, true), newServiceExportCmd(a, false))
	cmd.AddCommand(&cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List services with their backends and 6-tuples",
		Long: `List services: (network, IP, port, protocol) with the endpoints that serve
it, in order of preference (active first, then highest priority), each
with its 6-tuple.`,
		Args: cobra.NoArgs,
		RunE: a.withClient(func(ctx context.Context, s *session, _ []string) error {
			return serviceLs(ctx, s)
		}),
	})
	return cmd
}

func serviceLs(ctx context.Context, s *session) error {
	svcs, err := s.cl.Services(ctx)
	if err != nil {
		return err
	}
	if svcs == nil {
		svcs = []mapper.Service{}
	}
	return s.out.print(svcs, func(w io.Writer) error { return writeServices(w, svcs) })
}

// newServiceExportCmd is "service export" (export) or "service unexport".
func newServiceExportCmd(a *app, export bool) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "export NETWORK IP:PORT[/tcp|/udp] --to NETWORK",
		Short: "Let another network reach one service of a network",
		Long: `Export one service of a network to another network: the other's
endpoints reach that IP, port and protocol (tcp when not given), and
nothing else of the network. The two subnets must not overlap. Every
server applies it at once. Ping of the service's IP is not exported.`,
		Example: "  daoli service export blue 10.1.0.5:5432 --to red",
		Args:    exactArgs("NETWORK", "IP:PORT"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			spec, err := mapper.ParseExportSpec(args[1], to)
			if err != nil {
				return err
			}
			change, verb, prep := s.cl.ExportService, "exported", "to"
			if !export {
				change, verb, prep = s.cl.UnexportService, "unexported", "from"
			}
			n, err := change(ctx, args[0], spec)
			if err != nil {
				return err
			}
			return s.out.print(n, func(w io.Writer) error {
				where := "every network"
				if to != "" {
					where = to
				}
				_, err := fmt.Fprintf(w, "%s %s %s:%d/%s %s %s\n", verb, args[0], spec.IP, spec.Port, spec.Protocol, prep, where)
				return err
			})
		}),
	}
	if export {
		cmd.Flags().StringVar(&to, "to", "", "the network whose endpoints may reach the service (required)")
		cmd.MarkFlagRequired("to")
	} else {
		cmd.Use = "unexport NETWORK IP:PORT[/tcp|/udp] [--to NETWORK]"
		cmd.Short = "Stop exporting a service"
		cmd.Long = `Stop exporting a service of a network: to the network --to names, or to
every network. Flows open through the export end: the backend's server
drops their next packets.`
		cmd.Example = "  daoli service unexport blue 10.1.0.5:5432 --to red"
		cmd.Flags().StringVar(&to, "to", "", "the network to stop exporting to (default: every network)")
	}
	return cmd
}
