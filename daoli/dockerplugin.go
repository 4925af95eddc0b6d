package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/swarmhook"
	"github.com/spf13/cobra"
)

type dockerPluginFlags struct {
	name, server, runDir, stateDir, dockerHost, socket string
	logLevel, logFormat                                string
	events                                             bool
	reconcile                                          time.Duration
}

func newDockerPluginCmd(a *app) *cobra.Command {
	host, _ := os.Hostname()
	f := dockerPluginFlags{name: "daoli", server: host, runDir: a.runDirDefault(), stateDir: "/var/lib/daoli/docker-plugin", logLevel: "info", logFormat: "text", events: true, reconcile: 30 * time.Second}
	cmd := &cobra.Command{
		Use:   "docker-plugin [--name daoli] [--server NAME] [flags]",
		Short: "Serve Docker's network and IPAM plugin protocol for this server",
		Long: `Serve a Docker network driver and IPAM driver, both called --name, on the
legacy plugin socket /run/docker/plugins/<name>.sock, as root, on a server
whose agent runs (its socket is <run-dir>/<server>.sock).

  docker network create -d daoli --ipam-driver daoli --subnet 10.1.0.0/24 net1
  docker run --network net1 --ip 10.1.0.5 --expose 80 IMAGE
  docker run --network name=net1,driver-opt=daoli.service=web --ip 10.1.0.5 --expose 80 IMAGE

Containers that declare the same service (driver option daoli.service)
may hold the same IP; any other request for a held address is refused.
The plugin keeps its state in --state-dir across restarts; start it
before dockerd (the systemd unit in swarmhook/systemd does).

It also follows Docker's container events: kill, die and pause mark the
container's endpoints down at once, an unhealthy HEALTHCHECK marks them
down and a healthy one active; every --reconcile-interval it compares
all its endpoints with Docker's containers, and removes those no
container holds any more (a dockerd killed mid-way never says so).
--events=false turns that off. See docs/docker.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(a.stderr, f.logLevel, f.logFormat)
			if err != nil {
				return err
			}
			cl, err := a.mapperClient(nil)
			if err != nil {
				return err
			}
			d, err := swarmhook.NewDocker(f.dockerHost)
			if err != nil {
				return err
			}
			defer d.Close()
			p, err := swarmhook.New(swarmhook.Config{
				Mapper: cl, AgentSocket: agent.SocketPath(f.runDir, f.server),
				StateDir: f.stateDir, Docker: d, Logger: log,
			})
			if err != nil {
				return err
			}
			defer p.Close()
			if f.events {
				if f.reconcile <= 0 {
					return badFlagf("reconcile-interval", f.reconcile.String(), "want a positive duration such as 30s")
				}
				w, err := swarmhook.NewWatcher(swarmhook.WatcherConfig{Plugin: p, Docker: d, Interval: f.reconcile, Logger: log})
				if err != nil {
					return err
				}
				ctx, cancel := context.WithCancel(cmd.Context())
				done := make(chan struct{})
				go func() { defer close(done); w.Run(ctx) }()
				defer func() { cancel(); <-done }()
			}
			path := f.socket
			if path == "" {
				path = filepath.Join(swarmhook.PluginDir, f.name+".sock")
			}
			l, err := swarmhook.ListenAt(path)
			if err != nil {
				return err
			}
			defer os.Remove(path)
			srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			}()
			log.Info("docker plugin serving", "socket", path, "agent", agent.SocketPath(f.runDir, f.server), "state", f.stateDir)
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	a.addMapperFlag(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", f.name, "plugin name: docker network create -d NAME --ipam-driver NAME")
	fl.StringVar(&f.server, "server", f.server, "this server's name: its agent's socket is <run-dir>/<server>.sock")
	fl.StringVar(&f.runDir, "run-dir", f.runDir, "directory of the agent's socket (default from $"+envRunDir+")")
	fl.StringVar(&f.stateDir, "state-dir", f.stateDir, "where the plugin keeps its state across restarts")
	fl.StringVar(&f.dockerHost, "docker-host", "", "Docker API, e.g. unix:///run/docker.sock (default $DOCKER_HOST, else the default socket)")
	fl.StringVar(&f.socket, "socket", "", "listen on this socket path instead of /run/docker/plugins/NAME.sock")
	fl.BoolVar(&f.events, "events", f.events, "follow Docker's container events and reconcile periodically (--events=false: only the plugin protocol)")
	fl.DurationVar(&f.reconcile, "reconcile-interval", f.reconcile, "time between full comparisons of the plugin's endpoints with Docker's containers")
	fl.StringVar(&f.logLevel, "log-level", f.logLevel, "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", f.logFormat, "text or json (logs go to stderr)")
	return cmd
}
