package agent

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// metrics are the agent's own counters; the dataplane's are read at
// scrape time. Exposition is Prometheus text format 0.0.4.
type metrics struct {
	watchReconnects atomic.Int64
	snapshots       atomic.Int64
	markedDown      atomic.Int64
	healthChanges   atomic.Int64
	skipped         atomic.Int64 // changes that did not touch the dataplane
	excluded        atomic.Int64 // endpoints the last reconcile left out

	mu             sync.Mutex
	reconciles     int64
	reconcileSum   time.Duration
	reconcileLast  time.Duration
	revision       int64 // the model revision the last reconcile programmed
	endpoints      int
	localEndpoints int
}

func (m *metrics) observeReconcile(d time.Duration, rev int64, endpoints, local int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reconciles++
	m.reconcileSum += d
	m.reconcileLast = d
	m.revision, m.endpoints, m.localEndpoints = rev, endpoints, local
}

// programmed returns the model revision the last reconcile programmed.
func (m *metrics) programmed() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.revision
}

func (a *Agent) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		a.writeMetrics(w)
	})
	return mux
}

func (a *Agent) writeMetrics(w interface{ Write([]byte) (int, error) }) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	head := func(name, typ, help string) {
		p("# HELP %s %s", name, help)
		p("# TYPE %s %s", name, typ)
	}
	m := &a.m
	m.mu.Lock()
	head("daoli_agent_reconciles_total", "counter", "Reconciles of the dataplane with the registry.")
	p("daoli_agent_reconciles_total %d", m.reconciles)
	head("daoli_agent_reconcile_seconds_sum", "counter", "Time spent reconciling.")
	p("daoli_agent_reconcile_seconds_sum %g", m.reconcileSum.Seconds())
	head("daoli_agent_reconcile_last_seconds", "gauge", "Duration of the last reconcile.")
	p("daoli_agent_reconcile_last_seconds %g", m.reconcileLast.Seconds())
	head("daoli_agent_endpoints", "gauge", "Endpoints in the dataplane, by where they run.")
	p(`daoli_agent_endpoints{where="local"} %d`, m.localEndpoints)
	p(`daoli_agent_endpoints{where="remote"} %d`, m.endpoints-m.localEndpoints)
	m.mu.Unlock()
	head("daoli_agent_applied_revision", "gauge", "Registry revision the dataplane is current up to.")
	p("daoli_agent_applied_revision %d", a.model.current(m.programmed()))
	head("daoli_agent_registry_revision", "gauge", "Newest registry revision the agent has seen; the lag is this minus the applied revision.")
	p("daoli_agent_registry_revision %d", a.model.rev())
	head("daoli_agent_excluded_endpoints", "gauge", "Endpoints the dataplane refused and the last reconcile left out (should be 0).")
	p("daoli_agent_excluded_endpoints %d", m.excluded.Load())
	head("daoli_agent_changes_skipped_total", "counter", "Registry changes that did not touch the dataplane, so cost no reconcile.")
	p("daoli_agent_changes_skipped_total %d", m.skipped.Load())
	head("daoli_agent_watch_reconnects_total", "counter", "Times the change-log watch was resumed.")
	p("daoli_agent_watch_reconnects_total %d", m.watchReconnects.Load())
	head("daoli_agent_snapshots_total", "counter", "Registry snapshots loaded: one at start, then one per compaction the agent fell behind.")
	p("daoli_agent_snapshots_total %d", m.snapshots.Load())
	head("daoli_dataplane_map_writes_total", "counter", "Dataplane map entries written or deleted by reconciles.")
	p("daoli_dataplane_map_writes_total %d", a.dp.Writes())
	head("daoli_agent_marked_down_total", "counter", "Local endpoints marked down because their interface vanished.")
	p("daoli_agent_marked_down_total %d", m.markedDown.Load())
	head("daoli_agent_health_changes_total", "counter", "Endpoint state changes made by health checks.")
	p("daoli_agent_health_changes_total %d", m.healthChanges.Load())

	if fill, flows, err := a.dp.Fill(); err == nil {
		head("daoli_dataplane_flows", "gauge", "Flows in conntrack whose client is on this server.")
		p("daoli_dataplane_flows %d", flows)
		head("daoli_dataplane_map_entries", "gauge", "Entries in each dataplane hash map.")
		for _, f := range fill {
			p(`daoli_dataplane_map_entries{map=%q} %d`, f.Name, f.Entries)
		}
		head("daoli_dataplane_map_max_entries", "gauge", "Capacity of each dataplane hash map; conntrack evicts its oldest flows when full.")
		for _, f := range fill {
			p(`daoli_dataplane_map_max_entries{map=%q} %d`, f.Name, f.MaxEntries)
		}
	}
	head("daoli_dataplane_unbalanced_services", "gauge", "Balance services with no Maglev table (all taken): their new flows go to one backend. Should be 0.")
	p("daoli_dataplane_unbalanced_services %d", a.dp.Unbalanced())
	if drops, err := a.dp.DropCounters(); err == nil {
		head("daoli_dataplane_drops_total", "counter", "Packets the dataplane dropped, by reason.")
		var reasons []string
		byName := map[string]uint64{}
		for r, n := range drops {
			byName[r.String()] = n
			reasons = append(reasons, r.String())
		}
		sort.Strings(reasons)
		for _, r := range reasons {
			p(`daoli_dataplane_drops_total{reason=%q} %d`, r, byName[r])
		}
	}
	if counters, err := a.dp.EndpointCounters(); err == nil {
		head("daoli_dataplane_endpoint_packets_total", "counter", "Packets through local endpoints.")
		ids := make([]uint32, 0, len(counters))
		for id := range counters {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, id := range ids {
			c := counters[id]
			p(`daoli_dataplane_endpoint_packets_total{endpoint="%d",direction="rx"} %d`, id, c.RxPackets)
			p(`daoli_dataplane_endpoint_packets_total{endpoint="%d",direction="tx"} %d`, id, c.TxPackets)
		}
		head("daoli_dataplane_endpoint_bytes_total", "counter", "Bytes through local endpoints.")
		for _, id := range ids {
			c := counters[id]
			p(`daoli_dataplane_endpoint_bytes_total{endpoint="%d",direction="rx"} %d`, id, c.RxBytes)
			p(`daoli_dataplane_endpoint_bytes_total{endpoint="%d",direction="tx"} %d`, id, c.TxBytes)
		}
	}
}
