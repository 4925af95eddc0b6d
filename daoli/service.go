package main

import (
	"context"
	"io"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newServiceCmd(a *app) *cobra.Command {
	cmd := groupCmd("service", "List services: the endpoints that share one IP:port")
	cmd.Aliases = []string{"svc"}
	a.addClientFlags(cmd)
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
