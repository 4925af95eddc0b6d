package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/daolinet/daoli/benchmarks/harness"
)

// run is the command: the benchmarks, or a netbench tool.
func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "netbench" {
		return netbenchCmd(ctx, os.Stdout, args[1:])
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var (
		cfg      harness.Config
		jsonOut  = fs.String("json", "", "write the results as JSON to `FILE`")
		readme   = fs.String("readme", "", "put the results table into `FILE` between its markers")
		memory   = fs.String("memory", "", "comma-separated endpoint counts for map memory (default 1000,10000,100000; quick 1000)")
		only     = fs.String("only", "", "comma-separated paths to measure besides the baseline: routes,vxlan,nat,nat-egress,nat-ingress,daoli,service,egress,ingress,ingress-remote (default all)")
		skip     = fs.String("skip", "", "comma-separated parts to leave out: ebpf,mobility,control,ha,memory")
		verbose  = fs.Bool("v", true, "print progress")
		logs     = fs.String("logs", "", "keep the processes' logs in `DIR`")
		duration = fs.Duration("duration", 0, "length of each measurement (default 2s; quick 1s)")
	)
	fs.BoolVar(&cfg.Quick, "quick", false, "smoke test: 1 round of 1 s measurements, 3 mobility runs, 1k endpoints")
	fs.IntVar(&cfg.Rounds, "rounds", 0, "rounds over all paths (default 5; quick 1)")
	fs.IntVar(&cfg.MobilityRuns, "runs", 0, "failovers and live migrations (default 20; quick 3)")
	fs.IntVar(&cfg.Registrations, "registrations", 0, "registrations in the parallel burst (default 2000; quick 200)")
	fs.IntVar(&cfg.Latencies, "latencies", 0, "registrations timed until programmed, before and after the burst (default 100; quick 10)")
	fs.StringVar(&cfg.Daoli, "daoli", "", "the daoli binary for the agents (default: build ./daoli of --repo)")
	fs.StringVar(&cfg.Repo, "repo", "", "the daoli module's root (default: found from the working directory)")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.Duration, cfg.Logs = *duration, *logs
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
		if err := known("--only", cfg.Only, "routes", "vxlan", "nat", "nat-egress", "nat-ingress",
			"daoli", "service", "egress", "ingress", "ingress-remote"); err != nil {
			return err
		}
	}
	if *skip != "" {
		cfg.Skip = strings.Split(*skip, ",")
		if err := known("--skip", cfg.Skip, "ebpf", "mobility", "control", "memory"); err != nil {
			return err
		}
	}
	if *memory != "" {
		for _, f := range strings.Split(*memory, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return fmt.Errorf("--memory %q: want positive endpoint counts such as 1000,10000", *memory)
			}
			cfg.MemorySizes = append(cfg.MemorySizes, n)
		}
	}
	if *verbose {
		cfg.Out = os.Stdout
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	cfg.Bench = self
	if cfg.Repo == "" {
		cfg.Repo = findRepo()
	}
	if cfg.Daoli == "" {
		if cfg.Repo == "" {
			return errors.New("no --daoli binary and no daoli module here to build it from (run from the repository, or pass --repo)")
		}
		dir, err := os.MkdirTemp("", "daoli-bench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.Daoli = filepath.Join(dir, "daoli")
		build := exec.CommandContext(ctx, "go", "build", "-o", cfg.Daoli, "./daoli")
		build.Dir = cfg.Repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build daoli: %w: %s", err, out)
		}
	}
	res, err := harness.Run(ctx, cfg)
	if res == nil {
		return err
	}
	md := res.Markdown()
	fmt.Println()
	fmt.Print(md)
	if *jsonOut != "" {
		b, jerr := json.MarshalIndent(res, "", "  ")
		if jerr == nil {
			jerr = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
		}
		if jerr != nil {
			return errors.Join(err, fmt.Errorf("write %s: %w", *jsonOut, jerr))
		}
	}
	if err != nil {
		return err // a failed run does not overwrite the published table
	}
	if *readme != "" {
		if err := harness.WriteReadme(*readme, md); err != nil {
			return err
		}
	}
	return nil
}

// known checks that every value of a list flag is one of want.
func known(flag string, got []string, want ...string) error {
	for _, g := range got {
		if !slices.Contains(want, g) {
			return fmt.Errorf("%s %q: want some of %s", flag, g, strings.Join(want, ","))
		}
	}
	return nil
}

// findRepo walks up from the working directory to the daoli module's
// go.mod; empty when there is none.
func findRepo() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/daolinet/daoli\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// netbenchCmd runs one netbench tool and prints its result as JSON.
func netbenchCmd(ctx context.Context, w io.Writer, args []string) error {
	if len(args) == 0 {
		return errors.New("netbench: want serve, rr, crr, stream or udp")
	}
	fs := flag.NewFlagSet("netbench "+args[0], flag.ContinueOnError)
	var (
		to       = fs.String("to", "", "the server, `IP:PORT`")
		port     = fs.Int("port", 7000, "serve: the TCP and UDP port")
		name     = fs.String("name", "", "serve: the name the server answers with")
		duration = fs.Duration("duration", time.Second, "how long to measure")
		size     = fs.Int("size", 0, "request or datagram size in bytes (default: rr, crr 1; udp 18)")
		streams  = fs.Int("streams", 1, "stream: connections")
		rate     = fs.Float64("rate", 0, "stream: total rate in bits/s (0: unlimited)")
		timeout  = fs.Duration("timeout", time.Second, "crr: limit of one connection")
		sendOnly = fs.Bool("send-only", false, "udp: leave the server's counters to the caller")
	)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var (
		res any
		err error
	)
	switch args[0] {
	case "serve":
		s := &netbenchServer{name: *name}
		return s.run(ctx, *port)
	case "rr":
		res, err = rrRun(ctx, *to, *size, *duration)
	case "crr":
		res, err = crrRun(ctx, *to, *size, *duration, *timeout)
	case "stream":
		res, err = streamRun(ctx, *to, *streams, *duration, *rate)
	case "udp":
		res, err = udpRun(ctx, *to, *size, *duration, *sendOnly)
	default:
		return fmt.Errorf("netbench: unknown tool %q; want serve, rr, crr, stream or udp", args[0])
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(w).Encode(res)
}
