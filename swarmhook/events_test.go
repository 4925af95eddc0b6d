package swarmhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
)

// These tests drive the Watcher with a fake Docker against the fixture's
// real mapper and plugin. They need no root.

func newFakeDocker() *fakeDocker {
	return &fakeDocker{names: map[string]string{}, containers: map[string]Container{}, streams: make(chan *fakeStream, 16)}
}

// fakeStream is one event stream the watcher opened.
type fakeStream struct {
	since time.Time
	evs   chan Event
	errs  chan error
}

func (d *fakeDocker) Containers(context.Context) ([]Container, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.listErr != nil {
		return nil, d.listErr
	}
	var out []Container
	for _, c := range d.containers {
		out = append(out, c)
	}
	return out, nil
}

func (d *fakeDocker) Container(_ context.Context, id string) (Container, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[id]
	if !ok {
		return Container{}, fmt.Errorf("container %s: %w", id, ErrUnknownContainer)
	}
	return c, nil
}

func (d *fakeDocker) Events(ctx context.Context, since time.Time) (<-chan Event, <-chan error) {
	s := &fakeStream{since: since, evs: make(chan Event), errs: make(chan error, 1)}
	go func() {
		<-ctx.Done()
		select {
		case s.errs <- ctx.Err():
		default:
		}
	}()
	d.streams <- s
	return s.evs, s.errs
}

func (d *fakeDocker) setContainer(c Container) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.containers[c.ID] = c
}

func (d *fakeDocker) removeContainer(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.containers, id)
}

// started creates Docker endpoint eid at addr in network n1 and joins it,
// as Docker does when a container starts; the mapper endpoint is active.
func (f *fixture) started(pool, eid, addr string) mapper.Endpoint {
	f.t.Helper()
	if _, _, err := f.endpoint(pool, "n1", eid, addr, nil); err != nil {
		f.t.Fatal(err)
	}
	f.must("NetworkDriver.Join", joinRequest{NetworkID: "n1", EndpointID: eid}, &joinResponse{})
	ep, ok := f.p.endpoint(eid)
	if !ok {
		f.t.Fatalf("plugin does not hold %s", eid)
	}
	return f.mapperEndpoint(ep.Endpoint)
}

func (f *fixture) mapperEndpoint(id uint32) mapper.Endpoint {
	f.t.Helper()
	d, err := f.mc.Endpoint(context.Background(), strconv.FormatUint(uint64(id), 10))
	if err != nil {
		f.t.Fatalf("endpoint %d: %v", id, err)
	}
	return d.Endpoint
}

