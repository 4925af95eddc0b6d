package main

import (
	"fmt"
	"os"

	"github.com/daolinet/daoli/daoli/demo"
	"github.com/spf13/cobra"
)

func newDemoCmd(a *app) *cobra.Command {
	var keep, short bool
	cmd := &cobra.Command{
		Use:   "demo [--keep]",
		Short: "Show the promise on a three-server cluster built on this machine (needs root)",
		Long: `Build a cluster on this machine from network namespaces: a fabric, three
servers each running a daoli agent, a mapper on the fabric, and containers
attached through the agents. Then show, with measured numbers:

  1. containers talking by their own IPs across servers, with a capture of
     the fabric showing only server addresses, unencapsulated, full MTU;
  2. three replicas on three servers sharing one IP:Port;
  3. failover: the master's container is killed while a client keeps
     asking, and the backup answers on the same IP:Port;
  4. a live migration under an open TCP connection;
  5. the outside world: a container reaching a host outside the cluster,
     and that host reaching a published service through every server,
     through a failover of its master.

Everything is removed at the end, on error and on Ctrl-C. With --keep the
cluster stays up for exploring, and the demo prints how to remove it.
Nothing outside the demo's own namespaces is touched.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bin, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the daoli binary: %w", err)
			}
			_, err = demo.Run(cmd.Context(), demo.Config{Bin: bin, Out: a.stdout, Keep: keep, Short: short})
			return err
		},
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the cluster running and print how to explore and remove it")
	cmd.Flags().BoolVar(&short, "short", false, "fewer repetitions")
	return cmd
}
