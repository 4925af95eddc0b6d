package harness

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNum(t *testing.T) {
	tests := []struct {
		v      float64
		digits int
		want   string
	}{
		{0, 0, "0"},
		{999, 0, "999"},
		{1000, 0, "1,000"},
		{1234567.891, 2, "1,234,567.89"},
		{-12345, 1, "-12,345.0"},
	}
	for _, tt := range tests {
		if got := num(tt.v, tt.digits); got != tt.want {
			t.Errorf("num(%v, %d) = %q, want %q", tt.v, tt.digits, got, tt.want)
		}
	}
}

func TestPercentileAndMedian(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3}
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"p50", percentile(v, 50), 3},
		{"p99", percentile(v, 99), 5},
		{"p100", percentile(v, 100), 5},
		{"p0", percentile(v, 0), 1},
		{"median odd", median(v), 3},
		{"median even", median([]float64{4, 1, 3, 2}), 2.5},
		{"none", percentile(nil, 50), 0},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	if !cmp.Equal(v, []float64{5, 1, 4, 2, 3}) {
		t.Errorf("percentile reordered its input: %v", v)
	}
}

// results is two rounds over six paths; the service's throughput is
// compared with the baseline's netbench figures.
func results() *Results {
	vals := func(scale float64) map[string]float64 {
		return map[string]float64{"tcp1": 10 * scale, "tcp4": 20 * scale, "cpu_per_gbit": 0.5 / scale, "rr_p50": 50 / scale,
			"rr_p99": 100 / scale, "rr_tps": 10000 * scale, "crr": 5000 * scale, "udp_pps": 1e5 * scale}
	}
	round := func(i int, base float64) Round {
		b := vals(base)
		b["tcp1.netbench"], b["tcp4.netbench"], b["cpu_per_gbit.netbench"] = 5*base, 5*base, 1/base
		d := vals(base * 0.99)
		d["crr"] = 100 // the offsets
		return Round{Index: i, Values: map[string]map[string]float64{
			"baseline": b, "routes": vals(base * 0.9), "vxlan": vals(base * 0.8), "daoli": d, "service": vals(base),
			"nat-ingress": vals(base * 0.7), "ingress": vals(base * 0.95),
		}}
	}
	r := &Results{
		Paths: []PathInfo{{Key: "baseline", Throughput: "iperf3"}, {Key: "routes", Throughput: "iperf3"}, {Key: "vxlan", Throughput: "iperf3"},
			{Key: "daoli", Throughput: "iperf3"}, {Key: "service", Throughput: "netbench"},
			{Key: "nat-ingress", Throughput: "iperf3"}, {Key: "ingress", Throughput: "iperf3"}},
		Rounds:   []Round{round(1, 1), round(2, 2)},
		Mobility: &Mobility{Failover: distribution([]float64{40, 50, 60})},
	}
	r.summarize()
	return r
}

func TestSummarize(t *testing.T) {
	r := results()
	if f := r.Summary["routes"]["tcp1"]; f.Median != 13.5 || f.N != 2 || f.Ratio < 0.899 || f.Ratio > 0.901 {
		t.Errorf("routes tcp1 %+v, want median 13.5 and ratio 0.9", f)
	}
	// 10/5 in both rounds: against the baseline's netbench figure.
	if f := r.Summary["service"]["tcp1"]; f.Ratio != 2 {
		t.Errorf("service tcp1 ratio %v, want 2 (against netbench)", f.Ratio)
	}
	got := map[string]bool{}
	for _, g := range r.Goals {
		got[g.Goal] = g.Met
	}
	want := map[string]bool{
		"daoli ≥ plain routing in throughput":                      true,
		"daoli within 5 % of the baseline in latency":              true,
		"daoli ahead of VXLAN on every figure":                     false, // crr
		"ingress ahead of bridge + DNAT (ingress) on every figure": true,
		"failover gap p99 ≤ 100 ms":                                true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("goals (-want +got):\n%s", diff)
	}
	md := r.Markdown()
	for _, s := range []string{"| TCP throughput, 1 stream (Gbit/s) | 15.00 |", "(2.00×) †", "crr (0.01× vs 0.80×)", "| **no** |"} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}

// TestGoalsWithoutDaoli: a run without the daoli path (--only) still
// judges the goals of the paths it measured.
func TestGoalsWithoutDaoli(t *testing.T) {
	r := results()
	r.Paths = slices.DeleteFunc(r.Paths, func(p PathInfo) bool { return p.Key == "daoli" })
	for _, rd := range r.Rounds {
		delete(rd.Values, "daoli")
	}
	r.summarize()
	got := map[string]bool{}
	for _, g := range r.Goals {
		got[g.Goal] = g.Met
	}
	want := map[string]bool{
		"ingress ahead of bridge + DNAT (ingress) on every figure": true,
		"failover gap p99 ≤ 100 ms":                                true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("goals (-want +got):\n%s", diff)
	}
}

func TestWriteReadme(t *testing.T) {
	path := filepath.Join(t.TempDir(), "README.md")
	orig := "# Benchmarks\n\nintro\n\n" + StartMarker + "\nold table\n" + EndMarker + "\n\nnotes\n"
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := WriteReadme(path, "| new | table |\n"); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	want := "# Benchmarks\n\nintro\n\n" + StartMarker + "\n\n| new | table |\n\n" + EndMarker + "\n\nnotes\n"
	if diff := cmp.Diff(want, string(b)); diff != "" {
		t.Errorf("README (-want +got):\n%s", diff)
	}
	os.WriteFile(path, []byte("no markers"), 0o644)
	if err := WriteReadme(path, "x"); err == nil {
		t.Error("WriteReadme without markers succeeded")
	}
}
