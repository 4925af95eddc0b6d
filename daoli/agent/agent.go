// Package agent is daoli's per-server agent: it registers its server with
// the mapper, follows the registry's change log and programs the server's
// eBPF dataplane to match, attaches containers (veth pairs into their
// network namespaces) for orchestrator hooks and the CLI, and marks an
// endpoint down the moment its veth disappears.
//
// An Agent runs inside its server's network namespace. It keeps
// forwarding whatever the mapper is doing: the dataplane's maps and links
// are pinned, so a restarted agent adopts them, reconciles, and changes
// nothing that was right; a mapper that is down only delays changes.
//
// An Agent is not usable as a zero value: call New, then Run.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/mapper"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config configures an Agent.
type Config struct {
	// Mapper is the registry's client. Required.
	Mapper *mapper.Client
	// Name is the server's name in the registry. Required.
	Name string
	// Uplink is the interface facing the physical network; its IPv4
	// addresses are the server's locators and its MAC the ServerMAC.
	// Required.
	Uplink string
	// BPFFS is where the dataplane pins its maps and links; it must be on
	// a bpf filesystem. Zero means /sys/fs/bpf/daoli/<Name>.
	BPFFS string
	// RunDir holds the agent's socket, <RunDir>/<Name>.sock. Zero means
	// /run/daoli.
	RunDir string
	// MetricsAddr, if set, serves Prometheus metrics at /metrics there.
	MetricsAddr string
	// Heartbeat is how often the server renews its liveness lease with
	// the mapper; keep it well below the mapper's --server-ttl. Zero
	// means one second.
	Heartbeat time.Duration
	// MaxEndpoints and MaxFlows size the dataplane's maps (see
	// dataplane.Config). Zero means the dataplane's defaults.
	MaxEndpoints, MaxFlows int
	// MaxFlowsPerEndpoint is how many flows one local endpoint may hold
	// (dataplane.Config): zero means MaxFlows/8, a negative value no
	// limit.
	MaxFlowsPerEndpoint int
	// HealthInterval, if set, turns on TCP health checks of local
	// endpoints' served ports at this interval (see health.go).
	HealthInterval time.Duration
	// HealthFailures is how many results in a row change an endpoint's
	// state. Zero means 3.
	HealthFailures int
	// Retry is the first wait after a failed call to the mapper; waits
	// double up to 5 seconds. Zero means 100 milliseconds.
	Retry time.Duration
	// Logger receives the agent's logs. Nil means discard.
	Logger *slog.Logger
}

// Agent is one server's agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	mc     *mapper.Client
	model  *model
	dp     *dataplane.Dataplane
	uplink netlink.Link
	ips    []netip.Addr
	alloc  mapper.Allocation
	dirty  chan struct{}
	m      metrics
	netns  *netnsBook
	// ctx is Run's: background work (marking endpoints down) must outlive
	// the API request that happened to trigger it.
	ctx context.Context

	mu       sync.Mutex   // serializes reconciles and attachments
	attached map[int]bool // ifindexes with from_container attached
	// reported holds interfaces whose endpoint was marked down (or whose
	// veth went away on purpose); plumbing those being created right now,
	// whose endpoint the registry already has: neither may be marked down
	// for a missing interface.
	reported map[string]bool
	plumbing map[string]bool
}

