package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/daolinet/daoli/benchmarks/netbench"
	"github.com/daolinet/daoli/benchmarks/paths"
	"github.com/daolinet/daoli/internal/testbed"
)

// The CPUs client and server processes are pinned to.
const (
	serverCPU = 0
	clientCPU = 1
)

// fixedRate is the rate of the CPU-cost measurement: high enough that the
// path's own cost stands out of the machine's background, and below what
// every path carries.
const fixedRate = 4e9

// dataPath builds every path and measures them round by round.
func (r *run) dataPath() {
	want := func(key string) bool { return r.cfg.Only == nil || slices.Contains(r.cfg.Only, key) }
	r.printf("building the paths in network namespaces")
	ps := []*paths.Path{paths.Baseline(r.t)}
	if want("routes") {
		ps = append(ps, paths.Routes(r.t))
	}
	if want("vxlan") {
		ps = append(ps, paths.VXLAN(r.t))
	}
	if want("nat") {
		ps = append(ps, paths.BridgeNAT(r.t))
	}
	if want("nat-egress") {
		ps = append(ps, paths.NATEgress(r.t))
	}
	if want("nat-ingress") {
		ps = append(ps, paths.NATIngress(r.t))
	}
	r.check()
	r.cluster = paths.NewCluster(r.t, paths.ClusterConfig{Bin: r.cfg.Daoli, Logs: r.logs})
	if want("daoli") {
		r.daoli = r.cluster.Daoli(r.ctx)
		ps = append(ps, r.daoli)
	}
	if want("service") {
		ps = append(ps, r.cluster.Service(r.ctx))
	}
	if want("egress") {
		ps = append(ps, r.cluster.Egress(r.ctx))
	}
	if want("ingress") {
		ps = append(ps, r.cluster.Ingress(r.ctx))
	}
	if want("ingress-remote") {
		ps = append(ps, r.cluster.IngressRemote(r.ctx))
	}
	needStream := false
	for _, p := range ps {
		if prefix := strings.TrimSuffix(p.World.Fabric.Name, "fab"); !slices.Contains(r.res.Prefixes, prefix) {
			r.res.Prefixes = append(r.res.Prefixes, prefix)
		}
		r.res.Paths = append(r.res.Paths, PathInfo{Key: p.Key, Title: p.Title, MTU: p.MTU, Throughput: throughputTool(p)})
		needStream = needStream || !p.IPerf
		for i, ns := range p.Servers {
			r.start(ns, fmt.Sprintf("%s-netbench-%d", p.Key, i), serverCPU, r.cfg.Bench, "netbench", "serve",
				"--port", strconv.Itoa(paths.BenchPort), "--name", fmt.Sprintf("%s-%d", p.Key, i))
		}
	}
	for _, p := range ps {
		addr := p.Addr(paths.BenchPort).String()
		err := retry(r.ctx, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(r.ctx, 300*time.Millisecond)
			defer cancel()
			_, err := netbench.Name(ctx, dialIn(p.Client), addr)
			return err
		})
		if err != nil {
			r.t.Fatalf("%s: the client cannot reach %s: %v", p.Key, addr, err)
		}
	}
	r.printf("paths ready: %s", strings.Join(keys(ps), ", "))
	for round := range r.cfg.Rounds {
		// Start each round at another path, so no path always runs first
		// (or right after the same neighbour).
		order := append(slices.Clone(ps[round%len(ps):]), ps[:round%len(ps)]...)
		rd := Round{Index: round + 1, Order: keys(order), Values: map[string]map[string]float64{}}
		for _, p := range order {
			r.check()
			t0 := time.Now()
			rd.Values[p.Key] = r.measure(p, needStream && p.Key == "baseline")
			r.printf("round %d/%d %-14s %s (%.1f s)", round+1, r.cfg.Rounds, p.Key, brief(rd.Values[p.Key]), time.Since(t0).Seconds())
		}
		r.res.Rounds = append(r.res.Rounds, rd)
	}
}

func keys(ps []*paths.Path) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Key)
	}
	return out
}

func throughputTool(p *paths.Path) string {
	if p.IPerf {
		return "iperf3"
	}
	return "netbench"
}

func brief(v map[string]float64) string {
	return fmt.Sprintf("tcp1 %.2f tcp4 %.2f Gbit/s, cpu %.3f s/Gbit, rr p50 %.0f µs p99 %.0f µs %.0f/s, udp %.0f pps, crr %.0f/s",
		v["tcp1"], v["tcp4"], v["cpu_per_gbit"], v["rr_p50"], v["rr_p99"], v["rr_tps"], v["udp_pps"], v["crr"])
}

