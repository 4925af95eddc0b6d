package main

import (
	"context"
	"io"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newNetworkCmd(a *app) *cobra.Command {
	cmd := groupCmd("network", "Create, list and remove virtual networks")
	a.addClientFlags(cmd)
	cmd.AddCommand(newNetworkCreateCmd(a), newNetworkLsCmd(a), newNetworkRmCmd(a))
	return cmd
}

// networkCreateFlags are the flags of "network create".
type networkCreateFlags struct {
	subnet, gateway string
}

// spec parses the flags into a NetworkSpec for the network name.
func (f *networkCreateFlags) spec(name string) (mapper.NetworkSpec, error) {
	spec := mapper.NetworkSpec{Name: name}
	var err error
	if spec.Subnet, err = parsePrefixFlag("subnet", f.subnet); err != nil {
		return mapper.NetworkSpec{}, err
	}
	if f.gateway != "" {
		if spec.Gateway, err = parseAddrFlag("gateway", f.gateway); err != nil {
			return mapper.NetworkSpec{}, err
		}
	}
	return spec, nil
}

func newNetworkCreateCmd(a *app) *cobra.Command {
	var f networkCreateFlags
	cmd := &cobra.Command{
		Use:   "create NAME --subnet CIDR [--gateway IP]",
		Short: "Create a virtual network",
		Long: `Create a virtual network. CIDRs of different networks may overlap: each
network is its own address space. The gateway defaults to the subnet's
first address.`,
		Example: "  daoli network create blue --subnet 10.1.0.0/24",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			spec, err := f.spec(args[0])
			if err != nil {
				return err
			}
			return networkCreate(ctx, s, spec)
		}),
	}
	cmd.Flags().StringVar(&f.subnet, "subnet", "", "the network's IPv4 CIDR, such as 10.1.0.0/24 (required)")
	cmd.Flags().StringVar(&f.gateway, "gateway", "", "the gateway address (default: the subnet's first address)")
	cmd.MarkFlagRequired("subnet")
	return cmd
}

func networkCreate(ctx context.Context, s *session, spec mapper.NetworkSpec) error {
	n, err := s.cl.CreateNetwork(ctx, spec)
	if err != nil {
		return err
	}
	return s.out.print(n, func(w io.Writer) error { return writeNetworks(w, []mapper.Network{n}) })
}

func newNetworkLsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the networks",
		Args:    cobra.NoArgs,
		RunE: a.withClient(func(ctx context.Context, s *session, _ []string) error {
			return networkLs(ctx, s)
		}),
	}
}

func networkLs(ctx context.Context, s *session) error {
	ns, err := s.cl.Networks(ctx)
	if err != nil {
		return err
	}
	return printList(s, ns, sortNetworks, writeNetworks)
}

func newNetworkRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove networks that no endpoint is attached to",
		Args:    minArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return networkRm(ctx, s, args)
		}),
	}
}

// networkRm removes each network, going on past failures; it prints the
// names removed (nothing with -o json: the API answers with no body).
func networkRm(ctx context.Context, s *session, names []string) error {
	return removeEach(s, names, func(name string) error { return s.cl.DeleteNetwork(ctx, name) })
}
