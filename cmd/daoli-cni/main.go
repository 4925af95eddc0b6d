// Command daoli-cni is daoli's CNI plugin. The runtime runs it from its
// CNI path (/opt/cni/bin) for each pod; it talks to the agent of its
// server. `daoli-cni install` puts it and its network configuration in
// place. See docs/kubernetes.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/daolinet/daoli/cni"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "install" {
		err := cni.Install(os.Args[2:], os.Stdout)
		switch {
		case errors.Is(err, flag.ErrHelp):
		case err != nil:
			fmt.Fprintln(os.Stderr, "daoli-cni:", err)
			os.Exit(2)
		}
		return
	}
	cni.Main("daoli CNI plugin: fixed pod identity over daoli's eBPF dataplane (daoli-cni install -h installs it)")
}
