package main

import (
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// empty means the module version from the build info.
var version string

// versionInfo is what "daoli version" prints.
type versionInfo struct {
	Version  string `json:"version"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func currentVersion() versionInfo {
	v := version
	if v == "" {
		v = "(devel)"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
			v = bi.Main.Version
		}
	}
	return versionInfo{Version: v, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}

func newVersionCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print daoli's version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			out, err := newOutput(a.stdout, a.client.output)
			if err != nil {
				return err
			}
			v := currentVersion()
			return out.print(v, func(w io.Writer) error {
				_, err := io.WriteString(w, "daoli "+v.Version+" ("+v.Go+", "+v.Platform+")\n")
				return err
			})
		},
	}
	a.addOutputFlag(cmd)
	return cmd
}