func (f *fixture) watcher(cfg WatcherConfig) *Watcher {
	f.t.Helper()
	cfg.Plugin, cfg.Docker = f.p, f.docker
	w, err := NewWatcher(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return w
}

// TestWatcherEvents applies a sequence of events to one container and
// checks its endpoint's state in the mapper after each.
func TestWatcherEvents(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pool := f.network("n1", "net1", "10.1.0.0/24")
	const eid = "e1aaaaaaaaaaaaaaaa"
	e := f.started(pool, eid, "10.1.0.5")
	f.docker.setContainer(Container{ID: "c1", State: StateRunning, Endpoints: []string{eid, "not-ours"}})
	w := f.watcher(WatcherConfig{})
	ref := strconv.FormatUint(uint64(e.ID), 10)

	at := time.Now()
	ev := func(action string, mod func(*Event)) Event {
		at = at.Add(time.Millisecond)
		e := Event{Time: at, Container: "c1", Action: action}
		if mod != nil {
			mod(&e)
		}
		return e
	}
	signal := func(n int) func(*Event) { return func(e *Event) { e.Signal = n } }
	health := func(h string) func(*Event) { return func(e *Event) { e.Health = h } }
	steps := []struct {
		name string
		ev   Event
		want mapper.State
	}{
		{"start", ev("start", nil), mapper.Active},
		{"kill KILL", ev("kill", signal(9)), mapper.Down},
		{"start again", ev("start", nil), mapper.Active},
		{"kill HUP changes nothing", ev("kill", signal(1)), mapper.Active},
		{"docker stop sends TERM", ev("kill", signal(15)), mapper.Down},
		{"unpause after a down the watcher made", ev("unpause", nil), mapper.Active},
		{"pause", ev("pause", nil), mapper.Down},
		{"unpause", ev("unpause", nil), mapper.Active},
		{"unhealthy", ev("health_status", health(HealthUnhealthy)), mapper.Down},
		{"healthy", ev("health_status", health(HealthHealthy)), mapper.Active},
		{"die", ev("die", nil), mapper.Down},
		{"healthy", ev("health_status", health(HealthHealthy)), mapper.Active},
		{"an event older than the endpoint changes nothing", Event{Time: time.Now().Add(-time.Hour), Container: "c1", Action: "die"}, mapper.Active},
		{"another container's event changes nothing", Event{Time: at.Add(time.Millisecond), Container: "c2", Action: "die"}, mapper.Active},
	}
	for _, s := range steps {
		w.apply(ctx, s.ev)
		if got := f.mapperEndpoint(e.ID).State; got != s.want {
			t.Fatalf("after %s: endpoint %s, want %s", s.name, got, s.want)
		}
	}

	// A down someone else made (the agent's health checks, an operator)
	// is not undone by unpause, only by evidence: start or healthy.
	if _, err := f.mc.SetEndpointState(ctx, ref, mapper.StateRequest{State: mapper.Down}); err != nil {
		t.Fatal(err)
	}
	w.apply(ctx, ev("unpause", nil))
	if got := f.mapperEndpoint(e.ID).State; got != mapper.Down {
		t.Errorf("unpause undid a down the watcher did not make: %s", got)
	}
	w.apply(ctx, ev("health_status", health(HealthHealthy)))
	if got := f.mapperEndpoint(e.ID).State; got != mapper.Active {
		t.Errorf("healthy: endpoint %s, want active", got)
	}

	// Destroyed without DeleteEndpoint (a lost call): the endpoint goes.
	f.docker.removeContainer("c1")
	w.apply(ctx, ev("destroy", nil))
	if _, err := f.mc.Endpoint(ctx, ref); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("after destroy the endpoint is still in the mapper: %v", err)
	}
	if _, ok := f.p.endpoint(eid); ok {
		t.Error("after destroy the plugin still holds the endpoint")
	}
	st := w.Stats()
	if st.MarkedDown != 5 || st.MarkedActive != 6 || st.Removed != 1 {
		t.Errorf("stats %+v: want 5 marked down, 6 active (the first start found it active), 1 removed", st)
	}
}

