package harness

import (
	"fmt"

	"github.com/daolinet/daoli/benchmarks/netbench"
	"math"
	"slices"
	"strings"
)

// Results is everything one Run measured; it is what the JSON file holds.
type Results struct {
	Env    Env        `json:"env"`
	Config RunConfig  `json:"config"`
	Paths  []PathInfo `json:"paths"`
	// Rounds holds every figure of every round: path -> metric -> value.
	Rounds []Round `json:"rounds"`
	// Summary is path -> metric -> median over the rounds.
	Summary  map[string]map[string]Figure `json:"summary"`
	Control  *Control                     `json:"control,omitempty"`
	Mobility *Mobility                    `json:"mobility,omitempty"`
	HA       *HA                          `json:"ha,omitempty"`
	Memory   *Memory                      `json:"memory,omitempty"`
	EBPF     *EBPFCost                    `json:"ebpf,omitempty"`
	Goals    []Goal                       `json:"goals"`
	// Drops are what daoli's dataplane dropped during each measurement
	// ("path measurement" -> reason -> packets, summed over rounds).
	Drops map[string]map[string]uint64 `json:"drops,omitempty"`
	// Errors are measurements that failed; Notes what the harness saw
	// worth telling (failed connections, broken migrations).
	Errors  []string `json:"errors,omitempty"`
	Notes   []string `json:"notes,omitempty"`
	Seconds float64  `json:"seconds"`
	// Prefixes start the names of every namespace the run created; none
	// is left when Run returns.
	Prefixes []string `json:"namespace_prefixes"`

	crr map[string]*crrFailures
}

// Env is the machine and the versions.
type Env struct {
	Date     string `json:"date"`
	CPU      string `json:"cpu"`
	CPUs     int    `json:"cpus"`
	Memory   string `json:"memory"`
	Kernel   string `json:"kernel"`
	IPerf    string `json:"iperf3"`
	IPTables string `json:"iptables"`
	Go       string `json:"go"`
	Daoli    string `json:"daoli"`
	Commit   string `json:"commit,omitempty"`
	// BusyBefore is the fraction of all CPUs others kept busy in the
	// second before the run; the load averages bracket it.
	BusyBefore float64 `json:"busy_before"`
	// BusyDuring is the median of what others kept busy around each
	// CPU-cost measurement.
	BusyDuring float64 `json:"busy_during"`
	LoadBefore string  `json:"load_before"`
	LoadAfter  string  `json:"load_after"`
}

// Busy reports whether others used the machine enough to skew numbers.
func (e Env) Busy() bool { return max(e.BusyBefore, e.BusyDuring) > 0.10 }

// RunConfig is the Config a Run used.
type RunConfig struct {
	Quick           bool    `json:"quick"`
	Rounds          int     `json:"rounds"`
	DurationSeconds float64 `json:"duration_seconds"`
	MobilityRuns    int     `json:"mobility_runs"`
	Registrations   int     `json:"registrations"`
	Latencies       int     `json:"latencies"`
	MemorySizes     []int   `json:"memory_sizes"`
}

// PathInfo describes a measured path.
type PathInfo struct {
	Key   string `json:"key"`
	Title string `json:"title"`
	MTU   int    `json:"mtu"`
	// Throughput names the tool of the throughput figures: iperf3, or
	// netbench where iperf3 cannot run.
	Throughput string `json:"throughput_tool"`
}

// Round is one round over every path.
type Round struct {
	Index  int                           `json:"index"`
	Order  []string                      `json:"order"`
	Values map[string]map[string]float64 `json:"values"`
}

// Figure is one metric of one path over the rounds.
type Figure struct {
	Median float64 `json:"median"`
	// Ratio is the median over rounds of value / baseline of the same
	// round (the baseline measured with the same tool); 0 when unknown.
	Ratio float64 `json:"ratio"`
	N     int     `json:"n"`
}

// Metric describes one figure of the data path.
type Metric struct {
	Key, Label, Unit string
	// HigherBetter says which way is better.
	HigherBetter bool
	// Throughput marks the figures iperf3 measures (netbench stream where
	// it cannot run).
	Throughput bool
	// Digits is the precision shown.
	Digits int
}

