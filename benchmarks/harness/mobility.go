package harness

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/daolinet/daoli/benchmarks/netbench"
	"github.com/daolinet/daoli/benchmarks/paths"
	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
)

const mobNetwork = "mob"

// probeEvery is how often the failover probe opens a connection: the
// resolution of the failover gap.
const probeEvery = 5 * time.Millisecond

// pingEvery is the pause between round trips of the migration probe.
const pingEvery = 2 * time.Millisecond

// mobility measures failover and live-migration gaps on the cluster.
func (r *run) mobility() {
	c := r.cluster
	if _, err := c.Mapper.CreateNetwork(r.ctx, mapper.NetworkSpec{Name: mobNetwork, Subnet: netip.MustParsePrefix("10.9.0.0/16")}); err != nil {
		r.t.Fatalf("mobility: %v", err)
	}
	m := &Mobility{}
	r.printf("failover: %d runs, each a master (server-1) and a backup (server-2) of a new IP:Port, killed while a client on server-0 connects every %s", r.cfg.MobilityRuns, probeEvery)
	m.Failover, m.FailoverFailedProbes = r.failovers(c, "failover", 0)
	r.printf("failover gap over %d runs: p50 %.1f ms, p99 %.1f ms, max %.1f ms", m.Failover.Runs, m.Failover.P50ms, m.Failover.P99ms, m.Failover.MaxMs)

	r.check()
	r.migration(m)
	r.printf("live migration over %d moves: pause p50 %.1f ms, p99 %.1f ms; move call p50 %.1f ms; connection broken %d times",
		m.Migration.Runs, m.Migration.P50ms, m.Migration.P99ms, m.MoveP50ms, m.MigrationBroken)
	r.res.Mobility = m
}

// failovers runs cfg.MobilityRuns failovers on c, in mobNetwork (which
// must exist), numbered from first.
func (r *run) failovers(c *paths.Cluster, what string, first int) (Distribution, int) {
	var gaps []float64
	failed := 0
	for i := first; i < first+r.cfg.MobilityRuns; i++ {
		r.check()
		gap, f, err := r.failover(c, i)
		if err != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s run %d: %v", what, i-first+1, err))
			continue
		}
		gaps = append(gaps, ms(gap))
		failed += f
	}
	return distribution(gaps), failed
}

