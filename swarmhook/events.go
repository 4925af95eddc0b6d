package swarmhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/daolinet/daoli/mapper"
)

// WatcherConfig configures a Watcher.
type WatcherConfig struct {
	// Plugin is the plugin whose endpoints the watcher keeps in step with
	// Docker. Required.
	Plugin *Plugin
	// Docker is the engine to watch. Required.
	Docker Docker
	// Interval is the time between full reconciles. Zero means 30
	// seconds.
	Interval time.Duration
	// Grace is how old an endpoint must be before a reconcile may remove
	// it for not being held by any container: Docker lists a container's
	// endpoints only once it has started, a moment after the plugin
	// registered them. Zero means 15 seconds.
	Grace time.Duration
	// Logger receives the watcher's logs. Nil means discard.
	Logger *slog.Logger
}

// Watcher keeps the states of the plugin's endpoints in step with Docker:
// it follows the engine's container events (start, die, kill, pause,
// unpause, destroy, health_status) and reconciles everything
// periodically, because Docker drops events for slow readers and a dockerd
// killed mid-way never sends DeleteEndpoint.
//
// A Watcher is safe for concurrent use; its zero value is not usable
// (call NewWatcher).
type Watcher struct {
	cfg WatcherConfig
	p   *Plugin
	d   Docker
	log *slog.Logger
	now func() time.Time

	statsMu sync.Mutex
	stats   WatcherStats

	// work serializes applying events and reconciling.
	work sync.Mutex
	// containers maps a container ID to its Docker endpoint IDs that the
	// plugin holds. Guarded by work.
	containers map[string][]string
}

// WatcherStats counts what a Watcher did.
type WatcherStats struct {
	// Events is the number of events received (repeats at a resume
	// point not counted).
	Events int64
	// Streams is the number of event streams opened: one, plus one per
	// reconnect.
	Streams int64
	// Reconciles is the number of full reconciles that completed.
	Reconciles int64
	// MarkedDown and MarkedActive count state changes the watcher made
	// in the mapper.
	MarkedDown, MarkedActive int64
	// Removed counts endpoints removed because their container is gone.
	Removed int64
	// Dropped counts events dropped because too many waited; a
	// reconcile follows every drop.
	Dropped int64
}

const (
	// maxQueued bounds the events waiting to be applied. The reader never
	// blocks on the mapper, so Docker never drops events because of it;
	// past this many, events are dropped and a reconcile follows.
	maxQueued = 4096
	// Reconnect delays, doubling from the first to the last.
	retryFirst = 100 * time.Millisecond
	retryLast  = 5 * time.Second
)

// NewWatcher returns a watcher. It calls nothing.
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	switch {
	case cfg.Plugin == nil:
		return nil, errors.New("new watcher: no plugin")
	case cfg.Docker == nil:
		return nil, errors.New("new watcher: no Docker client")
	}
	if cfg.Interval == 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 15 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg, p: cfg.Plugin, d: cfg.Docker, log: log, now: time.Now, containers: map[string][]string{}}, nil
}

// Stats returns what the watcher did so far.
func (w *Watcher) Stats() WatcherStats {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	return w.stats
}

func (w *Watcher) count(f func(*WatcherStats)) {
	w.statsMu.Lock()
	f(&w.stats)
	w.statsMu.Unlock()
}

// Run watches until ctx ends: it opens the event stream (from the moment
// Run was called, so nothing falls between it and the first reconcile),
// reconciles once, then applies events as they come and reconciles every
// Interval and after every reconnect. Events are read by a goroutine of
// their own into a queue, so a slow mapper never makes Docker drop them.
func (w *Watcher) Run(ctx context.Context) {
	q := &eventQueue{ready: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	since := w.now()
	go func() {
		defer wg.Done()
		w.read(ctx, since, q)
	}()
	defer wg.Wait()
	w.reconcile(ctx)
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.reconcile(ctx)
		case <-q.ready:
			evs, again := q.take()
			for _, ev := range evs {
				if ctx.Err() != nil {
					return
				}
				w.apply(ctx, ev)
			}
			if again {
				w.reconcile(ctx)
			}
		}
	}
}

func (w *Watcher) reconcile(ctx context.Context) {
	if err := w.Reconcile(ctx); err != nil && ctx.Err() == nil {
		w.log.Warn("reconcile with Docker", "error", err)
	}
}

// eventQueue is an unbounded-but-capped FIFO between the reader and the
// worker.
type eventQueue struct {
	mu      sync.Mutex
	evs     []Event
	again   bool // a reconcile is wanted
	dropped int64
	ready   chan struct{}
}

