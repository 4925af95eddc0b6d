package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// newHealthcheckCmd is a health check for images that have nothing but
// the daoli binary (FROM scratch): Docker's HEALTHCHECK runs it in the
// container, and daoli's Docker plugin follows the result (docs/docker.md).
func newHealthcheckCmd(a *app) *cobra.Command {
	var (
		tcp     []string
		drain   string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "healthcheck [--tcp HOST:PORT]... [--unless-exists PATH] [--timeout D]",
		Short: "Exit 0 when the container is healthy: its TCP ports accept, no drain file exists",
		Long: `Exit 0 when every --tcp address accepts a connection within --timeout and
the --unless-exists file does not exist; otherwise print why and exit 1.
Made for Docker's HEALTHCHECK in images that hold only the daoli binary:

  HEALTHCHECK --interval=5s CMD ["/daoli", "healthcheck", "--tcp", "127.0.0.1:8080", "--unless-exists", "/drain"]

Creating the file (docker cp) drains the container: Docker marks it
unhealthy and daoli's Docker plugin marks its endpoints down, so new flows
go to the other backends of its services.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(tcp) == 0 && drain == "" {
				return errors.New("healthcheck: nothing to check; give --tcp or --unless-exists")
			}
			if err := healthcheck(cmd.Context(), tcp, drain, timeout); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "healthy")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&tcp, "tcp", nil, "address that must accept a TCP connection (repeatable)")
	f.StringVar(&drain, "unless-exists", "", "unhealthy while this file exists (a drain switch)")
	f.DurationVar(&timeout, "timeout", time.Second, "time each connection may take")
	return cmd
}

func healthcheck(ctx context.Context, tcp []string, drain string, timeout time.Duration) error {
	if drain != "" {
		if _, err := os.Stat(drain); err == nil {
			return fmt.Errorf("unhealthy: %s exists (remove it to end the drain)", drain)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("unhealthy: check %s: %w", drain, err)
		}
	}
	for _, addr := range tcp {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return badFlag("tcp", addr, err)
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("unhealthy: %w", err)
		}
		c.Close()
	}
	return nil
}
