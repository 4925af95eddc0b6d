package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

// agentCmdFlags are the flags shared by commands that talk to an agent.
type agentCmdFlags struct {
	server, runDir string
	timeout        time.Duration
}

// addAgentFlags adds the flag naming the agent's server (serverFlag),
// --run-dir, --timeout and -o. With required, serverFlag has no default;
// otherwise it defaults to this host's name.
func (a *app) addAgentFlags(cmd *cobra.Command, f *agentCmdFlags, serverFlag, serverHelp string, required bool) {
	def := ""
	if !required {
		def, _ = os.Hostname()
	}
	f.runDir = a.runDirDefault()
	fl := cmd.Flags()
	fl.StringVar(&f.server, serverFlag, def, serverHelp)
	if required {
		cmd.MarkFlagRequired(serverFlag)
	}
	fl.StringVar(&f.runDir, "run-dir", f.runDir, "directory of the agents' sockets (default from $"+envRunDir+")")
	fl.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	a.addOutputFlag(cmd)
}

// agentRun adapts fn to a cobra RunE with the agent's client and output.
func (a *app) agentRun(f *agentCmdFlags, fn func(ctx context.Context, cl *agent.Client, out *output, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		out, err := newOutput(a.stdout, a.client.output)
		if err != nil {
			return err
		}
		cl, err := agentClient(f.runDir, f.server)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
		defer cancel()
		return fn(ctx, cl, out, args)
	}
}

func newAttachCmd(a *app) *cobra.Command {
	var (
		af            agentCmdFlags
		netns, ifname string
		ep            endpointAddFlags
	)
	cmd := &cobra.Command{
		Use:   "attach --netns PATH --network NET (--ip IP | --owner OWNER) [--port 80/tcp...] [flags]",
		Short: "Attach a container to a network through this server's agent",
		Long: `Attach a container, named by its network namespace, to a network: the
agent registers the endpoint, creates a veth pair into the namespace, gives
the container's side the endpoint's MAC and IP and a default route through
the network's gateway, and programs the dataplane. On any error nothing is
left behind.`,
		Example: `  daoli attach --netns /proc/4242/ns/net --network blue --ip 10.1.0.5 --port 80/tcp --name web-1
  daoli attach --netns /run/netns/db2 --network blue --ip 10.1.0.9 --port 5432 --mode failover --priority 10`,
		Args: cobra.NoArgs,
		RunE: a.agentRun(&af, func(ctx context.Context, cl *agent.Client, out *output, _ []string) error {
			ep.server = af.server
			spec, err := ep.spec()
			if err != nil {
				return err
			}
			e, err := cl.Attach(ctx, agent.AttachRequest{
				Netns: netns, Ifname: ifname, Network: spec.Network, IP: spec.IP, MAC: spec.MAC,
				Name: spec.Name, Owner: spec.Owner, Ports: spec.Ports, Mode: spec.Mode, Priority: spec.Priority,
				Published: spec.Published,
			})
			if err != nil {
				return err
			}
			return out.print(e, func(w io.Writer) error { return writeEndpoints(w, []mapper.Endpoint{e}) })
		}),
	}
	a.addAgentFlags(cmd, &af, "server", "the server whose agent attaches (default: this host's name)", false)
	fl := cmd.Flags()
	fl.StringVar(&netns, "netns", "", "the container's network namespace: /proc/PID/ns/net or /run/netns/NAME (required)")
	fl.StringVar(&ifname, "ifname", "eth0", "interface name inside the container")
	fl.StringVar(&ep.network, "network", "", "network to attach to (required)")
	fl.StringVar(&ep.ip, "ip", "", "the container's IP in the network (required without --owner)")
	fl.StringVar(&ep.owner, "owner", "", "who the address belongs to, such as pod:NAMESPACE/NAME: it keeps the address for its next endpoints")
	fl.StringVar(&ep.mac, "mac", "", "the container's MAC (default: generated)")
	fl.StringVar(&ep.name, "name", "", "endpoint name")
	fl.StringArrayVar(&ep.ports, "port", nil, "a port it serves, PORT[/tcp|/udp]; repeat for more")
	fl.StringVar(&ep.mode, "mode", "balance", "balance or failover, for the services it serves")
	fl.Uint16Var(&ep.priority, "priority", 0, "failover priority: the active backend of highest priority serves")
	fl.StringArrayVarP(&ep.published, "publish", "p", nil, "publish a port to clients outside the cluster on every server, HOSTPORT:PORT[/tcp|/udp]; repeat for more")
	return cmd
}

