package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newEndpointCmd(a *app) *cobra.Command {
	cmd := groupCmd("endpoint", "Attach, inspect, move and remove endpoints (containers' attachments)")
	cmd.Aliases = []string{"ep"}
	a.addClientFlags(cmd)
	cmd.AddCommand(
		newEndpointAddCmd(a),
		newEndpointLsCmd(a),
		newEndpointShowCmd(a),
		newEndpointRmCmd(a),
		newEndpointMoveCmd(a),
		newEndpointPublishCmd(a),
		newEndpointStateCmd(a, mapper.Down),
		newEndpointStateCmd(a, mapper.Active),
	)
	return cmd
}

// endpointAddFlags are the flags of "endpoint add".
type endpointAddFlags struct {
	network, ip, mac, name, server, iface string
	owner                                 string
	ports, published                      []string
	mode                                  string
	priority                              uint16
}

// spec parses the flags into an EndpointSpec.
func (f *endpointAddFlags) spec() (mapper.EndpointSpec, error) {
	spec := mapper.EndpointSpec{
		Name: f.name, Owner: f.owner, Network: f.network, Server: f.server, Interface: f.iface, Priority: f.priority,
	}
	var err error
	switch {
	case f.ip == "" && f.owner == "":
		return mapper.EndpointSpec{}, errors.New("--ip: missing; name the address, or an --owner that gets its claimed or a free one")
	case f.ip != "":
		if spec.IP, err = parseAddrFlag("ip", f.ip); err != nil {
			return mapper.EndpointSpec{}, err
		}
	}
	if f.mac != "" {
		if spec.MAC, err = parseMACFlag("mac", f.mac); err != nil {
			return mapper.EndpointSpec{}, err
		}
	}
	if spec.Ports, err = parsePortsFlag("port", f.ports); err != nil {
		return mapper.EndpointSpec{}, err
	}
	if spec.Mode, err = parseModeFlag("mode", f.mode); err != nil {
		return mapper.EndpointSpec{}, err
	}
	if spec.Published, err = parsePublishedFlag("publish", f.published); err != nil {
		return mapper.EndpointSpec{}, err
	}
	return spec, nil
}

