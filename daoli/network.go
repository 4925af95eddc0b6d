package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newNetworkCmd(a *app) *cobra.Command {
	cmd := groupCmd("network", "Create, list, update and remove virtual networks")
	a.addClientFlags(cmd)
	cmd.AddCommand(newNetworkCreateCmd(a), newNetworkLsCmd(a), newNetworkUpdateCmd(a), newNetworkRmCmd(a),
		newNetworkClaimsCmd(a), newNetworkForgetCmd(a),
		newNetworkConnectCmd(a, true), newNetworkConnectCmd(a, false), newNetworkReachCmd(a))
	return cmd
}

// networkCreateFlags are the flags of "network create".
type networkCreateFlags struct {
	subnet, gateway, egress, groups string
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
	if f.egress != "" {
		if spec.Egress, err = parseEgressFlag(f.egress); err != nil {
			return mapper.NetworkSpec{}, err
		}
	}
	spec.Groups = parseGroupsFlag(f.groups)
	return spec, nil
}

// parseGroupsFlag splits --groups; "" is no group (nil).
func parseGroupsFlag(s string) []string {
	var groups []string
	for _, g := range strings.Split(s, ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	return groups
}

// groupsHelp describes --groups.
const groupsHelp = "groups the network is in, separated by commas: networks of one group reach each other's services"

// parseEgressFlag parses --egress.
func parseEgressFlag(s string) (mapper.Egress, error) {
	e, err := mapper.ParseEgress(s)
	if err != nil {
		return mapper.Egress{}, fmt.Errorf("--egress: %w", err)
	}
	return e, nil
}

// egressHelp describes --egress.
const egressHelp = "what outside every network its containers may reach, from their server's address: allow (anywhere), deny (nowhere) or CIDRs such as 203.0.113.0/24,198.51.100.0/24"

func newNetworkUpdateCmd(a *app) *cobra.Command {
	var egress, groups string
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:   "update NAME [--egress allow|deny|CIDR,...] [--groups GROUP,...]",
		Short: "Change a network's settings",
		Long: `Change a network's settings. --egress says which addresses outside every
network its containers may open connections to; --groups replaces the
groups the network is in ("" leaves them all). Every server applies the
change at once, to flows already open too.`,
		Example: "  daoli network update blue --egress 203.0.113.0/24\n  daoli network update blue --egress deny\n  daoli network update blue --groups prod",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			var u mapper.NetworkUpdate
			if cmd.Flags().Changed("egress") {
				e, err := parseEgressFlag(egress)
				if err != nil {
					return err
				}
				u.Egress = &e
			}
			if cmd.Flags().Changed("groups") {
				g := parseGroupsFlag(groups)
				if g == nil {
					g = []string{} // leave every group
				}
				u.Groups = &g
			}
			if u == (mapper.NetworkUpdate{}) {
				return errors.New("network update: nothing to change; give --egress or --groups")
			}
			n, err := s.cl.UpdateNetwork(ctx, args[0], u)
			if err != nil {
				return err
			}
			return s.out.print(n, func(w io.Writer) error { return writeNetworks(w, []mapper.Network{n}) })
		}),
	}
	cmd.Flags().StringVar(&egress, "egress", "", egressHelp)
	cmd.Flags().StringVar(&groups, "groups", "", groupsHelp)
	return cmd
}

func newNetworkCreateCmd(a *app) *cobra.Command {
	var f networkCreateFlags
	cmd := &cobra.Command{
		Use:   "create NAME --subnet CIDR [--gateway IP] [--egress allow|deny|CIDR,...] [--groups GROUP,...]",
		Short: "Create a virtual network",
		Long: `Create a virtual network. CIDRs of different networks may overlap: each
network is its own address space, isolated from the others (networks in
one group, or connected, reach each other and need disjoint subnets).
The gateway defaults to the subnet's first address. Its containers may
reach every address outside the networks (egress, from their server's
address) unless --egress says otherwise.`,
		Example: "  daoli network create blue --subnet 10.1.0.0/24\n  daoli network create red --subnet 10.2.0.0/24 --egress deny",
		Args:    exactArgs("NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			if f.egress == "" {
				return errors.New("--egress is empty; want allow, deny, or CIDRs")
			}
			spec, err := f.spec(args[0])
			if err != nil {
				return err
			}
			return networkCreate(ctx, s, spec)
		}),
	}
	cmd.Flags().StringVar(&f.subnet, "subnet", "", "the network's IPv4 CIDR, such as 10.1.0.0/24 (required)")
	cmd.Flags().StringVar(&f.gateway, "gateway", "", "the gateway address (default: the subnet's first address)")
	cmd.Flags().StringVar(&f.egress, "egress", "allow", egressHelp)
	cmd.Flags().StringVar(&f.groups, "groups", "", groupsHelp)
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

func newNetworkClaimsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "claims NETWORK",
		Short: "List the addresses the registry remembers for their owners",
		Long: `List a network's address claims: each owner (a pod, the service its
replicas declare, a container) that created an endpoint without naming an
address, or with one, keeps that IP (and MAC) for its next endpoints,
on any server. No other endpoint may use a claimed address.`,
		Args: exactArgs("NETWORK"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			cs, err := s.cl.Claims(ctx, args[0])
			if err != nil {
				return err
			}
			return printList(s, cs, func([]mapper.Claim) {}, writeClaims)
		}),
	}
}

func newNetworkForgetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "forget NETWORK OWNER",
		Short: "Release an owner's address claim",
		Long: `Release an owner's address claim: the address goes to the next endpoint
that needs one once no endpoint holds it. Endpoints of the owner keep
running; the owner's next endpoint gets a free address.`,
		Example: "  daoli network forget blue pod:shop/db-0",
		Args:    exactArgs("NETWORK", "OWNER"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			c, err := s.cl.Forget(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			return s.out.print(c, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "forgot %s: %s is free once no endpoint holds it\n", c.Owner, c.IP)
				return err
			})
		}),
	}
}

func writeClaims(w io.Writer, cs []mapper.Claim) error {
	t := newTable(w, "OWNER", "IP", "MAC", "USED")
	for _, c := range cs {
		t.row(c.Owner, c.IP.String(), c.MAC.String(), c.Used.Format(time.RFC3339))
	}
	return t.flush()
}

// newNetworkConnectCmd is "network connect" (connect) or "network
// disconnect".
func newNetworkConnectCmd(a *app, connect bool) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connect NETWORK NETWORK",
		Short: "Let two networks reach each other's services",
		Long: `Connect two networks: the endpoints of each reach every service of the
other, at its own IP and port. Their subnets must not overlap. Every
server applies it at once.`,
		Example: "  daoli network connect blue red",
		Args:    exactArgs("NETWORK", "NETWORK"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			change, verb := s.cl.ConnectNetworks, "connected"
			if !connect {
				change, verb = s.cl.DisconnectNetworks, "disconnected"
			}
			n, err := change(ctx, args[0], args[1])
			if err != nil {
				return err
			}
			return s.out.print(n, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "%s %s and %s\n", verb, args[0], args[1])
				return err
			})
		}),
	}
	if !connect {
		cmd.Use = "disconnect NETWORK NETWORK"
		cmd.Short = "Isolate two connected networks again"
		cmd.Long = `Disconnect two networks: each stops reaching the other's services. Flows
open between them end: the backend's server drops their next packets.`
		cmd.Example = "  daoli network disconnect blue red"
	}
	return cmd
}

func newNetworkReachCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "reach [NETWORK]",
		Short: "List which networks reach which services, and why",
		Long: `List, for each network, the networks whose services its endpoints reach
beyond its own: all of them (connected, or in a group with it) or the
services exported to it. With NETWORK, the rows where it reaches or is
reached.`,
		Args: cobra.MaximumNArgs(1),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			ns, err := s.cl.Networks(ctx)
			if err != nil {
				return err
			}
			rows := reachRows(ns)
			if len(args) == 1 {
				if !slices.ContainsFunc(ns, func(n mapper.Network) bool { return n.Name == args[0] }) {
					return fmt.Errorf("network %s: %w", args[0], mapper.ErrNotFound)
				}
				rows = slices.DeleteFunc(rows, func(r reachRow) bool { return r.Network != args[0] && r.Reaches != args[0] })
			}
			return printList(s, rows, func([]reachRow) {}, writeReach)
		}),
	}
}

// reachRow is one line of "network reach".
type reachRow struct {
	Network  string   `json:"network"`
	Reaches  string   `json:"reaches"`
	Services []string `json:"services,omitempty"` // empty: every service
	Because  string   `json:"because"`
}

func reachRows(ns []mapper.Network) []reachRow {
	byName := map[string]mapper.Network{}
	for _, n := range ns {
		byName[n.Name] = n
	}
	reach := mapper.ReachOf(ns)
	rows := []reachRow{}
	for _, n := range ns {
		for _, to := range reach.Full[n.Name] {
			because := "connected"
			if !slices.Contains(n.Connected, to) {
				for _, g := range n.Groups {
					if slices.Contains(byName[to].Groups, g) {
						because = "group " + g
						break
					}
				}
			}
			rows = append(rows, reachRow{Network: n.Name, Reaches: to, Because: because})
		}
		for to, es := range reach.Only[n.Name] {
			r := reachRow{Network: n.Name, Reaches: to, Because: "exported"}
			for _, e := range es {
				r.Services = append(r.Services, netip.AddrPortFrom(e.IP, e.Port).String()+"/"+string(e.Protocol))
			}
			rows = append(rows, r)
		}
	}
	slices.SortFunc(rows, func(a, b reachRow) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), cmp.Compare(a.Reaches, b.Reaches))
	})
	return rows
}

func writeReach(w io.Writer, rows []reachRow) error {
	t := newTable(w, "NETWORK", "REACHES", "SERVICES", "BECAUSE")
	for _, r := range rows {
		svcs := "all"
		if len(r.Services) > 0 {
			svcs = strings.Join(r.Services, ",")
		}
		t.row(r.Network, r.Reaches, svcs, r.Because)
	}
	return t.flush()
}
