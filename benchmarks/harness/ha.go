package harness

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/daolinet/daoli/benchmarks/paths"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store/etcdtest"
)

// haMembers and haMappers shape the registry on etcd that ha measures.
const haMembers, haMappers = 3, 3

// ha measures a registry on etcd on a cluster of its own: the control
// plane's figures with haMembers etcd members and haMappers mappers, and
// the failover gap with the control plane whole and with one mapper and
// the etcd leader killed (SIGKILL).
func (r *run) ha() {
	logs := filepath.Join(r.logs, "ha")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	r.printf("registry on etcd: %d members and %d mappers in the fabric, a cluster of 3 servers of its own", haMembers, haMappers)
	bin, err := etcdtest.BinaryIn(r.cfg.Repo)
	if err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	c := paths.NewCluster(r.t, paths.ClusterConfig{Bin: r.cfg.Daoli, Logs: logs, Etcd: haMembers, Mappers: haMappers, EtcdBin: bin})
	h := &HA{Members: haMembers, Mappers: haMappers}
	// Failovers first, on a registry that holds few endpoints, as the
	// mobility part does: the control plane's thousands of registrations
	// slow every agent's reconcile, which the gaps would then include.
	if _, err := c.Mapper.CreateNetwork(r.ctx, mapper.NetworkSpec{Name: mobNetwork, Subnet: netip.MustParsePrefix("10.9.0.0/16")}); err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	h.Failover, _ = r.failovers(c, "etcd failover", 0)
	r.printf("failover gap, control plane whole, over %d runs: p50 %.1f ms, p99 %.1f ms", h.Failover.Runs, h.Failover.P50ms, h.Failover.P99ms)

	r.check()
	leader, err := c.Etcd.Leader()
	if err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	c.MapperProcs[0].Stop()
	leader.Kill()
	t0 := time.Now()
	if err := c.Etcd.WaitHealthy(30 * time.Second); err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	h.Killed = fmt.Sprintf("mapper 0 and etcd member %s (the leader); the others were healthy again %.0f ms later", leader.Name, ms(time.Since(t0)))
	h.FailoverDegraded, _ = r.failovers(c, "degraded failover", 100)
	r.printf("failover gap, %s: p50 %.1f ms, p99 %.1f ms over %d runs", h.Killed, h.FailoverDegraded.P50ms, h.FailoverDegraded.P99ms, h.FailoverDegraded.Runs)

	// Whole again for the control plane's figures: all mappers and members.
	r.check()
	if err := leader.Start(); err != nil {
		r.t.Fatalf("ha: restart etcd member %s: %v", leader.Name, err)
	}
	c.StartMapper(0)
	if err := c.Etcd.WaitHealthy(30 * time.Second); err != nil {
		r.t.Fatalf("ha: %v", err)
	}
	c.Settle(r.ctx)
	h.Control = r.measureControl(c, "etcd control plane")
	r.res.HA = h
}
