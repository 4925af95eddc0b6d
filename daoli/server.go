package main

import (
	"context"
	"io"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newServerCmd(a *app) *cobra.Command {
	cmd := groupCmd("server", "Register, list and remove servers (hosts)")
	a.addClientFlags(cmd)
	cmd.AddCommand(newServerAddCmd(a), newServerLsCmd(a), newServerRmCmd(a))
	return cmd
}

// serverAddFlags are the flags of "server add".
type serverAddFlags struct {
	ips    []string
	mac    string
	uplink string
}

// spec parses the flags into a ServerSpec for the server name.
func (f *serverAddFlags) spec(name string) (mapper.ServerSpec, error) {
	spec := mapper.ServerSpec{Name: name, Uplink: f.uplink}
	var err error
	if spec.IPs, err = parseAddrsFlag("ip", f.ips); err != nil {
		return mapper.ServerSpec{}, err
	}
	if spec.MAC, err = parseMACFlag("mac", f.mac); err != nil {
		return mapper.ServerSpec{}, err
	}
	return spec, nil
}

func newServerAddCmd(a *app) *cobra.Command {
	var f serverAddFlags
	cmd := &cobra.Command{
		Use:   "add NAME --ip IP [--ip IP...] --mac MAC [--uplink IFACE]",
		Short: "Register a server, or update one",
		Long: `Register a server: its locator addresses (ServerIP, routable in the
physical network) and the MAC of its uplink (ServerMAC). Each locator
address carries its own space of wire blocks; give a server more of them
to run more endpoints. Adding a server that exists updates it.`,
		Example: "  daoli server add node1 --ip 192.168.0.11 --mac 02:00:c0:a8:00:0b --uplink eth0",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			spec, err := f.spec(args[0])
			if err != nil {
				return err
			}
			return serverAdd(ctx, s, spec)
		}),
	}
	cmd.Flags().StringSliceVar(&f.ips, "ip", nil, "a locator address (ServerIP); repeat or separate with commas for more (required)")
	cmd.Flags().StringVar(&f.mac, "mac", "", "the uplink's MAC (ServerMAC) (required)")
	cmd.Flags().StringVar(&f.uplink, "uplink", "", "the uplink interface, such as eth0")
	cmd.MarkFlagRequired("ip")
	cmd.MarkFlagRequired("mac")
	return cmd
}

func serverAdd(ctx context.Context, s *session, spec mapper.ServerSpec) error {
	srv, err := s.cl.RegisterServer(ctx, spec)
	if err != nil {
		return err
	}
	return s.out.print(srv, func(w io.Writer) error { return writeServers(w, []mapper.Server{srv}) })
}

func newServerLsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the servers",
		Args:    cobra.NoArgs,
		RunE: a.withClient(func(ctx context.Context, s *session, _ []string) error {
			return serverLs(ctx, s)
		}),
	}
}

func serverLs(ctx context.Context, s *session) error {
	ss, err := s.cl.Servers(ctx)
	if err != nil {
		return err
	}
	return printList(s, ss, sortServers, writeServers)
}

func newServerRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove servers that run no endpoint",
		Args:    minArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return serverRm(ctx, s, args)
		}),
	}
}

// serverRm removes each server, going on past failures; it prints the
// names removed (nothing with -o json: the API answers with no body).
func serverRm(ctx context.Context, s *session, names []string) error {
	return removeEach(s, names, func(name string) error { return s.cl.DeleteServer(ctx, name) })
}
