// Package harness runs daoli's side-by-side benchmarks: it builds every
// path of package paths in network namespaces, measures them round by
// round (iperf3 and netbench, client and server pinned to different CPUs),
// measures daoli's control plane (registrations, registration to
// programmed on every server, map memory) and mobility (failover and live
// migration gaps), and renders the results as JSON and a markdown table.
//
// Run needs root, iproute2, iperf3 and iptables (scripts/setup.sh bench).
// Everything it creates (namespaces, processes, bpffs mounts, iptables
// rules) is removed before it returns, also on error and when its context
// is cancelled (Ctrl-C). It never touches the root namespace's network.
//
// Timing belongs here, not in tests: Run reports numbers and whether
// daoli's goals are met, and judges nothing else.
package harness

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/daolinet/daoli/benchmarks/paths"
	"github.com/daolinet/daoli/internal/testbed"
	"golang.org/x/sys/unix"
)

// Config configures Run. Zero values mean the full run (`make bench`);
// Quick changes the defaults to a smoke test.
type Config struct {
	// Bench is the harness's own binary: its netbench subcommands run
	// inside the namespaces. Required.
	Bench string
	// Daoli is the daoli binary the agents run. Required.
	Daoli string
	// Repo is the module's root, whose git commit the results name.
	// Empty means none.
	Repo string
	// Quick is the smoke test: one round of 1-second measurements, 3
	// mobility runs, 1k endpoints for memory.
	Quick bool
	// Rounds is the number of rounds over all paths. Zero means 5 (1 when
	// Quick).
	Rounds int
	// Duration is the length of each measurement. Zero means 2 s (1 s
	// when Quick). iperf3 gets whole seconds.
	Duration time.Duration
	// MobilityRuns is the number of failovers and of live migrations.
	// Zero means 20 (3 when Quick).
	MobilityRuns int
	// Registrations is the size of the parallel registration burst. Zero
	// means 2000 (200 when Quick).
	Registrations int
	// Latencies is the number of registrations timed one by one until
	// programmed on every server, before and after the burst. Zero means
	// 100 (10 when Quick).
	Latencies int
	// MemorySizes are the endpoint counts of the map memory figures. Nil
	// means 1k, 10k and 100k (1k when Quick).
	MemorySizes []int
	// Only limits the paths to these keys (and the baseline). Nil means
	// all.
	Only []string
	// Skip leaves out parts of the run: "ebpf", "mobility", "control",
	// "ha" (the registry on etcd), "memory".
	// The data path always runs (the cluster it builds serves the rest).
	Skip []string
	// Out receives progress lines. Nil means discard.
	Out io.Writer
	// Logs is where processes' output goes. Empty means a temporary
	// directory removed at the end.
	Logs string
}

