package swarmhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
)

// Docker is what swarmhook needs of a Docker engine. NewDocker returns the
// real one; tests may fake it. Its types are swarmhook's own, so that only
// this file ties the package to the Docker client's API.
type Docker interface {
	// NetworkName returns the name of the network whose ID is id, or an
	// error wrapping ErrUnknownNetwork when the engine has none (yet: a
	// network is stored only after its driver's CreateNetwork returned).
	NetworkName(ctx context.Context, id string) (string, error)
	// Containers lists every container of the engine, running or not.
	Containers(ctx context.Context) ([]Container, error)
	// Container returns one container, or an error wrapping
	// ErrUnknownContainer when the engine has none by that ID.
	Container(ctx context.Context, id string) (Container, error)
	// Events streams the engine's container events from since on
	// (inclusive: Docker sends again an event stamped exactly since; zero
	// means from now). The error channel receives exactly one error when
	// the stream ends (ctx's error when ctx ended); the event channel is
	// then no longer written.
	Events(ctx context.Context, since time.Time) (<-chan Event, <-chan error)
	// Close releases the client's connections.
	Close() error
}

// Container is what swarmhook reads of a Docker container.
type Container struct {
	ID   string
	Name string
	// State is Docker's: created, running, paused, restarting, removing,
	// exited or dead.
	State string
	// Health is "" (no health check), "starting", "healthy" or
	// "unhealthy".
	Health string
	// Endpoints are the Docker endpoint IDs of the container's networks.
	// Docker holds endpoints only while the container runs: it deletes
	// them when the container stops, and creates new ones at each start.
	Endpoints []string
}

// Container states and health statuses, as Docker names them.
const (
	StateRunning = "running"
	StatePaused  = "paused"

	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Event is one container event.
type Event struct {
	// Time is when the engine logged the event, to the nanosecond: a
	// stream resumes from the last Time seen.
	Time      time.Time
	Container string
	// Action is start, die, kill, pause, unpause, destroy or health_status
	// (the events the watcher asks for).
	Action string
	// Health is the new status of a health_status event: healthy or
	// unhealthy.
	Health string
	// Signal is the signal number of a kill event (0 when Docker did not
	// say).
	Signal int
}

// Errors of the Docker interface.
var (
	// ErrUnknownNetwork is returned by Docker.NetworkName when the engine
	// does not know the network.
	ErrUnknownNetwork = errors.New("unknown Docker network")
	// ErrUnknownContainer is returned by Docker.Container when the engine
	// does not know the container (it was removed).
	ErrUnknownContainer = errors.New("unknown Docker container")
)

// NewDocker returns a client of the engine at host ("unix:///run/docker.sock";
// empty means the DOCKER_HOST environment, else the default socket). It
// negotiates the API version, so Debian's docker.io 20.10 (API 1.41) works.
func NewDocker(host string) (Docker, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	c, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %q: %w", host, err)
	}
	return &engine{c: c}, nil
}

type engine struct {
	c *client.Client
}

// NetworkName lists rather than inspects: listing takes no lock on the
// network's endpoints, and the plugin calls it while Docker is in the
// middle of connecting a container.
func (d *engine) NetworkName(ctx context.Context, id string) (string, error) {
	ns, err := d.c.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("id", id))})
	if err != nil {
		return "", fmt.Errorf("list Docker networks: %w", err)
	}
	for _, n := range ns {
		if n.ID == id {
			return n.Name, nil
		}
	}
	return "", fmt.Errorf("network %.12s: %w", id, ErrUnknownNetwork)
}

// Containers lists with one call. The list has no health field: Docker
// writes it into the status text ("Up 5 minutes (unhealthy)").
func (d *engine) Containers(ctx context.Context) ([]Container, error) {
	cs, err := d.c.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list Docker containers: %w", err)
	}
	out := make([]Container, 0, len(cs))
	for _, c := range cs {
		x := Container{ID: c.ID, State: c.State, Health: healthFromStatus(c.Status)}
		if len(c.Names) > 0 {
			x.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		if c.NetworkSettings != nil {
			x.Endpoints = endpointIDs(c.NetworkSettings.Networks)
		}
		out = append(out, x)
	}
	return out, nil
}

func healthFromStatus(s string) string {
	switch {
	case strings.HasSuffix(s, "(unhealthy)"):
		return HealthUnhealthy
	case strings.HasSuffix(s, "(healthy)"):
		return HealthHealthy
	case strings.HasSuffix(s, "(health: starting)"):
		return HealthStarting
	}
	return ""
}

func endpointIDs(nets map[string]*network.EndpointSettings) []string {
	var ids []string
	for _, n := range nets {
		if n != nil && n.EndpointID != "" {
			ids = append(ids, n.EndpointID)
		}
	}
	return ids
}

func (d *engine) Container(ctx context.Context, id string) (Container, error) {
	c, err := d.c.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return Container{}, fmt.Errorf("container %.12s: %w", id, ErrUnknownContainer)
	}
	if err != nil {
		return Container{}, fmt.Errorf("inspect Docker container %.12s: %w", id, err)
	}
	x := Container{ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.State != nil {
		x.State = c.State.Status
		if c.State.Health != nil {
			x.Health = c.State.Health.Status
		}
	}
	if c.NetworkSettings != nil {
		x.Endpoints = endpointIDs(c.NetworkSettings.Networks)
	}
	return x, nil
}

// watchedActions are the container events the watcher acts on.
var watchedActions = []string{"start", "die", "kill", "pause", "unpause", "destroy", "health_status"}

func (d *engine) Events(ctx context.Context, since time.Time) (<-chan Event, <-chan error) {
	args := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)))
	for _, a := range watchedActions {
		args.Add("event", a)
	}
	opts := events.ListOptions{Filters: args}
	if !since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	out := make(chan Event)
	errc := make(chan error, 1)
	msgs, errs := d.c.Events(ctx, opts)
	go func() {
		for {
			select {
			case err := <-errs:
				if err == nil {
					err = errors.New("event stream closed")
				}
				errc <- fmt.Errorf("watch Docker events: %w", err)
				return
			case m := <-msgs:
				ev := Event{Time: time.Unix(0, m.TimeNano), Container: m.Actor.ID, Action: string(m.Action)}
				if m.TimeNano == 0 {
					ev.Time = time.Unix(m.Time, 0)
				}
				// Docker names it "health_status: healthy".
				if a, h, ok := strings.Cut(ev.Action, ":"); ok {
					ev.Action, ev.Health = a, strings.TrimSpace(h)
				}
				if s, ok := m.Actor.Attributes["signal"]; ok {
					ev.Signal, _ = strconv.Atoi(s)
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				}
			}
		}
	}()
	return out, errc
}

func (d *engine) Close() error { return d.c.Close() }