// Metrics are the data path's figures, in table order.
var Metrics = []Metric{
	{"tcp1", "TCP throughput, 1 stream", "Gbit/s", true, true, 2},
	{"tcp4", "TCP throughput, 4 streams", "Gbit/s", true, true, 2},
	{"cpu_per_gbit", fmt.Sprintf("CPU cost at a fixed %g Gbit/s", fixedRate/1e9), "CPU-s/Gbit", false, true, 3},
	{"rr_p50", "request/response latency p50", "µs", false, false, 1},
	{"rr_p99", "request/response latency p99", "µs", false, false, 1},
	{"rr_tps", "request/response transactions", "/s", true, false, 0},
	{"crr", "new connections (connect, request, close)", "/s", true, false, 0},
	{"udp_pps", "UDP packets, 18-byte payload, received", "packets/s", true, false, 0},
}

// EBPFCost is the run time of daoli's programs during one UDP run of small
// packets over the daoli path, from the kernel's bpf run-time statistics.
type EBPFCost struct {
	Packets     uint64        `json:"packets"`
	PPS         float64       `json:"pps"`
	NsPerPacket float64       `json:"ns_per_packet"`
	Programs    []ProgramCost `json:"programs"`
}

// ProgramCost is one program's share of EBPFCost.
type ProgramCost struct {
	Name          string  `json:"name"`
	Runs          uint64  `json:"runs"`
	NsPerRun      float64 `json:"ns_per_run"`
	RunsPerPacket float64 `json:"runs_per_packet"`
}

// Control is the control plane's figures.
type Control struct {
	Agents   int `json:"agents"`
	Parallel int `json:"parallel_clients"`
	// Registrations were made by Parallel clients at once: PerSecond
	// counts them acknowledged by the registry (fsynced),
	// ProgrammedPerSecond until every agent had applied the last one.
	Registrations       int     `json:"registrations"`
	PerSecond           float64 `json:"per_second"`
	ProgrammedPerSecond float64 `json:"programmed_per_second"`
	// BatchRegistrations were made in batches of BatchSize endpoints (one
	// request, one transaction each) by BatchParallel clients at once.
	BatchSize          int     `json:"batch_size"`
	BatchParallel      int     `json:"batch_parallel_clients"`
	BatchRegistrations int     `json:"batch_registrations"`
	BatchPerSecond     float64 `json:"batch_per_second"`
	// Before and After time single registrations until programmed on
	// every server, before and after the burst.
	Before Latency `json:"before"`
	After  Latency `json:"after"`
}