func newDetachCmd(a *app) *cobra.Command {
	var af agentCmdFlags
	cmd := &cobra.Command{
		Use:   "detach ID|NAME",
		Short: "Detach an endpoint through its server's agent: remove it and its veth pair",
		Args:  exactArgs("ID|NAME"),
		RunE: a.agentRun(&af, func(ctx context.Context, cl *agent.Client, out *output, args []string) error {
			e, err := cl.Detach(ctx, agent.DetachRequest{Endpoint: args[0]})
			if err != nil {
				return err
			}
			return out.print(e, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "detached endpoint %d (%s)\n", e.ID, e.Ref())
				return err
			})
		}),
	}
	a.addAgentFlags(cmd, &af, "server", "the server the endpoint runs on (default: this host's name)", false)
	return cmd
}

func newMoveCmd(a *app) *cobra.Command {
	var (
		af            agentCmdFlags
		netns, ifname string
	)
	cmd := &cobra.Command{
		Use:   "move ID|NAME --to SERVER --netns PATH",
		Short: "Live-migrate an endpoint: re-attach its container's namespace through another server",
		Long: `Move an endpoint to another server while its container keeps running: the
agent of --to takes the endpoint (a wire block on its server), replaces the
container's interface by a veth into its own server with the same name,
MAC, IP and route, and programs its dataplane. The container's sockets stay
open; peers' flows follow as soon as their agents see the move.

(daoli endpoint move only re-records the location in the registry.)`,
		Example: `  daoli move web-1 --to server-b --netns /run/netns/web-1`,
		Args:    exactArgs("ID|NAME"),
		RunE: a.agentRun(&af, func(ctx context.Context, cl *agent.Client, out *output, args []string) error {
			e, err := cl.Move(ctx, agent.MoveRequest{Endpoint: args[0], Netns: netns, Ifname: ifname})
			if err != nil {
				return err
			}
			return out.print(e, func(w io.Writer) error { return writeEndpoints(w, []mapper.Endpoint{e}) })
		}),
	}
	a.addAgentFlags(cmd, &af, "to", "the server to move to (required)", true)
	fl := cmd.Flags()
	fl.StringVar(&netns, "netns", "", "the container's network namespace (required)")
	fl.StringVar(&ifname, "ifname", "eth0", "interface name inside the container")
	return cmd
}

func newStatusCmd(a *app) *cobra.Command {
	var af agentCmdFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show an agent's view: its endpoints, the revision it applied, dataplane counters",
		Args:  cobra.NoArgs,
		RunE: a.agentRun(&af, func(ctx context.Context, cl *agent.Client, out *output, _ []string) error {
			s, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			return out.print(s, func(w io.Writer) error {
				fmt.Fprintf(w, "Server:    %s %v\nRevision:  %d\n\n", s.Server, s.IPs, s.Revision)
				if err := writeEndpoints(w, s.Endpoints); err != nil {
					return err
				}
				t := newTable(w, "\nDROP REASON", "PACKETS")
				reasons := make([]string, 0, len(s.Drops))
				for r := range s.Drops {
					reasons = append(reasons, r)
				}
				sort.Strings(reasons)
				for _, r := range reasons {
					t.row(r, itoa(int64(s.Drops[r])))
				}
				return t.flush()
			})
		}),
	}
	a.addAgentFlags(cmd, &af, "server", "the server whose agent to ask (default: this host's name)", false)
	return cmd
}
