package cni

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/daolinet/daoli/mapper"
)

// Install is `daoli-cni install`: it copies the running binary into the
// runtime's CNI path and writes the network configuration list, each with
// a rename so that a runtime never reads half a file. containerd reloads
// its CNI configuration when a file is renamed into its directory.
func Install(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("daoli-cni install", flag.ContinueOnError)
	fs.SetOutput(stdout)
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the runtime's CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "the runtime's CNI configuration directory")
	file := fs.String("file", "10-daoli.conflist", "the configuration list's file name in --conf-dir")
	network := fs.String("network", "", "the daoli network pods join (required; create it with daoli network create)")
	name := fs.String("name", "", "the CNI network's name (default: --network)")
	socket := fs.String("agent-socket", "", "the local agent's socket (default: the one socket in /run/daoli)")
	ports := fs.String("ports", "", "ports every pod serves, such as 8080/tcp,53/udp (pods add theirs with the daoli.io/ports annotation)")
	version := fs.String("cni-version", "1.0.0", "the CNI version of the list: 1.0.0 for containerd 1.6 and 1.7; 1.1.0 where the runtime's libcni is 1.2 or newer (STATUS and GC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("install: unexpected argument %q", fs.Arg(0))
	}
	if *network == "" {
		return errors.New("install: --network is required: the daoli network pods join")
	}
	if *name == "" {
		*name = *network
	}
	if *file != filepath.Base(*file) || !strings.HasSuffix(*file, ".conflist") {
		return fmt.Errorf("install: --file %q: want a file name ending in .conflist, inside --conf-dir", *file)
	}
	if *socket != "" && !filepath.IsAbs(*socket) {
		return fmt.Errorf("install: --agent-socket %q: want an absolute path; the runtime runs the plugin from its own directory", *socket)
	}
	switch *version {
	case "0.4.0", "1.0.0", "1.1.0":
	default:
		return fmt.Errorf("install: --cni-version %q: want 0.4.0, 1.0.0 or 1.1.0", *version)
	}
	plugin := map[string]any{"type": Type, "network": *network,
		"capabilities": map[string]bool{"io.kubernetes.cri.pod-annotations": true, "ips": true, "mac": true}}
	if *socket != "" {
		plugin["agentSocket"] = *socket
	}
	if *ports != "" {
		var ps []string
		for _, p := range strings.Split(*ports, ",") {
			if _, err := mapper.ParsePortSpec(strings.TrimSpace(p)); err != nil {
				return fmt.Errorf("install: --ports: %w", err)
			}
			ps = append(ps, strings.TrimSpace(p))
		}
		plugin["ports"] = ps
	}
	list, err := json.MarshalIndent(map[string]any{"cniVersion": *version, "name": *name, "plugins": []any{plugin}}, "", "  ")
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("install: find this binary: %w", err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("install: read %s: %w", self, err)
	}
	if err := writeAtomic(filepath.Join(*binDir, Type), bin, 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	conf := filepath.Join(*confDir, *file)
	if err := writeAtomic(conf, append(list, '\n'), 0o644); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	fmt.Fprintf(stdout, "installed %s and %s (network %s)\n", filepath.Join(*binDir, Type), conf, *network)
	return nil
}

// writeAtomic writes path through a temporary file in its directory whose
// name no runtime reads as a configuration, then renames it into place.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