// failover runs failover i on c: it returns the time from the master's
// death (process killed, namespace deleted) to the first answer from the
// backup, and how many probes failed meanwhile.
func (r *run) failover(c *paths.Cluster, i int) (time.Duration, int, error) {
	ctx := r.ctx
	vip := netip.AddrFrom4([4]byte{10, 9, 1, byte(i + 1)})
	served := []mapper.PortSpec{{Port: paths.BenchPort, Protocol: mapper.TCP}}
	name := func(role string) string { return fmt.Sprintf("fo%d-%s", i, role) }
	masterNS, _ := c.Attach(ctx, name("master"), 1, agent.AttachRequest{Network: mobNetwork, IP: vip, Ports: served, Mode: mapper.Failover, Priority: 100})
	backupNS, _ := c.Attach(ctx, name("backup"), 2, agent.AttachRequest{Network: mobNetwork, IP: vip, Ports: served, Mode: mapper.Failover, Priority: 10})
	// A client of its own per run: every probe is a new flow, and a
	// client's offsets come back only long after its flows end.
	clientNS, _ := c.Attach(ctx, name("client"), 0, agent.AttachRequest{Network: mobNetwork, IP: netip.AddrFrom4([4]byte{10, 9, 2, byte(i + 1)})})
	master := r.start(masterNS, name("master"), -1, r.cfg.Bench, "netbench", "serve", "--port", strconv.Itoa(paths.BenchPort), "--name", "master")
	backup := r.start(backupNS, name("backup"), -1, r.cfg.Bench, "netbench", "serve", "--port", strconv.Itoa(paths.BenchPort), "--name", "backup")
	defer func() {
		backup.Stop()
		for _, d := range []struct {
			server int
			role   string
		}{{2, "backup"}, {0, "client"}} {
			dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c.Agent(d.server).Detach(dctx, agent.DetachRequest{Endpoint: name(d.role)})
			cancel()
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c.Mapper.DeleteEndpoint(dctx, name("master"))
		cancel()
		for _, ns := range []*testbed.Namespace{backupNS, clientNS} {
			exec.Command("ip", "netns", "del", ns.Name).Run()
		}
	}()
	c.Settle(ctx)
	addr := netip.AddrPortFrom(vip, paths.BenchPort).String()
	dial := dialIn(clientNS)
	if err := retry(ctx, 10*time.Second, func() error {
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		n, err := netbench.Name(pctx, dial, addr)
		if err == nil && n != "master" {
			err = fmt.Errorf("%s answered, want master", n)
		}
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("before the failover: %w", err)
	}

	var (
		mu       sync.Mutex
		backupAt []time.Time
		failed   int
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer cancel()
				n, err := netbench.Name(pctx, dial, addr)
				at := time.Now()
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					failed++
				case n == "backup":
					backupAt = append(backupAt, at)
				}
			}()
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	time.Sleep(200 * time.Millisecond)

	killed := time.Now()
	master.Stop()
	if out, err := exec.Command("ip", "netns", "del", masterNS.Name).CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("delete the master's namespace: %v: %s", err, out)
	}
	var first time.Time
	err := retry(ctx, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, at := range backupAt {
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
		if first.IsZero() {
			return fmt.Errorf("the backup never answered (%d probes failed)", failed)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	time.Sleep(20 * time.Millisecond) // let probes in flight finish
	mu.Lock()
	defer mu.Unlock()
	for _, at := range backupAt {
		if at.Before(first) {
			first = at
		}
	}
	return first.Sub(killed), failed, nil
}

// migration moves one container back and forth between server-1 and
// server-2 under a TCP connection that makes a round trip every
// pingEvery, and measures the longest silence around each move.
func (r *run) migration(m *Mobility) {
	c, ctx := r.cluster, r.ctx
	srvNS, e := c.Attach(ctx, "mig-server", 1, agent.AttachRequest{Network: mobNetwork, IP: netip.MustParseAddr("10.9.3.1"),
		Ports: []mapper.PortSpec{{Port: paths.BenchPort, Protocol: mapper.TCP}}})
	cliNS, _ := c.Attach(ctx, "mig-client", 0, agent.AttachRequest{Network: mobNetwork, IP: netip.MustParseAddr("10.9.3.2")})
	r.start(srvNS, "mig-server", -1, r.cfg.Bench, "netbench", "serve", "--port", strconv.Itoa(paths.BenchPort), "--name", "mig")
	c.Settle(ctx)
	addr := netip.AddrPortFrom(e.IP, paths.BenchPort).String()
	dial := dialIn(cliNS)
	if err := retry(ctx, 10*time.Second, func() error {
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := netbench.Name(pctx, dial, addr)
		return err
	}); err != nil {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("migration: the server never answered: %v", err))
		return
	}

	type pinger struct {
		mu     sync.Mutex
		times  []time.Time
		broken error
		stop   chan struct{}
		done   chan struct{}
	}
	connect := func() (*pinger, error) {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		p, err := netbench.NewPinger(pctx, dial, addr)
		if err != nil {
			return nil, err
		}
		pg := &pinger{stop: make(chan struct{}), done: make(chan struct{})}
		go func() {
			defer close(pg.done)
			defer p.Close()
			for {
				select {
				case <-pg.stop:
					return
				default:
				}
				err := p.Ping(3 * time.Second)
				pg.mu.Lock()
				if err != nil {
					pg.broken = err
					pg.mu.Unlock()
					return
				}
				pg.times = append(pg.times, time.Now())
				pg.mu.Unlock()
				time.Sleep(pingEvery)
			}
		}()
		return pg, nil
	}
	pg, err := connect()
	if err != nil {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("migration: connect: %v", err))
		return
	}
	defer func() {
		close(pg.stop)
		<-pg.done
	}()
	var pauses, took []float64
	at := 1
	for i := range r.cfg.MobilityRuns {
		r.check()
		time.Sleep(150 * time.Millisecond)
		to := 3 - at
		t0 := time.Now()
		_, err := c.Agent(to).Move(ctx, agent.MoveRequest{Endpoint: "mig-server", Netns: filepath.Join("/run/netns", srvNS.Name)})
		t1 := time.Now()
		if err != nil {
			r.res.Errors = append(r.res.Errors, fmt.Sprintf("migration %d: move to %s: %v", i+1, c.ServerName(to), err))
			continue
		}
		at = to
		took = append(took, ms(t1.Sub(t0)))
		settled := t1.Add(300 * time.Millisecond)
		werr := retry(ctx, 10*time.Second, func() error {
			pg.mu.Lock()
			defer pg.mu.Unlock()
			if pg.broken != nil || (len(pg.times) > 0 && pg.times[len(pg.times)-1].After(settled)) {
				return nil
			}
			return fmt.Errorf("no round trip since the move")
		})
		pg.mu.Lock()
		broken, times := pg.broken, pg.times
		pg.mu.Unlock()
		if broken != nil || werr != nil {
			m.MigrationBroken++
			r.res.note(fmt.Sprintf("migration %d: the connection did not survive: %v", i+1, cmpErr(broken, werr)))
			close(pg.stop)
			<-pg.done
			if pg, err = connect(); err != nil {
				r.res.Errors = append(r.res.Errors, fmt.Sprintf("migration: reconnect: %v", err))
				pg = &pinger{stop: make(chan struct{}), done: make(chan struct{})}
				close(pg.done)
				break
			}
			continue
		}
		var pause time.Duration
		for k := 1; k < len(times); k++ {
			if times[k].After(t0) && times[k-1].Before(settled) {
				pause = max(pause, times[k].Sub(times[k-1]))
			}
		}
		pauses = append(pauses, ms(max(0, pause-pingEvery)))
	}
	m.Migration = distribution(pauses)
	m.MoveP50ms = percentile(took, 50)
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