// TestWatcherResume: when the stream fails, the watcher opens a new one
// from the time of the last event it saw, skips the repeats Docker sends
// at that instant, and reconciles.
func TestWatcherResume(t *testing.T) {
	f := newFixture(t)
	pool := f.network("n1", "net1", "10.1.0.0/24")
	const eid = "e1aaaaaaaaaaaaaaaa"
	e := f.started(pool, eid, "10.1.0.5")
	f.docker.setContainer(Container{ID: "c1", State: StateRunning, Endpoints: []string{eid}})
	w := f.watcher(WatcherConfig{Interval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	before := time.Now()
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	next := func() *fakeStream {
		t.Helper()
		select {
		case s := <-f.docker.streams:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("the watcher opened no event stream")
			return nil
		}
	}
	s1 := next()
	if s1.since.Before(before) || s1.since.After(time.Now()) {
		t.Errorf("first stream since %v: want the time Run started (after %v)", s1.since, before)
	}
	t1 := time.Now()
	t2 := t1.Add(time.Millisecond)
	s1.evs <- Event{Time: t1, Container: "c1", Action: "pause"}
	s1.evs <- Event{Time: t2, Container: "c1", Action: "unpause"}
	s1.errs <- errors.New("connection reset by dockerd")

	s2 := next()
	if !s2.since.Equal(t2) {
		t.Errorf("resumed since %v, want the last event's time %v", s2.since, t2)
	}
	// Docker repeats what is stamped exactly since: skipped. Then a new
	// one, and the container is gone as far as a reconcile can tell.
	f.docker.setContainer(Container{ID: "c1", State: "exited", Endpoints: []string{eid}})
	s2.evs <- Event{Time: t2, Container: "c1", Action: "unpause"}
	s2.evs <- Event{Time: t2.Add(time.Millisecond), Container: "c1", Action: "kill", Signal: 9}
	waitState(t, f, e.ID, mapper.Down)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := w.Stats()
		if st.Events == 3 && st.Streams == 2 && st.Reconciles >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v: want 3 events (the repeat skipped), 2 streams, and a reconcile after the resume", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitState(t *testing.T, f *fixture, id uint32, want mapper.State) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := f.mapperEndpoint(id).State
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %d is %s, want %s", id, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWatcherReconcile: what events were lost, a reconcile finds.
func TestWatcherReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	pool := f.network("n1", "net1", "10.1.0.0/24")
	eps := map[string]mapper.Endpoint{}
	ids := map[string]string{}
	for i, name := range []string{"missed-die", "destroyed", "young", "unhealthy", "healthy", "other-down", "paused", "fine"} {
		ids[name] = fmt.Sprintf("e%d%017d", i, i)
		eps[name] = f.started(pool, ids[name], fmt.Sprintf("10.1.0.%d", 10+i))
	}
	running := func(name, health string) Container {
		return Container{ID: "c-" + name, State: StateRunning, Health: health, Endpoints: []string{ids[name]}}
	}
	// The die was lost: Docker lists the container exited (a fake that
	// still shows the endpoint; the real one would already have deleted
	// it, and then the endpoint is removed, as "destroyed" shows).
	f.docker.setContainer(Container{ID: "c-missed-die", State: "exited", Endpoints: []string{ids["missed-die"]}})
	f.docker.setContainer(running("unhealthy", HealthUnhealthy))
	f.docker.setContainer(running("healthy", HealthHealthy))
	f.docker.setContainer(running("other-down", ""))
	f.docker.setContainer(Container{ID: "c-paused", State: StatePaused, Endpoints: []string{ids["paused"]}})
	f.docker.setContainer(running("fine", ""))
	f.docker.setContainer(Container{ID: "c-unrelated", State: StateRunning, Endpoints: []string{"0123abcd"}})
	// "destroyed" and "young": no container holds them. "healthy" was
	// taken down by the watcher; "other-down" by someone else.
	for _, name := range []string{"healthy", "other-down"} {
		if _, err := f.mc.SetEndpointState(ctx, strconv.FormatUint(uint64(eps[name].ID), 10), mapper.StateRequest{State: mapper.Down}); err != nil {
			t.Fatal(err)
		}
	}
	f.p.setDownByDocker(ids["healthy"], true)

	w := f.watcher(WatcherConfig{Grace: time.Minute})
	// Every endpoint but "young" was created long ago.
	created := time.Now()
	w.now = func() time.Time { return created.Add(2 * time.Minute) }
	f.p.mu.Lock()
	f.p.st.Endpoints[ids["young"]].Created = created.Add(2 * time.Minute)
	f.p.mu.Unlock()

	if err := w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]mapper.State{
		"missed-die": mapper.Down, "young": mapper.Active, "unhealthy": mapper.Down, "healthy": mapper.Active,
		"other-down": mapper.Down, "paused": mapper.Down, "fine": mapper.Active,
	}
	for name, s := range want {
		if got := f.mapperEndpoint(eps[name].ID).State; got != s {
			t.Errorf("%s: endpoint %s, want %s", name, got, s)
		}
	}
	if _, err := f.mc.Endpoint(ctx, strconv.FormatUint(uint64(eps["destroyed"].ID), 10)); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("the endpoint no container holds is still in the mapper: %v", err)
	}
	if _, ok := f.p.endpoint(ids["destroyed"]); ok {
		t.Error("the plugin still holds the endpoint no container holds")
	}
	if st := w.Stats(); st.Removed != 1 || st.MarkedDown != 3 || st.MarkedActive != 1 || st.Reconciles != 1 {
		t.Errorf("stats %+v: want 1 removed, 3 down, 1 active, 1 reconcile", st)
	}

	// Once older than the grace, "young" goes too; and a paused container
	// that runs again comes back, as the watcher took it down.
	f.docker.setContainer(running("paused", ""))
	w.now = func() time.Time { return created.Add(4 * time.Minute) }
	if err := w.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.mc.Endpoint(ctx, strconv.FormatUint(uint64(eps["young"].ID), 10)); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("after the grace, the endpoint no container holds is still in the mapper: %v", err)
	}
	if got := f.mapperEndpoint(eps["paused"].ID).State; got != mapper.Active {
		t.Errorf("unpaused container: endpoint %s, want active", got)
	}

	// Docker unreachable: an error, and nothing removed.
	f.docker.mu.Lock()
	f.docker.listErr = errors.New("connection refused")
	f.docker.mu.Unlock()
	if err := w.Reconcile(ctx); err == nil {
		t.Error("reconcile without Docker: no error")
	}
	if n := len(f.endpoints("net1")); n != 6 {
		t.Errorf("mapper has %d endpoints, want the 6 still held", n)
	}
}