func (c Config) withDefaults() Config {
	quick := func(full, q int) int {
		if c.Quick {
			return q
		}
		return full
	}
	c.Rounds = cmp.Or(c.Rounds, quick(5, 1))
	c.Duration = cmp.Or(c.Duration, time.Duration(quick(2, 1))*time.Second)
	c.MobilityRuns = cmp.Or(c.MobilityRuns, quick(20, 3))
	c.Registrations = cmp.Or(c.Registrations, quick(2000, 200))
	c.Latencies = cmp.Or(c.Latencies, quick(100, 10))
	if c.MemorySizes == nil {
		c.MemorySizes = []int{1000, 10000, 100000}
		if c.Quick {
			c.MemorySizes = []int{1000}
		}
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

// run is one Run in progress.
type run struct {
	cluster *paths.Cluster
	daoli   *paths.Path // the daoli path, when measured
	cfg     Config
	t       *testbed.Stack
	ctx     context.Context
	logs    string
	res     *Results
}

func (r *run) printf(format string, args ...any) { fmt.Fprintf(r.cfg.Out, format+"\n", args...) }

// check panics with fatal when ctx is done, so a Ctrl-C unwinds at the
// next step.
func (r *run) check() {
	if err := r.ctx.Err(); err != nil {
		panic(testbed.Fatal{Msg: "interrupted: " + err.Error()})
	}
}

// Run builds every path, measures it and removes everything. It returns
// what it measured so far together with any error.
func Run(ctx context.Context, cfg Config) (res *Results, err error) {
	cfg = cfg.withDefaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("benchmarks need root: they create network namespaces and load eBPF programs")
	}
	for _, tool := range []string{"ip", "iperf3", "iptables", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("benchmarks need %s: %w (scripts/setup.sh bench installs it)", tool, err)
		}
	}
	if cfg.Bench == "" || cfg.Daoli == "" {
		return nil, errors.New("harness: Config.Bench and Config.Daoli are required")
	}
	if runtime.NumCPU() < 2 {
		return nil, fmt.Errorf("benchmarks pin client and server to different CPUs: this machine has %d", runtime.NumCPU())
	}
	st := &testbed.Stack{}
	r := &run{cfg: cfg, t: st, ctx: ctx, res: &Results{}}
	r.logs = cfg.Logs
	if r.logs == "" {
		dir, err := os.MkdirTemp("", "daoli-bench-")
		if err != nil {
			return nil, err
		}
		r.logs = dir
		st.Cleanup(func() { os.RemoveAll(dir) })
	} else if err := os.MkdirAll(r.logs, 0o755); err != nil {
		return nil, err
	}
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			defer func() {
				if p := recover(); p != nil { // not a Fatal: clean up, then go on panicking
					st.Unwind()
					panic(p)
				}
			}()
			err = testbed.Recovered(p)
		}
		r.res.Env.LoadAfter = loadavg()
		r.res.Seconds = time.Since(start).Seconds()
		r.res.summarize()
		r.printf("removing everything the benchmarks created")
		st.Unwind()
		if errs := st.Errors(); len(errs) > 0 {
			err = errors.Join(err, fmt.Errorf("cleanup: %s", strings.Join(errs, "; ")))
		}
		res = r.res
	}()
	r.res.Env = environment(cfg)
	r.res.Config = RunConfig{Quick: cfg.Quick, Rounds: cfg.Rounds, DurationSeconds: cfg.Duration.Seconds(),
		MobilityRuns: cfg.MobilityRuns, Registrations: cfg.Registrations, Latencies: cfg.Latencies, MemorySizes: cfg.MemorySizes}
	e := r.res.Env
	r.printf("machine: %s, %d CPUs, %s; kernel %s; %s; %s; %s; daoli %s", e.CPU, e.CPUs, e.Memory, e.Kernel, e.IPerf, e.IPTables, e.Go, e.Daoli)
	r.printf("busy before the run: %.0f%% of all CPUs over 1 s (load %s)", e.BusyBefore*100, e.LoadBefore)

	r.dataPath()
	for _, part := range []struct {
		name string
		f    func()
	}{
		// Mobility before the control plane: its thousands of
		// registrations slow every agent's reconcile, which the failover
		// and migration gaps would then include.
		{"ebpf", r.ebpfCost}, {"mobility", r.mobility}, {"control", r.controlPlane}, {"ha", r.ha}, {"memory", r.memory},
	} {
		r.check()
		if !slices.Contains(cfg.Skip, part.name) {
			part.f()
		}
	}
	return r.res, nil
}

// environment describes the machine and the versions.
func environment(cfg Config) Env {
	e := Env{Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		e.Memory = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return l
	}
	e.IPerf = first("iperf3", "--version")
	e.IPTables = first("iptables", "--version")
	e.Daoli = strings.TrimPrefix(first(cfg.Daoli, "version"), "daoli ")
	if cfg.Repo != "" {
		commit := first("git", "-C", cfg.Repo, "rev-parse", "--short", "HEAD")
		if out, _ := exec.Command("git", "-C", cfg.Repo, "status", "--porcelain", "--untracked-files=no").Output(); len(bytes.TrimSpace(out)) > 0 {
			commit += " with uncommitted changes"
		}
		e.Commit = commit
	}
	e.LoadBefore = loadavg()
	e.BusyBefore = busyFor(time.Second)
	return e
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// busyFor returns the fraction of all CPUs busy over d, while the harness
// itself sleeps: what others do on the machine.
func busyFor(d time.Duration) float64 {
	a := readCPU()
	time.Sleep(d)
	b := readCPU()
	total := b.total - a.total
	if total <= 0 {
		return 0
	}
	return float64(b.busy-a.busy) / float64(total)
}

// cpuTimes are the sums of /proc/stat's first line, in clock ticks.
type cpuTimes struct{ busy, total int64 }

// clockTicks is USER_HZ: /proc/stat counts in 1/100 s on Linux.
const clockTicks = 100

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var t cpuTimes
	// user nice system idle iowait irq softirq steal (guest is in user).
	for i, v := range f[1:] {
		if i > 7 {
			break
		}
		var n int64
		fmt.Sscan(v, &n)
		t.total += n
		if i != 3 && i != 4 {
			t.busy += n
		}
	}
	return t
}

// logFile creates a log file for a process.
func (r *run) logFile(name string) *os.File {
	f, err := os.Create(filepath.Join(r.logs, name+".log"))
	if err != nil {
		r.t.Fatalf("create log: %v", err)
	}
	return f
}

// start runs args in ns pinned to cpu (-1: anywhere), its output in a log
// file, killed by PID at cleanup.
func (r *run) start(ns *testbed.Namespace, log string, cpu int, args ...string) *paths.Proc {
	f := r.logFile(log)
	defer f.Close()
	return paths.Start(r.t, ns, f, cpu, args...)
}
