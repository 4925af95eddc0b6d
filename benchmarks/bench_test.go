package benchmarks_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/daolinet/daoli/benchmarks/harness"
	"github.com/daolinet/daoli/internal/testbed"
)

// TestQuickBench runs the whole harness in quick mode, as `make
// bench-quick` does, and checks that every path produced every figure and
// that nothing is left behind. It asserts no timing: numbers measured here
// are not published.
func TestQuickBench(t *testing.T) {
	testbed.RequirePrivileged(t)
	for _, tool := range []string{"iperf3", "iptables", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv(testbed.RequireEnv) == "1" {
				t.Fatalf("needs %s (scripts/setup.sh bench), and %s=1 forbids skipping", tool, testbed.RequireEnv)
			}
			t.Skipf("needs %s: scripts/setup.sh bench installs it", tool)
		}
	}
	dir := t.TempDir()
	bench, daoli := filepath.Join(dir, "bench"), filepath.Join(dir, "daoli")
	for bin, pkg := range map[string]string{bench: "./cmd/bench", daoli: "../daoli"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	out := filepath.Join(dir, "results.json")
	cmd := exec.Command(bench, "--quick", "--daoli", daoli, "--json", out)
	b, err := cmd.CombinedOutput()
	t.Logf("bench --quick:\n%s", b)
	if err != nil {
		t.Fatalf("bench --quick: %v", err)
	}
	var res harness.Results
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}

	for _, e := range res.Errors {
		t.Errorf("measurement failed: %s", e)
	}
	want := []string{"baseline", "routes", "vxlan", "nat", "nat-egress", "nat-ingress", "daoli", "service", "egress", "ingress", "ingress-remote"}
	if len(res.Paths) != len(want) {
		t.Errorf("measured paths %v, want %v", res.Paths, want)
	}
	for _, p := range want {
		for _, m := range harness.Metrics {
			f, ok := res.Summary[p][m.Key]
			if m.Key == "cpu_per_gbit" && len(res.Rounds) > 0 {
				// Less what others kept busy meanwhile, this can be 0 on
				// a busy machine; the raw figure cannot.
				if raw := res.Rounds[0].Values[p]["cpu_per_gbit_raw"]; ok && f.Median >= 0 && raw > 0 {
					continue
				}
			}
			if !(f.Median > 0) {
				t.Errorf("%s: %s is %v, want a positive figure", p, m.Key, f.Median)
			}
		}
	}
	if c := res.Control; c == nil {
		t.Error("no control-plane figures")
	} else {
		for name, v := range map[string]float64{"registrations/s": c.PerSecond, "programmed/s": c.ProgrammedPerSecond,
			"batch registrations/s":                   c.BatchPerSecond,
			"registration to programmed p50 (before)": c.Before.P50ms, "registration to programmed p50 (after)": c.After.P50ms} {
			if !(v > 0) {
				t.Errorf("control plane: %s is %v", name, v)
			}
		}
	}
	if h := res.HA; h == nil || h.Control == nil {
		t.Error("no figures of the registry on etcd")
	} else {
		c := h.Control
		for name, v := range map[string]float64{"registrations/s": c.PerSecond, "batch registrations/s": c.BatchPerSecond,
			"registration to programmed p50 (before)": c.Before.P50ms, "registration to programmed p50 (after)": c.After.P50ms} {
			if !(v > 0) {
				t.Errorf("registry on etcd: %s is %v", name, v)
			}
		}
		if h.Failover.Runs != 3 || h.FailoverDegraded.Runs != 3 || !(h.FailoverDegraded.P50ms > 0) {
			t.Errorf("registry on etcd: failover gaps %+v and, degraded, %+v; want 3 positive runs each", h.Failover, h.FailoverDegraded)
		}
	}
	if m := res.Mobility; m == nil {
		t.Error("no mobility figures")
	} else {
		if m.Failover.Runs != 3 || !(m.Failover.P50ms > 0) {
			t.Errorf("failover gap %+v, want 3 positive runs", m.Failover)
		}
		if m.Migration.Runs != 3 || !(m.Migration.P50ms > 0) {
			t.Errorf("migration pause %+v, want 3 positive runs", m.Migration)
		}
	}
	if m := res.Memory; m == nil || len(m.Sizes) == 0 {
		t.Error("no memory figures")
	} else if m.Sizes[0].Error != "" || m.Sizes[0].Memlock == 0 || !(m.BytesPerEndpointBuilt > 0) || !(m.BytesPerFlow > 0) {
		t.Errorf("memory %+v, want 1k endpoints applied and positive sizes", m.Sizes[0])
	}
	if e := res.EBPF; e == nil || !(e.NsPerPacket > 0) || len(e.Programs) != 2 {
		t.Errorf("eBPF cost %+v, want both programs timed", e)
	}
	if len(res.Goals) == 0 {
		t.Error("no goals judged")
	}
	md := res.Markdown()
	for _, s := range []string{"| TCP throughput, 1 stream", "### Goals", "### Control plane", "### Registry on etcd", "### Map memory", "### Mobility"} {
		if !strings.Contains(md, s) {
			t.Errorf("the table lacks %q", s)
		}
	}

	// Nothing is left behind.
	if len(res.Prefixes) == 0 {
		t.Error("the results name no namespace prefix")
	}
	left, _ := filepath.Glob("/run/netns/*")
	for _, ns := range left {
		for _, p := range res.Prefixes {
			if strings.HasPrefix(filepath.Base(ns), p) {
				t.Errorf("namespace %s is left behind", ns)
			}
		}
	}
}
