// Package layering holds the test that keeps daoli's dependency graph
// pointing one way:
//
//	daoli → {swarmhook, cni, dataplane} → agentapi → mapper
//
// The mapper imports nothing of ours and nothing of eBPF, netlink or
// Docker; agentapi, the agent socket's protocol, only the mapper; the
// hooks (swarmhook, cni) never the agent or its dataplane; only dataplane
// imports cilium/ebpf; only swarmhook imports the Docker client.
// docs/architecture.md explains why.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/daolinet/daoli"

type pkg struct {
	path    string
	imports []string // direct
	deps    []string // transitive
}

func list(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \",\"}}|{{join .Deps \",\"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimSpace(line), "|")
		pkgs = append(pkgs, pkg{f[0], strings.Split(f[1], ","), strings.Split(f[2], ",")})
	}
	if len(pkgs) < 4 {
		t.Fatalf("go list found %d packages; the module was not listed", len(pkgs))
	}
	return pkgs
}

func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}

func TestDependenciesPointOneWay(t *testing.T) {
	rules := []struct {
		who    string   // packages at or below this path...
		mayNot []string // ...may not depend, even indirectly, on these
	}{
		{module + "/mapper", []string{module + "/dataplane", module + "/swarmhook", module + "/daoli", module + "/internal",
			"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/docker"}},
		{module + "/dataplane", []string{module + "/swarmhook", module + "/daoli", "github.com/docker"}},
		{module + "/swarmhook", []string{module + "/dataplane", module + "/daoli", module + "/cni", "github.com/cilium/ebpf"}},
		{module + "/agentapi", []string{module + "/dataplane", module + "/swarmhook", module + "/daoli", module + "/cni", module + "/internal",
			"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/docker"}},
		{module + "/cni", []string{module + "/dataplane", module + "/swarmhook", module + "/daoli",
			"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/docker"}},
		{module + "/cmd/daoli-cni", []string{module + "/dataplane", module + "/swarmhook", module + "/daoli", "github.com/cilium/ebpf", "github.com/docker"}},
	}
	for _, p := range list(t) {
		for _, r := range rules {
			if !under(p.path, r.who) {
				continue
			}
			for _, d := range p.deps {
				for _, banned := range r.mayNot {
					if under(d, banned) {
						t.Errorf("%s depends on %s; %s may not depend on %s", p.path, d, r.who, banned)
					}
				}
			}
		}
		// Only the dataplane speaks eBPF and only swarmhook speaks Docker.
		for _, imp := range p.imports {
			if under(imp, "github.com/cilium/ebpf") && !under(p.path, module+"/dataplane") {
				t.Errorf("%s imports %s; only dataplane may", p.path, imp)
			}
			if under(imp, "github.com/docker") && !under(p.path, module+"/swarmhook") {
				t.Errorf("%s imports %s; only swarmhook may", p.path, imp)
			}
		}
	}
}