func newEndpointAddCmd(a *app) *cobra.Command {
	var f endpointAddFlags
	var file string
	var cmd *cobra.Command
	cmd = &cobra.Command{
		Use:   "add (--network NET (--ip IP | --owner OWNER) --server NAME [--port 80/tcp...] | -f FILE) [flags]",
		Short: "Attach an endpoint: a container's identity in a network, and where it runs",
		Long: `Attach an endpoint: the identity a container sees (network, IP, MAC,
ports) and where it runs (server, host-side interface). The mapper gives
it a wire block on the server (its ServerPorts) and an identity block.

Endpoints of one network may share an IP: those that serve the same
IP:port form a service, spread over its backends in balance mode or sent
to the active one of highest priority in failover mode. All backends of a
service must agree on the mode.

With --owner, the address is the owner's: the one it claimed before, else
--ip, else the network's first free address, and no endpoint of another
owner may use it (daoli network claims lists them).

With -f FILE ("-": standard input), the endpoints come from a JSON array
of endpoint specs, as the API takes them (docs/api.md), at most 10000:
all are created in one transaction, or, on any error, none, and the
error names the one at fault as endpoints[i].`,
		Example: `  daoli endpoint add --network blue --ip 10.1.0.5 --server node1 --port 80/tcp --name web-1
  daoli endpoint add --network blue --ip 10.1.0.9 --server node2 --port 5432 --mode failover --priority 10
  daoli endpoint add --network blue --owner pod:shop/db-0 --server node1 --port 5432
  daoli endpoint add -f endpoints.json`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error {
			var set, missing []string
			cmd.Flags().VisitAll(func(fl *pflag.Flag) {
				switch {
				case fl.Name == "file" || fl.Name == "help" || cmd.InheritedFlags().Lookup(fl.Name) != nil:
				case fl.Changed:
					set = append(set, "--"+fl.Name)
				case fl.Name == "network" || fl.Name == "server":
					missing = append(missing, `"`+fl.Name+`"`)
				}
			})
			switch {
			case file != "" && len(set) > 0:
				return fmt.Errorf("-f %s: the endpoints come from the file; leave out %s", file, strings.Join(set, ", "))
			case file == "" && len(missing) > 0:
				return fmt.Errorf("required flag(s) %s not set", strings.Join(missing, ", "))
			}
			return nil
		},
		RunE: a.withClient(func(ctx context.Context, s *session, _ []string) error {
			if file != "" {
				return endpointAddFile(ctx, s, cmd.InOrStdin(), file)
			}
			spec, err := f.spec()
			if err != nil {
				return err
			}
			return endpointAdd(ctx, s, spec)
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&f.network, "network", "", "the network to attach to (required)")
	fl.StringVar(&f.ip, "ip", "", "the IP the container has, inside the network's subnet (required without --owner)")
	fl.StringVar(&f.owner, "owner", "", "who the address belongs to, such as pod:NAMESPACE/NAME: it keeps the address for its next endpoints")
	fl.StringVar(&f.mac, "mac", "", "the MAC the container has (default: a generated one)")
	fl.StringVar(&f.name, "name", "", "a name to refer to the endpoint by, instead of its ID")
	fl.StringVar(&f.server, "server", "", "the server the container runs on (required)")
	fl.StringVar(&f.iface, "interface", "", "the container's host-side interface (veth)")
	fl.StringSliceVar(&f.ports, "port", nil, "a port served, as PORT[/tcp|/udp]; repeat or separate with commas for more")
	fl.StringVar(&f.mode, "mode", string(mapper.Balance), "how a service spreads flows over its backends: balance or failover")
	fl.Uint16Var(&f.priority, "priority", 0, "preference among failover backends; the highest active one gets the traffic")
	fl.StringSliceVarP(&f.published, "publish", "p", nil, "publish a port to clients outside the cluster on every server, HOSTPORT:PORT[/tcp|/udp]")
	fl.StringVarP(&file, "file", "f", "", "create the endpoints of this JSON file (-: standard input) in one transaction, instead of one from the flags")
	return cmd
}

// endpointAddFile creates the endpoints of the JSON file in one batch.
func endpointAddFile(ctx context.Context, s *session, stdin io.Reader, file string) error {
	r := stdin
	if file != "-" {
		fh, err := os.Open(file)
		if err != nil {
			return fmt.Errorf("-f: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	specs, err := mapper.DecodeBatch(r)
	if err != nil {
		return fmt.Errorf("-f %s: %w", file, err)
	}
	es, err := s.cl.CreateEndpoints(ctx, specs)
	if err != nil {
		return err
	}
	return printList(s, es, sortEndpoints, writeEndpoints)
}

func endpointAdd(ctx context.Context, s *session, spec mapper.EndpointSpec) error {
	e, err := s.cl.CreateEndpoint(ctx, spec)
	if err != nil {
		return err
	}
	return s.out.print(e, func(w io.Writer) error { return writeEndpoints(w, []mapper.Endpoint{e}) })
}

func newEndpointLsCmd(a *app) *cobra.Command {
	var network, server string
	cmd := &cobra.Command{
		Use:     "ls [--network NET] [--server NAME]",
		Aliases: []string{"list"},
		Short:   "List endpoints",
		Args:    cobra.NoArgs,
		RunE: a.withClient(func(ctx context.Context, s *session, _ []string) error {
			return endpointLs(ctx, s, network, server)
		}),
	}
	cmd.Flags().StringVar(&network, "network", "", "only the endpoints of this network")
	cmd.Flags().StringVar(&server, "server", "", "only the endpoints on this server")
	return cmd
}

func endpointLs(ctx context.Context, s *session, network, server string) error {
	es, err := s.cl.Endpoints(ctx, network, server)
	if err != nil {
		return err
	}
	return printList(s, es, sortEndpoints, writeEndpoints)
}

func newEndpointShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "show ID|NAME",
		Aliases: []string{"inspect"},
		Short:   "Show an endpoint and its 6-tuples",
		Long: `Show an endpoint and its 6-tuples, one per port it serves:
(ServerMAC, ServerIP, ServerPort; MAC, IP, Port). The left half says
where it runs, the right half who it is.`,
		Args: exactArgs("ID|NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return endpointShow(ctx, s, args[0])
		}),
	}
}

func endpointShow(ctx context.Context, s *session, ref string) error {
	d, err := s.cl.Endpoint(ctx, ref)
	if err != nil {
		return err
	}
	return printEndpointDetail(s.out, d)
}

func printEndpointDetail(out *output, d mapper.EndpointDetail) error {
	if d.SixTuples == nil {
		d.SixTuples = []mapper.SixTuple{}
	}
	return out.print(d, func(w io.Writer) error { return writeEndpointDetail(w, d) })
}

func newEndpointRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "rm ID|NAME...",
		Aliases: []string{"remove"},
		Short:   "Remove endpoints and free their blocks",
		Args:    minArgs("ID|NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return endpointRm(ctx, s, args)
		}),
	}
}

