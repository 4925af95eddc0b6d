package swarmhook

import (
	"context"
	"errors"
	"fmt"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
)

// Docker is what swarmhook needs of a Docker engine. NewDocker returns the
// real one; tests may fake it.
type Docker interface {
	// NetworkName returns the name of the network whose ID is id, or an
	// error wrapping ErrUnknownNetwork when the engine has none (yet: a
	// network is stored only after its driver's CreateNetwork returned).
	NetworkName(ctx context.Context, id string) (string, error)
	// Close releases the client's connections.
	Close() error
}

// ErrUnknownNetwork is returned by Docker.NetworkName when the engine
// does not know the network.
var ErrUnknownNetwork = errors.New("unknown Docker network")

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

func (d *engine) Close() error { return d.c.Close() }
