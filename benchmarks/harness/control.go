package harness

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/daolinet/daoli/benchmarks/paths"
	"github.com/daolinet/daoli/mapper"
)

// The control plane registers endpoints of phantom servers: servers known
// to the registry that run no agent, so every real agent programs each
// endpoint as remote, and nothing waits for a veth.
const (
	cpNetwork = "cp"
	// perPhantom is the number of endpoints placed on one phantom server:
	// phantomAddrs locator addresses of 63 wire blocks each (256-port
	// blocks in 16384-32767, less the last, the gateway block).
	phantomAddrs = 4
	perPhantom   = phantomAddrs * 63
	// parallel is the number of concurrent registering clients.
	parallel = 64
	// batchSize is the number of endpoints in one batch registration,
	// batchParallel the number of clients sending batches at once.
	batchSize, batchParallel = 100, 8
)

// revisions follows the change log and tells at which revision each
// endpoint was written.
type revisions struct {
	mu   sync.Mutex
	cond *sync.Cond
	rev  map[uint32]int64
	end  error // why the watch ended; nil while it runs
}

func (r *run) follow(ctx context.Context, c *paths.Cluster, from int64) *revisions {
	rv := &revisions{rev: map[uint32]int64{}}
	rv.cond = sync.NewCond(&rv.mu)
	go func() {
		for resp := range c.Registry.Watch(ctx, from) {
			rv.mu.Lock()
			for _, c := range resp.Changes {
				if c.Endpoint != nil {
					rv.rev[c.Endpoint.ID] = c.Revision
				}
			}
			rv.cond.Broadcast()
			rv.mu.Unlock()
			if resp.Err != nil {
				rv.mu.Lock()
				rv.end = resp.Err
				rv.cond.Broadcast()
				rv.mu.Unlock()
				return
			}
		}
		rv.mu.Lock()
		if rv.end == nil {
			rv.end = cmp.Or(ctx.Err(), errors.New("the change log ended"))
		}
		rv.cond.Broadcast()
		rv.mu.Unlock()
	}()
	return rv
}

// of waits for the revision that wrote endpoint id.
func (rv *revisions) of(id uint32) (int64, error) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	for rv.rev[id] == 0 && rv.end == nil {
		rv.cond.Wait()
	}
	if rv.rev[id] == 0 {
		return 0, fmt.Errorf("watch the registry: %w", rv.end)
	}
	return rv.rev[id], nil
}

// controlPlane measures registrations per second and the time from a
// registration to its programming on every server, on the bbolt registry.
func (r *run) controlPlane() {
	r.res.Control = r.measureControl(r.cluster, "control plane")
}