// measure takes every figure of one path once. alsoStream adds the
// netbench stream figures (keys with suffix ".netbench") for paths that
// cannot run iperf3 to compare against.
func (r *run) measure(p *paths.Path, alsoStream bool) map[string]float64 {
	v := map[string]float64{}
	fail := func(what string, err error) {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s %s: %v", p.Key, what, err))
		r.printf("  %s %s failed: %v", p.Key, what, err)
	}
	dur := r.cfg.Duration
	throughput := func(suffix string, iperf bool) {
		for _, m := range []struct {
			key     string
			streams int
			rate    float64
		}{{"tcp1", 1, 0}, {"tcp4", 4, 0}, {"cpu_per_gbit", 1, fixedRate}} {
			r.check()
			var (
				bytes float64
				secs  float64
				err   error
			)
			// What others keep busy around a CPU-cost measurement:
			// /proc/stat cannot tell it from ours, so it is measured
			// before and after, and taken out.
			var bg float64
			if m.rate > 0 {
				bg = busyFor(500 * time.Millisecond)
			}
			drops := r.drops(p)
			before, t0 := readCPU(), time.Now()
			if iperf {
				bytes, secs, err = r.iperf(p, m.streams, m.rate)
			} else {
				bytes, secs, err = r.stream(p, m.streams, m.rate)
			}
			after, elapsed := readCPU(), time.Since(t0)
			r.dropsSince(p, m.key, drops)
			if m.rate > 0 {
				bg = (bg + busyFor(500*time.Millisecond)) / 2
			}
			if err != nil {
				fail(m.key+suffix, err)
				continue
			}
			if m.rate == 0 {
				v[m.key+suffix] = bytes * 8 / secs / 1e9
				continue
			}
			gbit := bytes * 8 / 1e9
			raw := float64(after.busy-before.busy) / clockTicks
			others := bg * elapsed.Seconds() * float64(runtime.NumCPU())
			v[m.key+suffix] = max(raw-others, 0) / gbit
			v[m.key+"_raw"+suffix] = raw / gbit
			v["cpu_background"+suffix] = bg
		}
	}
	throughput("", p.IPerf)
	if alsoStream {
		throughput(".netbench", false)
	}
	addr := p.Addr(paths.BenchPort).String()
	d := dur.String()

	r.check()
	drops := r.drops(p)
	var rr netbench.RRResult
	if err := r.netbench(p, &rr, "rr", "--to", addr, "--duration", d); err != nil {
		fail("rr", err)
	} else {
		v["rr_p50"], v["rr_p99"], v["rr_tps"] = rr.P50us, rr.P99us, rr.TPS
	}
	r.dropsSince(p, "rr", drops)

	r.check()
	drops = r.drops(p)
	if pps, _, err := r.udp(p); err != nil {
		fail("udp", err)
	} else {
		v["udp_pps"] = pps
	}
	r.dropsSince(p, "udp", drops)

	// Last: on daoli it spends the client's offsets, which come back
	// only 10 s after each connection's FIN.
	r.check()
	drops = r.drops(p)
	var crr netbench.CRRResult
	if err := r.netbench(p, &crr, "crr", "--to", addr, "--duration", d); err != nil {
		fail("crr", err)
	} else {
		v["crr"] = crr.CPS
		if crr.Errors > 0 {
			r.res.crrFailed(p.Key, crr)
		}
	}
	r.dropsSince(p, "crr", drops)
	return v
}

// udp measures the datagrams per second every server of p receives from
// one client socket. The harness reads the servers' counters itself, from
// inside each server's namespace: a balanced service's client cannot
// choose the backend its counter query reaches.
func (r *run) udp(p *paths.Path) (pps float64, received uint64, err error) {
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), paths.BenchPort).String()
	counters := func(reset bool) (uint64, error) {
		var total uint64
		for _, ns := range p.Servers {
			ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
			n, _, err := netbench.UDPCounters(ctx, dialIn(ns), local, reset)
			cancel()
			if err != nil {
				return 0, fmt.Errorf("udp counters in %s: %w", ns.Name, err)
			}
			total += n
		}
		return total, nil
	}
	if _, err := counters(true); err != nil {
		return 0, 0, err
	}
	var res netbench.UDPResult
	addr := p.Addr(paths.BenchPort).String()
	if err := r.netbench(p, &res, "udp", "--to", addr, "--duration", r.cfg.Duration.String(), "--send-only"); err != nil {
		return 0, 0, err
	}
	time.Sleep(100 * time.Millisecond) // what is queued still arrives
	n, err := counters(false)
	if err != nil {
		return 0, 0, err
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("udp: the servers received none of %d datagrams", res.Sent)
	}
	return float64(n) / res.Seconds, n, nil
}

