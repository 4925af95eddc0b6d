package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The markers between which WriteReadme puts the results.
const (
	StartMarker = "<!-- results start -->"
	EndMarker   = "<!-- results end -->"
)

// num formats v with digits decimals and thousands separators.
func num(v float64, digits int) string {
	s := strconv.FormatFloat(v, 'f', digits, 64)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String()
	if neg {
		out = "-" + out
	}
	if frac != "" {
		out += "." + frac
	}
	return out
}

func mib(b uint64) string { return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + " MiB" }

// Markdown renders the results as the tables benchmarks/README.md shows.
func (r *Results) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	e := r.Env
	p("Measured %s on %s (%d CPUs, %s), Linux %s; %s; %s; %s; daoli %s%s.",
		e.Date, e.CPU, e.CPUs, e.Memory, e.Kernel, e.IPerf, e.IPTables, e.Go, e.Daoli, commit(e.Commit))
	p("")
	if e.Busy() {
		p("**Measured while the machine was busy**: other work kept %.0f %% of the CPUs busy in the second before the run and %.0f %% (median) around the CPU-cost measurements; load average %s before, %s after. Treat absolute numbers as rough; the ratios, taken within each round, suffer less.",
			e.BusyBefore*100, e.BusyDuring*100, e.LoadBefore, e.LoadAfter)
	} else {
		p("The machine was quiet: other work kept %.0f %% of the CPUs busy in the second before the run and %.0f %% (median) around the CPU-cost measurements; load average %s before, %s after.",
			e.BusyBefore*100, e.BusyDuring*100, e.LoadBefore, e.LoadAfter)
	}
	p("")
	mode := ""
	if r.Config.Quick {
		mode = " **Quick mode (smoke test): one short round, not a measurement.**"
	}
	p("%d round(s) of %.0f s per figure, the paths interleaved (each round starts at another path); each cell is the median over the rounds, and (×r) the median of the ratio to the baseline of the same round, which the goals compare. Server processes pinned to CPU 0, clients to CPU 1. The whole run took %.0f s.%s",
		r.Config.Rounds, r.Config.DurationSeconds, r.Seconds, mode)
	p("")

	// The data path.
	p("### Data path")
	p("")
	head := "| figure |"
	sep := "| --- |"
	for _, pi := range r.Paths {
		head += " " + pi.Key + " |"
		sep += " ---: |"
	}
	p("%s", head)
	p("%s", sep)
	for _, m := range Metrics {
		row := fmt.Sprintf("| %s (%s) |", m.Label, m.Unit)
		for _, pi := range r.Paths {
			f, ok := r.fig(pi.Key, m.Key)
			switch {
			case !ok:
				row += " failed |"
			case pi.Key == "baseline":
				row += " " + num(f.Median, m.Digits) + " |"
			default:
				mark := ""
				if m.Throughput && pi.Throughput == "netbench" {
					mark = " †"
				}
				ratio := fmt.Sprintf("%.2f×", f.Ratio)
				if f.Ratio == 0 {
					ratio = "n/a" // the baseline's figure was 0
				}
				row += fmt.Sprintf(" %s (%s)%s |", num(f.Median, m.Digits), ratio, mark)
			}
		}
		p("%s", row)
	}
	p("")
	var bg []float64
	for _, rd := range r.Rounds {
		for _, v := range rd.Values {
			if b, ok := v["cpu_background"]; ok {
				bg = append(bg, b)
			}
		}
	}
	if len(bg) > 0 {
		p("CPU cost is the busy time of all CPUs in /proc/stat during an iperf3 run at a fixed rate, per Gbit received, less what other work kept busy in the half seconds before and after it (%.0f %% of the CPUs, median; max %.0f %%); the JSON keeps the raw figures too.",
			median(bg)*100, percentile(bg, 100)*100)
		p("")
	}
	if e := r.EBPF; e != nil {
		p("daoli's eBPF programs, timed apart by the kernel's bpf run-time statistics during one more UDP run on the daoli path (%s packets, %s packets/s): **%s ns per packet** in all; %s. At that rate the sending CPU spends %s ns per packet on the whole path.",
			num(float64(e.Packets), 0), num(e.PPS, 0), num(e.NsPerPacket, 0), e.programs(), num(1e9/e.PPS, 0))
		p("")
	}
	for _, pi := range r.Paths {
		p("- **%s**: %s, MTU %d", pi.Key, pi.Title, pi.MTU)
	}
	for _, pi := range r.Paths {
		if pi.Throughput == "netbench" {
			p("")
			p("† %s: throughput and CPU cost from `netbench stream` (and compared with the baseline's `netbench stream` of the same round): iperf3 cannot run against a balanced service, because its control and data connections are separate flows that go to different backends.", pi.Key)
			break
		}
	}
	p("")

	if len(r.Goals) > 0 {
		p("### Goals")
		p("")
		p("| goal | measured | met? |")
		p("| --- | --- | --- |")
		for _, g := range r.Goals {
			met := "**no**"
			if g.Met {
				met = "yes"
			}
			p("| %s | %s | %s |", g.Goal, g.Measured, met)
		}
		p("")
	}

	if c := r.Control; c != nil {
		p("### Control plane")
		p("")
		p("| figure | value |")
		p("| --- | ---: |")
		p("| endpoint registrations, %d parallel clients over HTTP, each fsynced (%s registrations) | %s/s |", c.Parallel, num(float64(c.Registrations), 0), num(c.PerSecond, 0))
		p("| the same burst, until programmed on every server (%d agents) | %s/s |", c.Agents, num(c.ProgrammedPerSecond, 0))
		if c.BatchSize > 0 {
			p("| endpoint registrations in batches of %d (one request, one transaction each), %d parallel clients (%s registrations) | %s/s |", c.BatchSize, c.BatchParallel, num(float64(c.BatchRegistrations), 0), num(c.BatchPerSecond, 0))
		}
		for _, l := range []Latency{c.Before, c.After} {
			p("| registration → programmed on every server, %s endpoints registered (%d samples; registry ack p50 %.1f ms) | p50 %.1f ms, p99 %.1f ms |",
				num(float64(l.Registered), 0), l.Samples, l.AckP50ms, l.P50ms, l.P99ms)
		}
		p("")
	}

	if m := r.Memory; m != nil {
		p("### Map memory")
		p("")
		p("Synthetic endpoints (%s) applied to a dataplane in a private bpffs; memory as the kernel reports it (memlock).", m.Shape)
		p("")
		p("| endpoints | with today's map sizes | Apply | all maps | endpoint maps sized for this many |")
		p("| ---: | --- | ---: | ---: | ---: |")
		for _, s := range m.Sizes {
			status := "fits"
			if s.Error != "" {
				status = "**does not fit**: " + trim(s.Error, 120)
			}
			resized := "-"
			for _, rs := range m.Resized {
				if rs.Endpoints == s.Endpoints {
					resized = mib(rs.Memlock)
				}
			}
			p("| %s | %s | %.2f s | %s | %s |", num(float64(s.Endpoints), 0), status, s.ApplySeconds, mib(s.Memlock), resized)
		}
		p("")
		if m.Fits > 0 {
			v := "computed"
			if m.FitsVerified {
				v = "applied"
			}
			p("- As built, the maps hold at most **%s endpoints** of this shape (%s): %s stops it.", num(float64(m.Fits), 0), v, m.FitsLimit)
		}
		p("- All maps together hold %s whatever the number of endpoints: they are preallocated.", mib(m.TotalMemlock))
		if m.BytesPerEndpoint > 0 {
			p("- Per endpoint: **%s bytes** (slope between the endpoint maps resized for %s and %s endpoints); %s bytes as an endpoint's share of today's preallocated maps.",
				num(m.BytesPerEndpoint, 0), num(float64(m.Resized[0].Endpoints), 0), num(float64(m.Resized[len(m.Resized)-1].Endpoints), 0), num(m.BytesPerEndpointBuilt, 0))
		} else {
			p("- Per endpoint: %s bytes as an endpoint's share of today's preallocated maps.", num(m.BytesPerEndpointBuilt, 0))
		}
		flow := fmt.Sprintf("- Per flow: **%s bytes**: two entries (CT_OUT, CT_REV) of the conntrack LRU (%s entries as built)", num(m.BytesPerFlow, 0), num(float64(m.ConntrackMaxEntries), 0))
		if m.BytesPerFlowResized > 0 {
			flow += fmt.Sprintf("; %s bytes measured between two sizes of it", num(m.BytesPerFlowResized, 0))
		}
		p("%s.", flow)
		if m.BalanceServices > 0 {
			p("- Services in balance mode (the mapper's default) with one backend take no Maglev table: %d of them applied. Services with two or more active backends share 1024 tables; beyond those, a service sends its new flows to one backend (counted) instead of failing the server's Apply.", m.BalanceServices)
		} else if m.BalanceError != "" {
			p("- Balance services: %s.", trim(m.BalanceError, 160))
		}
		p("")
	}

	if h := r.HA; h != nil && h.Control != nil {
		bolt, etcd := r.Control, h.Control
		p("### Registry on etcd")
		p("")
		p("%d etcd members and %d `daoli mapper --etcd` processes on the fabric, a cluster of %d servers of its own; the same measurements as above, beside the bbolt registry's of this run.", h.Members, h.Mappers, etcd.Agents)
		p("")
		p("| figure | bbolt, 1 mapper | etcd, %d mappers |", h.Mappers)
		p("| --- | ---: | ---: |")
		row := func(label string, f func(c *Control) string) {
			b := "-"
			if bolt != nil {
				b = f(bolt)
			}
			p("| %s | %s | %s |", label, b, f(etcd))
		}
		row(fmt.Sprintf("registrations, %d parallel clients, one per request", etcd.Parallel), func(c *Control) string { return num(c.PerSecond, 0) + "/s" })
		row(fmt.Sprintf("registrations in batches of %d, %d parallel clients", etcd.BatchSize, etcd.BatchParallel), func(c *Control) string { return num(c.BatchPerSecond, 0) + "/s" })
		row("registration → programmed on every server, before the bursts", func(c *Control) string {
			return fmt.Sprintf("p50 %.1f ms, p99 %.1f ms (%s registered)", c.Before.P50ms, c.Before.P99ms, num(float64(c.Before.Registered), 0))
		})
		row("registration → programmed on every server, after the bursts", func(c *Control) string {
			return fmt.Sprintf("p50 %.1f ms, p99 %.1f ms (%s registered)", c.After.P50ms, c.After.P99ms, num(float64(c.After.Registered), 0))
		})
		row("registry ack of one registration, p50", func(c *Control) string { return fmt.Sprintf("%.1f ms", c.Before.AckP50ms) })
		p("")
		p("| failover gap on the etcd cluster | runs | p50 | p99 | max |")
		p("| --- | ---: | ---: | ---: | ---: |")
		p("| control plane whole | %d | %.1f ms | %.1f ms | %.1f ms |", h.Failover.Runs, h.Failover.P50ms, h.Failover.P99ms, h.Failover.MaxMs)
		p("| after killing %s | %d | %.1f ms | %.1f ms | %.1f ms |", h.Killed, h.FailoverDegraded.Runs, h.FailoverDegraded.P50ms, h.FailoverDegraded.P99ms, h.FailoverDegraded.MaxMs)
		p("")
	}

	if mo := r.Mobility; mo != nil {
		p("### Mobility")
		p("")
		p("| figure | runs | p50 | p99 | max |")
		p("| --- | ---: | ---: | ---: | ---: |")
		p("| failover gap: master's container killed → first answer from the backup (a new connection every 5 ms) | %d | %.1f ms | %.1f ms | %.1f ms |",
			mo.Failover.Runs, mo.Failover.P50ms, mo.Failover.P99ms, mo.Failover.MaxMs)
		p("| live-migration pause: longest silence on one TCP connection (a round trip every 2 ms) around `move` | %d | %.1f ms | %.1f ms | %.1f ms |",
			mo.Migration.Runs, mo.Migration.P50ms, mo.Migration.P99ms, mo.Migration.MaxMs)
		p("")
		p("The move call itself took %.1f ms (p50); the connection broke in %d of %d moves.", mo.MoveP50ms, mo.MigrationBroken, mo.Migration.Runs+mo.MigrationBroken)
		p("")
	}

	if len(r.Drops) > 0 {
		p("### What daoli dropped during the measurements")
		p("")
		p("| measurement | packets by reason |")
		p("| --- | --- |")
		var ks []string
		for k := range r.Drops {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		for _, k := range ks {
			var parts []string
			for reason, n := range r.Drops[k] {
				parts = append(parts, fmt.Sprintf("%s %s", reason, num(float64(n), 0)))
			}
			slices.Sort(parts)
			p("| %s | %s |", k, strings.Join(parts, ", "))
		}
		p("")
	}
	if len(r.Errors) > 0 || len(r.Notes) > 0 {
		p("### Errors and notes")
		p("")
		for _, s := range r.Errors {
			p("- error: %s", s)
		}
		for _, s := range r.Notes {
			p("- %s", s)
		}
		p("")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func commit(c string) string {
	if c == "" {
		return ""
	}
	return ", commit " + c
}

// WriteReadme replaces what lies between StartMarker and EndMarker in the
// file at path with md.
func WriteReadme(path, md string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("update %s: %w", path, err)
	}
	i := bytes.Index(b, []byte(StartMarker))
	j := bytes.Index(b, []byte(EndMarker))
	if i < 0 || j < i {
		return fmt.Errorf("update %s: %w", path, errors.New("no "+StartMarker+" ... "+EndMarker+" markers"))
	}
	var out bytes.Buffer
	out.Write(b[:i+len(StartMarker)])
	out.WriteString("\n\n" + md + "\n")
	out.Write(b[j:])
	return os.WriteFile(path, out.Bytes(), 0o644)
}