func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	if len(q.evs) >= maxQueued {
		q.again = true
		q.dropped++
	} else {
		q.evs = append(q.evs, ev)
	}
	q.mu.Unlock()
	q.signal()
}

func (q *eventQueue) reconcile() {
	q.mu.Lock()
	q.again = true
	q.mu.Unlock()
	q.signal()
}

func (q *eventQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *eventQueue) take() ([]Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs, again := q.evs, q.again
	q.evs, q.again = nil, false
	return evs, again
}

// read follows the event stream, reconnecting with Since = the time of
// the last event seen. Docker sends again the events stamped exactly
// Since; those already seen are skipped.
func (w *Watcher) read(ctx context.Context, since time.Time, q *eventQueue) {
	delay := retryFirst
	seen := map[string]bool{} // events stamped exactly since
	for {
		w.count(func(s *WatcherStats) { s.Streams++ })
		evs, errs := w.d.Events(ctx, since)
		var err error
	stream:
		for {
			select {
			case ev := <-evs:
				if ev.Time.Before(since) {
					continue
				}
				k := ev.Time.String() + " " + ev.Container + " " + ev.Action + " " + ev.Health
				if ev.Time.Equal(since) {
					if seen[k] {
						continue
					}
				} else {
					since = ev.Time
					clear(seen)
				}
				seen[k] = true
				delay = retryFirst
				w.count(func(s *WatcherStats) { s.Events++ })
				q.push(ev)
			case err = <-errs:
				break stream
			}
		}
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("Docker event stream ended; resuming", "since", since, "in", delay, "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, retryLast)
		// Docker keeps only its last 256 events for a resume: whatever
		// it lost, a reconcile finds.
		q.reconcile()
	}
}

// apply acts on one event.
func (w *Watcher) apply(ctx context.Context, ev Event) {
	w.work.Lock()
	defer w.work.Unlock()
	if ev.Action == "destroy" {
		// Docker deleted the container's endpoints when it stopped; any
		// still held here were never deleted (a lost DeleteEndpoint).
		ids := w.containers[ev.Container]
		delete(w.containers, ev.Container)
		for _, id := range ids {
			w.remove(ctx, id, "container destroyed")
		}
		return
	}
	state, force, ok := eventState(ev)
	if !ok {
		return
	}
	for _, id := range w.endpointsOf(ctx, ev.Container, ev.Action == "start") {
		w.set(ctx, id, state, force, ev.Time, ev.Action)
	}
}

// eventState says what an event means for the container's endpoints:
// the state they should have, and whether that is certain enough to mark
// active an endpoint that someone other than the watcher took down.
func eventState(ev Event) (s mapper.State, force, ok bool) {
	switch ev.Action {
	case "start":
		return mapper.Active, true, true
	case "unpause":
		return mapper.Active, false, true
	case "die", "pause":
		return mapper.Down, false, true
	case "kill":
		// docker kill (KILL), docker stop (TERM), and what ends a process
		// by default; a HUP sent to make a server reload changes nothing.
		switch ev.Signal {
		case 0, 2, 3, 9, 15:
			return mapper.Down, false, true
		}
	case "health_status":
		switch ev.Health {
		case HealthHealthy:
			return mapper.Active, true, true
		case HealthUnhealthy:
			return mapper.Down, false, true
		}
	}
	return "", false, false
}

// endpointsOf returns the Docker endpoint IDs of a container that the
// plugin holds: from what the watcher learned before, or, when it knows
// nothing of the container or refresh is set, from Docker.
func (w *Watcher) endpointsOf(ctx context.Context, id string, refresh bool) []string {
	if ids, ok := w.containers[id]; ok && !refresh {
		return ids
	}
	c, err := w.d.Container(ctx, id)
	if err != nil {
		if !errors.Is(err, ErrUnknownContainer) {
			w.log.Warn("inspect container", "container", shortID(id), "error", err)
		}
		return w.containers[id]
	}
	ids := w.p.holds(c.Endpoints)
	if len(ids) == 0 {
		delete(w.containers, id)
	} else {
		w.containers[id] = ids
	}
	return ids
}

// set changes the state of the plugin's endpoint dockerID in the mapper,
// guarded by its server and interface. An event older than the endpoint
// (about the container's previous endpoints) changes nothing. Active is
// set only with force, or when the watcher took the endpoint down
// itself. cur, when not empty, is the endpoint's state in the mapper.
func (w *Watcher) set(ctx context.Context, dockerID string, s mapper.State, force bool, at time.Time, why string) {
	ep, ok := w.p.endpoint(dockerID)
	if !ok || !at.IsZero() && at.Before(ep.Created) {
		return
	}
	if s == mapper.Active && !force && !ep.DownByDocker {
		return
	}
	ref := strconv.FormatUint(uint64(ep.Endpoint), 10)
	d, err := w.p.mc.Endpoint(ctx, ref)
	if err != nil {
		if !errors.Is(err, mapper.ErrNotFound) {
			w.log.Warn("read endpoint", "endpoint", ep.Endpoint, "error", err)
		}
		return
	}
	w.setFrom(ctx, dockerID, ep, d.Endpoint.State, s, why)
}

// setFrom moves the endpoint from state cur to s.
func (w *Watcher) setFrom(ctx context.Context, dockerID string, ep endpointState, cur, s mapper.State, why string) {
	if cur == s {
		if s == mapper.Active && ep.DownByDocker {
			w.p.setDownByDocker(dockerID, false)
		}
		return
	}
	if err := w.p.setState(ctx, ep, s); err != nil {
		if !errors.Is(err, mapper.ErrNotFound) && !errors.Is(err, mapper.ErrConflict) {
			w.log.Warn("set endpoint state", "endpoint", ep.Endpoint, "state", s, "why", why, "error", err)
		}
		return
	}
	w.p.setDownByDocker(dockerID, s == mapper.Down)
	w.count(func(st *WatcherStats) {
		if s == mapper.Down {
			st.MarkedDown++
		} else {
			st.MarkedActive++
		}
	})
	w.log.Info("endpoint "+string(s), "endpoint", ep.Endpoint, "ip", ep.IP, "why", why)
}

func (w *Watcher) remove(ctx context.Context, dockerID, why string) {
	ep, ok := w.p.endpoint(dockerID)
	if !ok {
		return
	}
	if _, err := w.p.deleteEndpoint(ctx, endpointRequest{NetworkID: ep.NetworkID, EndpointID: dockerID}); err != nil {
		w.log.Warn("remove endpoint", "endpoint", ep.Endpoint, "why", why, "error", err)
		return
	}
	w.count(func(s *WatcherStats) { s.Removed++ })
	w.log.Info("endpoint removed", "endpoint", ep.Endpoint, "ip", ep.IP, "why", why)
}

// Reconcile compares every endpoint of the plugin with Docker's
// containers, once: an endpoint no container holds (and older than
// Grace) is removed; one whose container is not running, is paused or is
// unhealthy is marked down; one whose container is healthy, or runs again
// after the watcher took it down, is marked active.
func (w *Watcher) Reconcile(ctx context.Context) error {
	cs, err := w.d.Containers(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	w.work.Lock()
	defer w.work.Unlock()
	eps := w.p.endpoints()
	holder := map[string]Container{}
	clear(w.containers)
	for _, c := range cs {
		ids := w.p.holds(c.Endpoints)
		for _, id := range ids {
			holder[id] = c
		}
		if len(ids) > 0 {
			w.containers[c.ID] = ids
		}
	}
	// The mapper's states, one list per server the endpoints run on (one,
	// normally).
	states := map[uint32]mapper.State{}
	listed := map[string]bool{}
	for _, ep := range eps {
		if listed[ep.Server] {
			continue
		}
		listed[ep.Server] = true
		es, err := w.p.mc.Endpoints(ctx, "", ep.Server)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		for _, e := range es {
			states[e.ID] = e.State
		}
	}
	now := w.now()
	for id, ep := range eps {
		c, ok := holder[id]
		if !ok {
			if now.Sub(ep.Created) >= w.cfg.Grace {
				w.remove(ctx, id, "no container holds it")
			}
			continue
		}
		cur, ok := states[ep.Endpoint]
		if !ok {
			continue // not in the mapper (any more): nothing to mark
		}
		s, force := containerState(c)
		if s == mapper.Active && !force && !ep.DownByDocker {
			continue
		}
		w.setFrom(ctx, id, ep, cur, s, "reconcile: container "+c.State+healthSuffix(c.Health))
	}
	w.count(func(s *WatcherStats) { s.Reconciles++ })
	return nil
}

// containerState is the state a container's endpoints should have, and
// whether Docker is sure enough of it to override a down the watcher did
// not make (only a passing health check is).
func containerState(c Container) (s mapper.State, force bool) {
	if c.State != StateRunning || c.Health == HealthUnhealthy {
		return mapper.Down, false
	}
	return mapper.Active, c.Health == HealthHealthy
}

func healthSuffix(h string) string {
	if h == "" {
		return ""
	}
	return " (" + h + ")"
}

func shortID(id string) string {
	if len(id) > idLen {
		return id[:idLen]
	}
	return id
}