// iperf runs iperf3 once: a one-off server pinned to serverCPU, a client
// pinned to clientCPU. It returns the bytes the server received and over
// how many seconds.
func (r *run) iperf(p *paths.Path, streams int, rate float64) (bytes, secs float64, err error) {
	ready := &watch{want: "Server listening", seen: make(chan struct{})}
	srv := paths.Start(r.t, p.Servers[0], ready, serverCPU, "iperf3", "-s", "-1", "-p", strconv.Itoa(paths.IperfPort), "--forceflush")
	defer srv.Stop()
	select {
	case <-ready.seen:
	case <-srv.Done():
		return 0, 0, fmt.Errorf("iperf3 server exited: %s", ready.String())
	case <-time.After(10 * time.Second):
		return 0, 0, fmt.Errorf("iperf3 server did not start: %s", ready.String())
	}
	t := max(1, int(r.cfg.Duration.Round(time.Second)/time.Second))
	to := p.Addr(paths.IperfPort)
	args := []string{"iperf3", "-c", to.Addr().String(), "-p", strconv.Itoa(int(to.Port())), "-t", strconv.Itoa(t), "-J", "-P", strconv.Itoa(streams)}
	if rate > 0 {
		args = append(args, "-b", strconv.FormatFloat(rate, 'f', 0, 64))
	}
	var out syncBuffer
	cli := paths.Start(r.t, p.Client, &out, clientCPU, args...)
	werr := cli.Wait(time.Duration(t)*time.Second + 30*time.Second)
	srv.Wait(3 * time.Second)
	var j struct {
		End struct {
			SumReceived struct {
				Bytes   float64 `json:"bytes"`
				Seconds float64 `json:"seconds"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out.Bytes(), &j); err != nil {
		return 0, 0, fmt.Errorf("iperf3: %v, output %q: %w", werr, trim(out.String(), 300), err)
	}
	if j.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", j.Error)
	}
	if j.End.SumReceived.Seconds == 0 {
		return 0, 0, fmt.Errorf("iperf3: no result (%v)", werr)
	}
	return j.End.SumReceived.Bytes, j.End.SumReceived.Seconds, nil
}

// stream is iperf for paths iperf3 cannot run on: netbench stream.
func (r *run) stream(p *paths.Path, streams int, rate float64) (bytes, secs float64, err error) {
	var s netbench.StreamResult
	args := []string{"stream", "--to", p.Addr(paths.BenchPort).String(),
		"--duration", r.cfg.Duration.String(), "--streams", strconv.Itoa(streams)}
	if rate > 0 {
		args = append(args, "--rate", strconv.FormatFloat(rate, 'f', 0, 64))
	}
	if err := r.netbench(p, &s, args...); err != nil {
		return 0, 0, err
	}
	return float64(s.Bytes), s.Seconds, nil
}

// netbench runs one netbench client in the path's client namespace,
// pinned to clientCPU, and decodes its JSON result into out.
func (r *run) netbench(p *paths.Path, out any, args ...string) error {
	var buf syncBuffer
	proc := paths.Start(r.t, p.Client, &buf, clientCPU, append([]string{r.cfg.Bench, "netbench"}, args...)...)
	if err := proc.Wait(r.cfg.Duration + 30*time.Second); err != nil {
		return fmt.Errorf("netbench %s: %w: %s", args[0], err, trim(buf.String(), 300))
	}
	if err := json.Unmarshal(buf.Bytes(), out); err != nil {
		return fmt.Errorf("netbench %s: %w: %q", args[0], err, trim(buf.String(), 300))
	}
	return nil
}

// drops reads the daoli drop counters of every agent, for daoli's paths.
func (r *run) drops(p *paths.Path) map[string]uint64 {
	if p.World != r.cluster.World {
		return nil
	}
	total := map[string]uint64{}
	for i := range r.cluster.World.Servers {
		ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
		st, err := r.cluster.Agent(i).Status(ctx)
		cancel()
		if err != nil {
			continue
		}
		for k, n := range st.Drops {
			total[k] += n
		}
	}
	return total
}

// dropsSince adds what daoli dropped during a measurement to the results.
func (r *run) dropsSince(p *paths.Path, what string, before map[string]uint64) {
	if before == nil {
		return
	}
	for k, n := range r.drops(p) {
		if d := n - before[k]; d > 0 {
			r.res.addDrops(p.Key+" "+what, k, d)
		}
	}
}

// dialIn returns a netbench.Dial that opens its sockets inside ns.
func dialIn(ns *testbed.Namespace) netbench.Dial { return ns.DialContext }

// retry calls f until it succeeds or timeout passes.
func retry(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a process's writer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }

// watch is a syncBuffer that closes seen when want appears in it.
type watch struct {
	syncBuffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watch) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

func trim(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