// endpointRm removes each endpoint, going on past failures. It prints the
// references removed, or with -o json the endpoints as they were.
func endpointRm(ctx context.Context, s *session, refs []string) error {
	removed := []mapper.Endpoint{}
	err := removeEach(s, refs, func(ref string) error {
		e, err := s.cl.DeleteEndpoint(ctx, ref)
		if err == nil {
			removed = append(removed, e)
		}
		return err
	})
	if s.out.format == formatJSON {
		err = errors.Join(err, writeJSON(s.out.w, removed))
	}
	return err
}

func newEndpointMoveCmd(a *app) *cobra.Command {
	var to, iface string
	cmd := &cobra.Command{
		Use:   "move ID|NAME --to SERVER [--interface IFACE]",
		Short: "Move an endpoint to another server, keeping its identity",
		Long: `Move an endpoint to another server. Its identity (network, IP, MAC,
ports, identity block) stays; it gets a wire block on the new server, so
only the server half of its 6-tuples changes. Prints the new 6-tuples.`,
		Example: "  daoli endpoint move web-1 --to node2 --interface veth-web1",
		Args:    exactArgs("ID|NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return endpointMove(ctx, s, args[0], to, iface)
		}),
	}
	cmd.Flags().StringVar(&to, "to", "", "the server to move to (required)")
	cmd.Flags().StringVar(&iface, "interface", "", "the host-side interface on the new server")
	cmd.MarkFlagRequired("to")
	return cmd
}

func endpointMove(ctx context.Context, s *session, ref, to, iface string) error {
	e, err := s.cl.MoveEndpoint(ctx, ref, to, iface)
	if err != nil {
		return err
	}
	d, err := s.cl.Endpoint(ctx, itoa(e.ID))
	if err != nil {
		return fmt.Errorf("moved endpoint %s to %s, but reading it back: %w", ref, to, err)
	}
	return printEndpointDetail(s.out, d)
}

func newEndpointPublishCmd(a *app) *cobra.Command {
	var none bool
	cmd := &cobra.Command{
		Use:   "publish ID|NAME HOSTPORT:PORT[/tcp|/udp]... | --none",
		Short: "Publish ports of an endpoint to clients outside the cluster, on every server",
		Long: `Publish ports of an endpoint: a client outside the cluster that dials
any server's address at HOSTPORT reaches the service the endpoint serves
on PORT (balanced or failed over, as inside the cluster), and the backend
sees the client's own address. The list replaces what the endpoint
published; --none clears it. A host port leads to one service: the
endpoints of that service (replicas, a backup) may all publish it, and
should, so that it stays published when one of them is removed.`,
		Example: `  daoli endpoint publish web-1 8080:80
  daoli endpoint publish dns-1 5353:53/udp 8053:53/tcp
  daoli endpoint publish web-1 --none`,
		Args: cobra.MinimumNArgs(1),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			switch {
			case none && len(args) > 1:
				return errors.New("publish: --none and ports to publish: give one or the other")
			case !none && len(args) == 1:
				return errors.New("publish: no ports: give HOSTPORT:PORT[/tcp|/udp]..., or --none to publish none")
			}
			var ps []mapper.PublishedPort
			for _, a := range args[1:] {
				p, err := mapper.ParsePublishedPort(a)
				if err != nil {
					return err
				}
				ps = append(ps, p)
			}
			if _, err := s.cl.SetPublished(ctx, args[0], ps); err != nil {
				return err
			}
			d, err := s.cl.Endpoint(ctx, args[0])
			if err != nil {
				return err
			}
			return printEndpointDetail(s.out, d)
		}),
	}
	cmd.Flags().BoolVar(&none, "none", false, "publish no port")
	return cmd
}

// newEndpointStateCmd returns "endpoint down" or "endpoint up".
func newEndpointStateCmd(a *app, state mapper.State) *cobra.Command {
	use, short := "down", "Mark an endpoint down: new flows avoid it"
	if state == mapper.Active {
		use, short = "up", "Mark an endpoint active: it takes new flows again"
	}
	return &cobra.Command{
		Use:   use + " ID|NAME",
		Short: short,
		Args:  exactArgs("ID|NAME"),
		RunE: a.withClient(func(ctx context.Context, s *session, args []string) error {
			return endpointSetState(ctx, s, args[0], state)
		}),
	}
}

func endpointSetState(ctx context.Context, s *session, ref string, state mapper.State) error {
	e, err := s.cl.SetEndpointState(ctx, ref, mapper.StateRequest{State: state})
	if err != nil {
		return err
	}
	return s.out.print(e, func(w io.Writer) error { return writeEndpoints(w, []mapper.Endpoint{e}) })
}