// measureControl measures the control plane of c. On a registry whose
// mappers judge liveness (etcd), the harness heartbeats the phantom
// servers as their agents would.
func (r *run) measureControl(c *paths.Cluster, what string) *Control {
	ctx := r.ctx
	r.printf("%s: registrations on phantom servers, watched by %d agents", what, len(c.World.Servers))
	if _, err := c.Mapper.CreateNetwork(ctx, mapper.NetworkSpec{Name: cpNetwork, Subnet: netip.MustParsePrefix("10.128.0.0/9")}); err != nil {
		r.t.Fatalf("control plane: %v", err)
	}
	batches := r.cfg.Registrations * 5 / batchSize
	total := r.cfg.Registrations + batches*batchSize + 2*r.cfg.Latencies
	var phantoms []string
	for k := 0; k*perPhantom < total; k++ {
		spec := mapper.ServerSpec{Name: fmt.Sprintf("phantom-%d", k), MAC: mapper.MAC{0x02, 0xbe, 0, 0, byte(k >> 8), byte(k)}}
		for j := range phantomAddrs {
			// 198.18.0.0/15 is set aside for benchmarks (RFC 2544).
			spec.IPs = append(spec.IPs, netip.AddrFrom4([4]byte{198, 18 + byte(k>>8), byte(k), byte(j + 1)}))
		}
		if _, err := c.Mapper.RegisterServer(ctx, spec); err != nil {
			r.t.Fatalf("%s: register %s: %v", what, spec.Name, err)
		}
		phantoms = append(phantoms, spec.Name)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.Etcd != nil {
		go func() {
			for wctx.Err() == nil {
				for _, name := range phantoms {
					c.Mapper.Heartbeat(wctx, name)
				}
				select {
				case <-wctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	snap, err := c.Mapper.Snapshot(ctx)
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	revs := r.follow(wctx, c, snap.Revision+1)
	c.Settle(ctx)

	var next atomic.Int64
	spec := func() mapper.EndpointSpec {
		i := int(next.Add(1) - 1)
		v := i + 2 // past the network address and the gateway
		return mapper.EndpointSpec{
			Network: cpNetwork,
			IP:      netip.AddrFrom4([4]byte{10, 128 + byte(v>>16), byte(v >> 8), byte(v)}),
			Server:  fmt.Sprintf("phantom-%d", i/perPhantom),
			Ports:   []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}},
			// Failover: in the default mode, balance, every endpoint of its
			// own IP is a service of its own with a Maglev table, and the
			// dataplane holds 256 (README: findings).
			Mode: mapper.Failover,
		}
	}
	cp := &Control{Agents: len(c.World.Servers), Parallel: parallel}
	cp.Before = r.latencies(c, revs, spec, len(snap.Endpoints))
	r.printf("registration -> programmed on every server, %d endpoints registered: p50 %.1f ms, p99 %.1f ms",
		cp.Before.Registered, cp.Before.P50ms, cp.Before.P99ms)

	// The burst: parallel clients over HTTP, as many hooks registering
	// at once.
	n := r.cfg.Registrations
	t0 := time.Now()
	failed, acked := r.burst(what, "registrations", parallel, n, func() error {
		_, err := c.Mapper.CreateEndpoint(ctx, spec())
		return err
	})
	cp.Registrations = n - failed
	cp.PerSecond = float64(cp.Registrations) / acked.Seconds()
	r.programmed(c, what) // every agent applied the newest revision of the burst
	cp.ProgrammedPerSecond = float64(cp.Registrations) / time.Since(t0).Seconds()
	r.printf("%d registrations from %d clients: %.0f/s acknowledged, %.0f/s programmed on every server",
		cp.Registrations, parallel, cp.PerSecond, cp.ProgrammedPerSecond)

	// Batches: batchParallel clients, batchSize endpoints per request.
	failed, acked = r.burst(what, "batches", batchParallel, batches, func() error {
		specs := make([]mapper.EndpointSpec, batchSize)
		for i := range specs {
			specs[i] = spec()
		}
		_, err := c.Mapper.CreateEndpoints(ctx, specs)
		return err
	})
	cp.BatchSize, cp.BatchParallel = batchSize, batchParallel
	cp.BatchRegistrations = (batches - failed) * batchSize
	cp.BatchPerSecond = float64(cp.BatchRegistrations) / acked.Seconds()
	snap = r.programmed(c, what)
	r.printf("%d registrations in batches of %d from %d clients: %.0f/s acknowledged",
		cp.BatchRegistrations, batchSize, batchParallel, cp.BatchPerSecond)

	cp.After = r.latencies(c, revs, spec, len(snap.Endpoints))
	r.printf("registration -> programmed on every server, %d endpoints registered: p50 %.1f ms, p99 %.1f ms",
		cp.After.Registered, cp.After.P50ms, cp.After.P99ms)
	return cp
}

// burst runs n jobs on workers goroutines at once and returns how many
// failed (the first failure goes into the results' errors) and how long
// all took.
func (r *run) burst(what, jobs string, workers, n int, job func() error) (failed int, took time.Duration) {
	var (
		wg      sync.WaitGroup
		nfailed atomic.Int64
		first   atomic.Value
		todo    atomic.Int64
	)
	todo.Store(int64(n))
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for todo.Add(-1) >= 0 && r.ctx.Err() == nil {
				if err := job(); err != nil {
					nfailed.Add(1)
					first.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	wg.Wait()
	took = time.Since(t0)
	r.check()
	if f := nfailed.Load(); f > 0 {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("%s: %d of %d %s failed: %v", what, f, n, jobs, first.Load()))
	}
	return int(nfailed.Load()), took
}

// programmed waits until every agent of c has applied the registry's
// current revision, and returns the snapshot it read that at.
func (r *run) programmed(c *paths.Cluster, what string) mapper.Snapshot {
	snap, err := c.Mapper.Snapshot(r.ctx)
	if err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	if err := c.WaitApplied(r.ctx, snap.Revision, 5*time.Minute); err != nil {
		r.t.Fatalf("%s: %v", what, err)
	}
	return snap
}

// latencies registers endpoints one at a time and times each from the
// request to every agent reporting the registration's revision applied.
func (r *run) latencies(c *paths.Cluster, revs *revisions, spec func() mapper.EndpointSpec, registered int) Latency {
	var ack, programmed []float64
	for range r.cfg.Latencies {
		r.check()
		t0 := time.Now()
		e, err := c.Mapper.CreateEndpoint(r.ctx, spec())
		if err != nil {
			r.t.Fatalf("control plane: register: %v", err)
		}
		ack = append(ack, ms(time.Since(t0)))
		rev, err := revs.of(e.ID)
		if err != nil {
			r.t.Fatalf("control plane: %v", err)
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			done time.Time
			errs []error
		)
		for i := range c.World.Servers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := c.Agent(i)
				deadline := time.Now().Add(30 * time.Second)
				for {
					st, err := cl.Status(r.ctx)
					if err == nil && st.Applied >= rev {
						now := time.Now()
						mu.Lock()
						if now.After(done) {
							done = now
						}
						mu.Unlock()
						return
					}
					if time.Now().After(deadline) || r.ctx.Err() != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("agent of %s did not apply revision %d: %v", c.ServerName(i), rev, err))
						mu.Unlock()
						return
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			r.t.Fatalf("control plane: %v", errs)
		}
		programmed = append(programmed, ms(done.Sub(t0)))
		time.Sleep(10 * time.Millisecond) // one registration at a time
	}
	l := Latency{Registered: registered, Samples: len(programmed)}
	l.P50ms, l.P99ms = percentile(programmed, 50), percentile(programmed, 99)
	l.AckP50ms = percentile(ack, 50)
	return l
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