// New checks cfg. It touches nothing.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Mapper == nil:
		return nil, errors.New("new agent: no mapper client")
	case cfg.Name == "":
		return nil, errors.New("new agent: no server name")
	case cfg.Uplink == "":
		return nil, errors.New("new agent: no uplink interface")
	}
	if cfg.BPFFS == "" {
		cfg.BPFFS = filepath.Join("/sys/fs/bpf/daoli", cfg.Name)
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/daoli"
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Retry == 0 {
		cfg.Retry = 100 * time.Millisecond
	}
	if cfg.HealthFailures == 0 {
		cfg.HealthFailures = 3
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{
		cfg: cfg, log: log.With("server", cfg.Name), mc: cfg.Mapper, model: newModel(), netns: openNetnsBook(cfg.RunDir, cfg.Name),
		dirty: make(chan struct{}, 1), attached: map[int]bool{}, reported: map[string]bool{}, plumbing: map[string]bool{},
	}, nil
}

// SocketPath is where the agent of server name listens under runDir.
func SocketPath(runDir, name string) string { return agentapi.SocketPath(runDir, name) }

// Run starts the agent and serves until ctx ends. On return the dataplane
// stays programmed and attached: traffic keeps flowing without the agent.
func (a *Agent) Run(ctx context.Context) error {
	a.ctx = ctx
	if err := a.openDataplane(); err != nil {
		return err
	}
	defer a.dp.Close()

	if err := a.setup(ctx); err != nil {
		return err
	}
	sock, err := a.listen()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	srv := &http.Server{Handler: a.api(), ReadHeaderTimeout: 5 * time.Second}
	run(func(context.Context) { srv.Serve(sock) })
	var msrv *http.Server
	if a.cfg.MetricsAddr != "" {
		ml, err := net.Listen("tcp", a.cfg.MetricsAddr)
		if err != nil {
			sock.Close()
			return fmt.Errorf("listen for metrics on %s: %w", a.cfg.MetricsAddr, err)
		}
		msrv = &http.Server{Handler: a.metricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		run(func(context.Context) { msrv.Serve(ml) })
		a.log.Info("serving metrics", "addr", ml.Addr().String())
	}
	run(a.applyLoop)
	run(a.follow)
	run(a.heartbeat)
	run(a.watchLinks)
	run(a.checkHealth)
	run(a.accountFlows)
	a.log.Info("agent running", "uplink", a.cfg.Uplink, "ips", a.ips, "socket", SocketPath(a.cfg.RunDir, a.cfg.Name), "bpffs", a.cfg.BPFFS)

	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if msrv != nil {
		msrv.Shutdown(sctx)
	}
	wg.Wait()
	os.Remove(SocketPath(a.cfg.RunDir, a.cfg.Name))
	a.log.Info("agent stopped; the dataplane keeps forwarding")
	return nil
}

// openDataplane loads (or adopts) the dataplane and attaches it to the
// uplink before anything else, so a restarted agent keeps traffic flowing
// even while the mapper is unreachable.
func (a *Agent) openDataplane() error {
	up, err := netlink.LinkByName(a.cfg.Uplink)
	if err != nil {
		return fmt.Errorf("find uplink %s: %w", a.cfg.Uplink, err)
	}
	a.uplink = up
	addrs, err := netlink.AddrList(up, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", a.cfg.Uplink, err)
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok && ad.Scope == int(netlink.SCOPE_UNIVERSE) {
			a.ips = append(a.ips, ip)
		}
	}
	if len(a.ips) == 0 {
		return fmt.Errorf("uplink %s has no global IPv4 address to serve as ServerIP", a.cfg.Uplink)
	}
	if len(up.Attrs().HardwareAddr) != 6 {
		return fmt.Errorf("uplink %s has no Ethernet address", a.cfg.Uplink)
	}
	if err := os.MkdirAll(a.cfg.BPFFS, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", a.cfg.BPFFS, err)
	}
	dp, err := dataplane.New(dataplane.Config{BPFFSPath: a.cfg.BPFFS, Logger: a.log,
		MaxEndpoints: a.cfg.MaxEndpoints, MaxFlows: a.cfg.MaxFlows, MaxFlowsPerEndpoint: a.cfg.MaxFlowsPerEndpoint})
	if err != nil {
		return fmt.Errorf("open dataplane: %w", err)
	}
	if err := dp.AttachUplink(up.Attrs().Index); err != nil {
		dp.Close()
		return fmt.Errorf("attach to uplink %s: %w", a.cfg.Uplink, err)
	}
	a.dp = dp
	return nil
}

// setup learns the mapper's allocation, guards the wire range on this
// server and registers the server. It waits for the mapper as long as ctx
// allows: the dataplane is already forwarding meanwhile. It runs before
// any reconcile, so a.alloc is set once and only read afterwards.
func (a *Agent) setup(ctx context.Context) error {
	var alloc mapper.Allocation
	err := a.retry(ctx, "read the mapper's allocation", func() error {
		var err error
		alloc, err = a.mc.Allocation(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if err := guardWireRange(alloc.WirePorts); err != nil {
		return err
	}
	a.mu.Lock()
	a.alloc = alloc
	a.mu.Unlock()
	return a.register(ctx)
}

// register records the server in the registry, again after the registry
// forgot it.
func (a *Agent) register(ctx context.Context) error {
	mac, err := mapper.ParseMAC(a.uplink.Attrs().HardwareAddr.String())
	if err != nil {
		return fmt.Errorf("uplink %s: %w", a.cfg.Uplink, err)
	}
	if len(a.ips) > dataplane.MaxLocalIPs {
		return fmt.Errorf("uplink %s has %d IPv4 addresses; a server may have at most %d locators", a.cfg.Uplink, len(a.ips), dataplane.MaxLocalIPs)
	}
	return a.retry(ctx, "register server", func() error {
		_, err := a.mc.RegisterServer(ctx, mapper.ServerSpec{Name: a.cfg.Name, IPs: a.ips, MAC: mac, Uplink: a.cfg.Uplink})
		return err
	})
}

// retry calls f until it succeeds, ctx ends, or f fails for a reason
// retrying cannot fix (the mapper refused the request).
func (a *Agent) retry(ctx context.Context, what string, f func() error) error {
	wait := a.cfg.Retry
	for {
		err := f()
		if err == nil {
			return nil
		}
		var ae *mapper.APIError
		if errors.As(err, &ae) && ae.Status < 500 {
			return fmt.Errorf("%s: %w", what, err)
		}
		a.log.Warn("mapper unreachable, retrying", "doing", what, "in", wait, "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// follow keeps the model equal to the registry: a snapshot, then the
// change log from its revision; after a disconnect, the log again from the
// last revision applied; after compaction, a new snapshot.
func (a *Agent) follow(ctx context.Context) {
	wait := a.cfg.Retry
	needSnapshot := true
	for ctx.Err() == nil {
		if needSnapshot {
			snap, err := a.mc.Snapshot(ctx)
			if err != nil {
				a.log.Warn("snapshot failed; forwarding with what we have", "error", err, "retry_in", wait)
				sleep(ctx, wait)
				wait = min(2*wait, 5*time.Second)
				continue
			}
			a.model.reset(snap)
			a.m.snapshots.Add(1)
			a.kick()
			needSnapshot = false
		}
		// From the last revision seen, not the next: a revision's changes
		// may have been cut off mid-way, and applying one twice is harmless.
		from := a.model.rev()
		for resp := range a.mc.Watch(ctx, from) {
			if resp.Err != nil {
				if errors.Is(resp.Err, mapper.ErrCompacted) {
					needSnapshot = true
				}
				if ctx.Err() == nil {
					a.log.Warn("watch ended; resuming", "from_revision", a.model.rev(), "error", resp.Err)
					a.m.watchReconnects.Add(1)
				}
				break
			}
			matters := false
			for _, c := range resp.Changes {
				matters = a.model.apply(c) || matters
			}
			wait = a.cfg.Retry
			if matters {
				a.kick()
			} else {
				a.m.skipped.Add(1)
			}
		}
		sleep(ctx, wait)
		wait = min(2*wait, 5*time.Second)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// kick asks for a reconcile; bursts of changes fold into one.
func (a *Agent) kick() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

func (a *Agent) applyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirty:
		}
		if err := a.reconcile(ctx); err != nil {
			a.log.Error("reconcile", "error", err)
		}
	}
}

// reconcile programs the dataplane to match the model: programs attached
// to every local endpoint's veth, maps written as a diff. Nothing changes
// when nothing is different, so it is safe to run at any time.
func (a *Agent) reconcile(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.alloc.BlockSize == 0 || !a.model.ready() {
		// Not set up yet. A restarted agent must not program the empty
		// model it starts with: the pinned maps are right until the first
		// snapshot says otherwise.
		return nil
	}
	start := time.Now()
	rev := a.model.rev() // read first: the state derived next is at least this new
	st := a.model.desired(a.cfg.Name, a.alloc.BlockSize, a.vethIndex)
	st.WirePorts = dataplane.PortRange{First: a.alloc.WirePorts.First, Last: a.alloc.WirePorts.Last}
	st.LocalIPs = a.ips
	st.GatewayBase = a.alloc.GatewayBase
	local := map[int]bool{}
	for _, e := range st.Endpoints {
		if e.Ifindex == 0 {
			continue
		}
		local[e.Ifindex] = true
		if !a.attached[e.Ifindex] {
			// One interface that cannot be attached must not hold up
			// the rest of the server.
			if err := a.dp.AttachEndpoint(e.Ifindex); err != nil {
				a.log.Error("attach endpoint", "endpoint", e.ID, "ifindex", e.Ifindex, "error", err)
				continue
			}
			a.attached[e.Ifindex] = true
		}
	}
	// More endpoints than the maps hold: keep the oldest (lowest IDs, so
	// every server keeps the same ones) rather than apply nothing.
	excluded := 0
	if max := a.dp.MaxEndpoints(); len(st.Endpoints) > max {
		excluded = len(st.Endpoints) - max
		a.log.Error("the cluster has more endpoints than the dataplane holds; leaving out the newest",
			"endpoints", len(st.Endpoints), "max", max, "left_out", excluded)
		st.Endpoints = st.Endpoints[:max] // desired() sorts them by ID
	}
	// An endpoint the dataplane refuses (the registry should have refused
	// it first) must cost only itself, not every endpoint of the server.
	for {
		st.Published = servedPublished(st)
		err := a.dp.Apply(st)
		var bad *dataplane.InvalidEndpointError
		if err == nil {
			break
		}
		if !errors.As(err, &bad) || len(st.Endpoints) == 0 {
			return fmt.Errorf("apply revision %d: %w", rev, err)
		}
		a.log.Error("leaving out an endpoint the dataplane refuses", "endpoint", bad.ID, "error", err)
		st.Endpoints = slices.DeleteFunc(st.Endpoints, func(e dataplane.Endpoint) bool { return e.ID == bad.ID })
		excluded++
	}
	a.m.excluded.Store(int64(excluded))
	for ifindex := range a.attached {
		if !local[ifindex] {
			if err := a.dp.Detach(ifindex); err != nil {
				a.log.Warn("detach", "ifindex", ifindex, "error", err)
			}
			delete(a.attached, ifindex)
		}
	}
	a.m.observeReconcile(time.Since(start), rev, len(st.Endpoints), len(local))
	a.markMissing(ctx)
	return nil
}

// markMissing marks down the active local endpoints whose veth is gone:
// their container died, perhaps while the agent was not running.
func (a *Agent) markMissing(ctx context.Context) {
	for _, e := range a.model.local(a.cfg.Name) {
		if e.State != mapper.Active || e.Interface == "" || a.reported[e.Interface] || a.plumbing[e.Interface] {
			continue
		}
		if linkGone(e.Interface) {
			a.reported[e.Interface] = true
			go a.markDown(a.ctx, e, "interface missing")
		}
	}
}

// markDown tells the mapper that e's container is gone, guarded so that
// an endpoint that moved away is left alone.
func (a *Agent) markDown(ctx context.Context, e mapper.Endpoint, why string) {
	req := mapper.StateRequest{State: mapper.Down, IfServer: a.cfg.Name, IfInterface: e.Interface}
	err := a.retry(ctx, "mark endpoint down", func() error {
		_, err := a.mc.SetEndpointState(ctx, e.Ref(), req)
		return err
	})
	switch {
	case err == nil:
		a.log.Info("endpoint down", "endpoint", e.Ref(), "interface", e.Interface, "why", why)
		a.m.markedDown.Add(1)
	case errors.Is(err, mapper.ErrConflict), errors.Is(err, mapper.ErrNotFound):
		a.log.Debug("endpoint left this server; not marking it down", "endpoint", e.Ref(), "why", why)
	default:
		// Let a later reconcile try again.
		a.log.Error("mark endpoint down", "endpoint", e.Ref(), "error", err)
		a.mu.Lock()
		delete(a.reported, e.Interface)
		a.mu.Unlock()
	}
}

// flowAccounting is how often the agent counts each local endpoint's
// flows for the dataplane's per-endpoint limit.
const flowAccounting = time.Second

// accountFlows counts local endpoints' flows every flowAccounting, so the
// dataplane holds each to its limit of flows (dataplane.AccountFlows).
func (a *Agent) accountFlows(ctx context.Context) {
	every(ctx, flowAccounting, func() {
		if _, err := a.dp.AccountFlows(); err != nil {
			a.log.Warn("count flows", "error", err)
		}
	})
}

// every calls f each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}

func (a *Agent) heartbeat(ctx context.Context) {
	every(ctx, a.cfg.Heartbeat, func() {
		// Bounded by the interval: a mapper whose machine died without a
		// reset must not hold the heartbeat past the server's TTL (the
		// client then starts the next one at another mapper).
		hctx, cancel := context.WithTimeout(ctx, a.cfg.Heartbeat)
		_, err := a.mc.Heartbeat(hctx, a.cfg.Name)
		cancel()
		if err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat", "error", err)
			if errors.Is(err, mapper.ErrNotFound) {
				a.register(ctx) // the server was removed: register again
			}
		}
	})
}

// watchLinks marks a local endpoint down the moment its veth disappears,
// which is when its container's network namespace is destroyed: failover
// does not wait for an orchestrator to notice.
func (a *Agent) watchLinks(ctx context.Context) {
	for ctx.Err() == nil {
		updates := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		failed := make(chan error, 1)
		err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case failed <- err:
				default:
				}
			},
		})
		if err != nil {
			a.log.Error("subscribe to link changes", "error", err)
			sleep(ctx, time.Second)
			continue
		}
		a.kick() // catch what happened while not subscribed
	loop:
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case err := <-failed:
				a.log.Warn("link subscription failed; resubscribing", "error", err)
				close(done)
				break loop
			case u, ok := <-updates:
				if !ok {
					break loop
				}
				if u.Header.Type != unix.RTM_DELLINK {
					continue
				}
				name := u.Link.Attrs().Name
				for _, e := range a.model.local(a.cfg.Name) {
					if e.Interface == name && e.State == mapper.Active {
						a.mu.Lock()
						first := !a.reported[name]
						a.reported[name] = true
						a.mu.Unlock()
						if first {
							go a.markDown(a.ctx, e, "interface deleted")
						}
					}
				}
				a.kick()
			}
		}
	}
}

// vethIndex returns the ifindex of a local endpoint's interface: a veth
// of this server that is not the uplink, or 0. The registry's interface
// name is only a name: the agent attaches from_container to nothing else.
func (a *Agent) vethIndex(name string) int {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0
	}
	if l.Type() != "veth" || l.Attrs().Index == a.uplink.Attrs().Index {
		a.log.Warn("an endpoint names an interface that is not a veth of this server; not attaching", "interface", name, "type", l.Type())
		return 0
	}
	return l.Attrs().Index
}

// linkGone reports whether the interface certainly does not exist: a
// failed lookup for another reason (a full socket buffer) is not a
// container's death.
func linkGone(name string) bool {
	_, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