// Latency is the registration-to-programmed distribution.
type Latency struct {
	Registered int     `json:"endpoints_registered"`
	Samples    int     `json:"samples"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	AckP50ms   float64 `json:"registry_ack_p50_ms"`
}

// HA is the figures of a registry on etcd: the control plane's, and the
// failover gap with the control plane whole and degraded.
type HA struct {
	Members          int          `json:"etcd_members"`
	Mappers          int          `json:"mappers"`
	Control          *Control     `json:"control"`
	Failover         Distribution `json:"failover_gap"`
	Killed           string       `json:"killed"`
	FailoverDegraded Distribution `json:"failover_gap_degraded"`
}

// Mobility is the failover and live-migration figures.
type Mobility struct {
	Failover             Distribution `json:"failover_gap"`
	FailoverFailedProbes int          `json:"failover_failed_probes"`
	Migration            Distribution `json:"migration_pause"`
	MoveP50ms            float64      `json:"move_call_p50_ms"`
	MigrationBroken      int          `json:"migration_broken"`
}

// Distribution is a set of gaps in milliseconds.
type Distribution struct {
	Runs    int       `json:"runs"`
	P50ms   float64   `json:"p50_ms"`
	P99ms   float64   `json:"p99_ms"`
	MaxMs   float64   `json:"max_ms"`
	Samples []float64 `json:"samples_ms"`
}

func distribution(v []float64) Distribution {
	d := Distribution{Runs: len(v), Samples: v}
	d.P50ms, d.P99ms, d.MaxMs = percentile(v, 50), percentile(v, 99), percentile(v, 100)
	return d
}

// Memory is the dataplane maps' memory.
type Memory struct {
	Shape string       `json:"shape"`
	Sizes []MemorySize `json:"sizes"`
	// EntriesPerEndpoint is map name -> entries one endpoint takes.
	EntriesPerEndpoint map[string]float64 `json:"entries_per_endpoint"`
	// Fits is the largest number of endpoints the maps hold as built,
	// FitsLimit the map that stops it.
	Fits         int    `json:"fits"`
	FitsLimit    string `json:"fits_limit"`
	FitsVerified bool   `json:"fits_verified"`
	// TotalMemlock is what all maps hold as built: preallocated, the
	// same for any number of endpoints.
	TotalMemlock uint64 `json:"total_memlock"`
	// BytesPerEndpointBuilt is an endpoint's share of the preallocated
	// maps it takes entries in; BytesPerEndpoint the slope measured
	// between maps resized for each size (Resized).
	BytesPerEndpointBuilt float64   `json:"bytes_per_endpoint_built"`
	BytesPerEndpoint      float64   `json:"bytes_per_endpoint"`
	Resized               []Resized `json:"resized,omitempty"`
	// BytesPerFlow is two conntrack entries (CT_OUT, CT_REV) of the LRU
	// as built; BytesPerFlowResized the slope between two sizes of it.
	ConntrackMaxEntries uint32 `json:"conntrack_max_entries"`
	// BalanceServices is how many services in balance mode (one Maglev
	// table each) Apply takes; BalanceError what one more gets. -1: more
	// than tried.
	BalanceServices     int     `json:"balance_services"`
	BalanceError        string  `json:"balance_error,omitempty"`
	BytesPerFlow        float64 `json:"bytes_per_flow"`
	BytesPerFlowResized float64 `json:"bytes_per_flow_resized"`
}

// MemorySize is one Apply of synthetic endpoints.
type MemorySize struct {
	Endpoints    int         `json:"endpoints"`
	Error        string      `json:"error,omitempty"`
	ApplySeconds float64     `json:"apply_seconds"`
	Memlock      uint64      `json:"memlock"`
	Maps         []MapMemory `json:"maps"`
}

// MapMemory is one map's size as the kernel reports it.
type MapMemory struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	MaxEntries uint32 `json:"max_entries"`
	Entries    int    `json:"entries"`
	Memlock    uint64 `json:"memlock"`

	shape bpfMap // to create resized copies
}

// Resized is the endpoint maps created with room for Endpoints.
type Resized struct {
	Endpoints int    `json:"endpoints"`
	Memlock   uint64 `json:"memlock"`
}

// Goal is one of daoli's goals and whether this run met it.
type Goal struct {
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

func (r *Results) note(s string) { r.Notes = append(r.Notes, s) }

// crrFailures are the failed connections of a path's crr runs.
type crrFailures struct {
	rounds, failed, total int64
	first                 string
}

// crrFailed records connections that failed in a crr run; summarize
// turns them into one note per path.
func (r *Results) crrFailed(path string, c netbench.CRRResult) {
	if r.crr == nil {
		r.crr = map[string]*crrFailures{}
	}
	f := r.crr[path]
	if f == nil {
		f = &crrFailures{first: c.FirstError}
		r.crr[path] = f
	}
	f.rounds++
	f.failed += c.Errors
	f.total += c.Errors + c.Connections
}

func (r *Results) addDrops(what, reason string, n uint64) {
	if r.Drops == nil {
		r.Drops = map[string]map[string]uint64{}
	}
	if r.Drops[what] == nil {
		r.Drops[what] = map[string]uint64{}
	}
	r.Drops[what][reason] += n
}

// percentile is the nearest-rank percentile p (0-100) of v; 0 for none.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// baseKey is the key of the baseline figure a path's metric compares to.
func (r *Results) baseKey(path string, m Metric) string {
	for _, p := range r.Paths {
		if p.Key == path && m.Throughput && p.Throughput == "netbench" {
			return m.Key + ".netbench"
		}
	}
	return m.Key
}

// summarize computes medians, ratios, the goals and the notes.
func (r *Results) summarize() {
	for _, p := range r.Paths {
		if f := r.crr[p.Key]; f != nil {
			r.note(fmt.Sprintf("%s crr: %d of %d connections failed, in %d of %d round(s) (first: %s)", p.Key, f.failed, f.total, f.rounds, len(r.Rounds), f.first))
		}
	}
	r.Summary = map[string]map[string]Figure{}
	for _, p := range r.Paths {
		r.Summary[p.Key] = map[string]Figure{}
		for _, m := range Metrics {
			var vals, ratios []float64
			for _, rd := range r.Rounds {
				v, ok := rd.Values[p.Key][m.Key]
				if !ok {
					continue
				}
				vals = append(vals, v)
				if b := rd.Values["baseline"][r.baseKey(p.Key, m)]; b > 0 {
					ratios = append(ratios, v/b)
				}
			}
			if len(vals) > 0 {
				r.Summary[p.Key][m.Key] = Figure{Median: median(vals), Ratio: median(ratios), N: len(vals)}
			}
		}
	}
	var bg []float64
	for _, rd := range r.Rounds {
		for _, v := range rd.Values {
			if b, ok := v["cpu_background"]; ok {
				bg = append(bg, b)
			}
		}
	}
	r.Env.BusyDuring = median(bg)
	r.goals()
}

// better reports whether a beats b on m.
func better(m Metric, a, b float64) bool {
	if m.HigherBetter {
		return a > b
	}
	return a < b
}

// score is what goals compare: the median ratio to the baseline of the
// same round, which takes out drift between rounds; the median itself
// when there is no ratio.
func score(f Figure) float64 {
	if f.Ratio > 0 {
		return f.Ratio
	}
	return f.Median
}

func (r *Results) fig(path, metric string) (Figure, bool) {
	f, ok := r.Summary[path][metric]
	return f, ok
}

func (r *Results) goals() {
	r.Goals = nil
	const d = "daoli"
	_, daoli := r.Summary[d]
	// Throughput against plain routing.
	if _, ok := r.Summary["routes"]; ok && daoli {
		var parts []string
		met := true
		for _, k := range []string{"tcp1", "tcp4"} {
			a, _ := r.fig(d, k)
			b, _ := r.fig("routes", k)
			met = met && score(a) >= score(b) && a.N > 0
			parts = append(parts, fmt.Sprintf("%s %.2f× vs %.2f× the baseline (%.2f vs %.2f Gbit/s)", k, a.Ratio, b.Ratio, a.Median, b.Median))
		}
		r.Goals = append(r.Goals, Goal{"daoli ≥ plain routing in throughput", strings.Join(parts, "; "), met})
	}
	// Latency within 5 % of the baseline.
	if daoli {
		var parts []string
		met := true
		for _, k := range []string{"rr_p50", "rr_p99"} {
			a, _ := r.fig(d, k)
			met = met && a.Ratio > 0 && a.Ratio <= 1.05
			parts = append(parts, fmt.Sprintf("%s %.2f× the baseline", strings.TrimPrefix(k, "rr_"), a.Ratio))
		}
		r.Goals = append(r.Goals, Goal{"daoli within 5 % of the baseline in latency", strings.Join(parts, "; "), met})
	}
	// Ahead of VXLAN and bridge + NAT on every figure, and daoli's
	// egress and ingress ahead of Docker's. ingress-remote has no goal:
	// a port Docker publishes leads only to the server it was dialled
	// on, so nothing of Docker's takes that extra hop.
	for _, other := range []struct{ ours, key, name string }{
		{d, "vxlan", "VXLAN"}, {d, "nat", "bridge + NAT"}, {"egress", "nat-egress", "bridge + MASQUERADE (egress)"},
		{"ingress", "nat-ingress", "bridge + DNAT (ingress)"},
	} {
		if _, ok := r.Summary[other.key]; !ok {
			continue
		}
		if _, ok := r.Summary[other.ours]; !ok {
			continue
		}
		var behind []string
		for _, m := range Metrics {
			a, aok := r.fig(other.ours, m.Key)
			b, bok := r.fig(other.key, m.Key)
			if !aok || !bok || !better(m, score(a), score(b)) {
				behind = append(behind, fmt.Sprintf("%s (%.2f× vs %.2f×)", m.Key, a.Ratio, b.Ratio))
			}
		}
		measured := "ahead on all " + fmt.Sprint(len(Metrics)) + " figures"
		if len(behind) > 0 {
			measured = "not ahead on: " + strings.Join(behind, ", ")
		}
		r.Goals = append(r.Goals, Goal{other.ours + " ahead of " + other.name + " on every figure", measured, len(behind) == 0})
	}
	if r.Mobility != nil {
		f := r.Mobility.Failover
		r.Goals = append(r.Goals, Goal{"failover gap p99 ≤ 100 ms",
			fmt.Sprintf("p99 %.1f ms, p50 %.1f ms over %d runs", f.P99ms, f.P50ms, f.Runs), f.Runs > 0 && f.P99ms <= 100})
	}
	if h := r.HA; h != nil && h.Control != nil {
		c := h.Control
		r.Goals = append(r.Goals, Goal{"registry on etcd: ≥ 10,000 registrations/s with batches",
			fmt.Sprintf("%s/s in batches of %d (%s/s one by one)", num(c.BatchPerSecond, 0), c.BatchSize, num(c.PerSecond, 0)), c.BatchPerSecond >= 10000})
		r.Goals = append(r.Goals, Goal{fmt.Sprintf("registry on etcd, %d mappers: registration → programmed on every server p99 ≤ 20 ms", h.Mappers),
			fmt.Sprintf("p99 %.1f ms with %s endpoints registered, %.1f ms with %s", c.Before.P99ms, num(float64(c.Before.Registered), 0), c.After.P99ms, num(float64(c.After.Registered), 0)),
			c.Before.Samples > 0 && c.Before.P99ms <= 20 && c.After.P99ms <= 20})
	}
}
