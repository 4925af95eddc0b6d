package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

// envRunDir names the environment variable that sets --run-dir's default:
// where agents put their sockets, <run-dir>/<server>.sock.
const envRunDir = "DAOLI_RUN_DIR"

type agentFlags struct {
	uplink, name, bpffs, runDir, metrics        string
	logLevel, logFormat                         string
	healthInterval                              time.Duration
	healthFailures                              int
	maxEndpoints, maxFlows, maxFlowsPerEndpoint int
}

func newAgentCmd(a *app) *cobra.Command {
	host, _ := os.Hostname()
	f := agentFlags{name: host, logLevel: "info", logFormat: "text", runDir: a.runDirDefault()}
	cmd := &cobra.Command{
		Use:   "agent --uplink IFACE [--name NAME] [flags]",
		Short: "Run a server's agent: register it, program its eBPF dataplane, attach containers",
		Long: `Run the agent of one server, as root, in the server's network namespace.

It registers the server with the mapper (its locator addresses are the
uplink's IPv4 addresses, its ServerMAC the uplink's MAC), follows the
registry and programs the eBPF dataplane to match, reserves the wire port
range on the server, and serves a local API on <run-dir>/<name>.sock for
"daoli attach", "daoli detach", "daoli move" and orchestrator hooks. When a
local container's veth disappears, its endpoint is marked down at once.

The dataplane's maps and programs are pinned under --bpffs (a bpf
filesystem): stopping or killing the agent leaves traffic flowing, and
the next agent adopts them and changes only what differs. While the
mapper is unreachable the agent keeps forwarding and catches up when it
returns.`,
		Example: `  daoli agent --uplink eth0 --mapper 10.0.0.1:9470
  ip netns exec server-a daoli agent --uplink up0 --name server-a --bpffs /sys/fs/bpf/daoli/server-a`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(a.stderr, f.logLevel, f.logFormat)
			if err != nil {
				return err
			}
			// A mapper that accepts connections and then hangs must not
			// stall the agent: bound the connect and the wait for a
			// response's headers (a watch sends them at once).
			cl, err := a.mapperClient(&http.Transport{
				DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				ResponseHeaderTimeout: 10 * time.Second,
				IdleConnTimeout:       time.Minute,
			})
			if err != nil {
				return err
			}
			if f.healthInterval < 0 || f.healthFailures < 1 {
				return badFlagf("health-interval", f.healthInterval.String(), "want 0 (off) or more, with --health-failures 1 or more")
			}
			if f.uplink == "" {
				return badFlagf("uplink", f.uplink, "missing; want the interface facing the physical network")
			}
			ag, err := agent.New(agent.Config{
				Mapper: cl, Name: f.name, Uplink: f.uplink, BPFFS: f.bpffs,
				RunDir: f.runDir, MetricsAddr: f.metrics, Logger: log,
				HealthInterval: f.healthInterval, HealthFailures: f.healthFailures,
				MaxEndpoints: f.maxEndpoints, MaxFlows: f.maxFlows, MaxFlowsPerEndpoint: f.maxFlowsPerEndpoint,
			})
			if err != nil {
				return err
			}
			return ag.Run(cmd.Context())
		},
	}
	a.addMapperFlag(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.uplink, "uplink", "", "interface facing the physical network (required)")
	fl.StringVar(&f.name, "name", f.name, "this server's name in the registry")
	fl.StringVar(&f.bpffs, "bpffs", "", "where to pin the dataplane, on a bpf filesystem (default /sys/fs/bpf/daoli/NAME)")
	fl.StringVar(&f.runDir, "run-dir", f.runDir, "directory of the agent's socket, NAME.sock (default from $"+envRunDir+")")
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9471")
	fl.DurationVar(&f.healthInterval, "health-interval", 0, "check local endpoints' TCP ports this often, from inside their containers (0: off)")
	fl.IntVar(&f.healthFailures, "health-failures", 3, "results in a row that mark an endpoint down, or back up")
	fl.IntVar(&f.maxEndpoints, "max-endpoints", 0, "endpoints of the cluster the dataplane holds (0: 16384); changing it needs the pinned maps removed")
	fl.IntVar(&f.maxFlows, "max-flows", 0, "flows with a local client conntrack holds (0: 32768)")
	fl.IntVar(&f.maxFlowsPerEndpoint, "max-flows-per-endpoint", 0, "flows one local container may hold; beyond it new flows are refused (0: --max-flows/8; -1: no limit)")
	fl.StringVar(&f.logLevel, "log-level", f.logLevel, "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", f.logFormat, "text or json (logs go to stderr)")
	return cmd
}

func (a *app) runDirDefault() string {
	if d := a.getenv(envRunDir); d != "" {
		return d
	}
	return "/run/daoli"
}

// addMapperFlag adds only --mapper, for commands that print nothing.
func (a *app) addMapperFlag(cmd *cobra.Command) {
	def := a.getenv(envMapper)
	if def == "" {
		def = mapper.DefaultAddr
	}
	cmd.Flags().StringVar(&a.client.mapper, "mapper", def, "mapper address, host:port or URL, or several separated by commas; $"+envMapper+" sets the default")
	a.addTLSFlags(cmd.Flags())
}

func newLogger(w interface{ Write([]byte) (int, error) }, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, badFlagf("log-level", level, "want debug, info, warn or error")
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, badFlagf("log-format", format, "want text or json")
}

// agentClient returns the client of the agent of server, found under
// --run-dir.
func agentClient(runDir, server string) (*agent.Client, error) {
	if server == "" {
		return nil, fmt.Errorf("--server: missing; want the server whose agent should act")
	}
	return agent.NewClient(agent.SocketPath(runDir, server)), nil
}
