package swarmhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/daolinet/daoli/mapper"
)

// state is what the plugin must remember across its own restarts: Docker
// sends CreateNetwork once, when the network is created, and later calls
// name only Docker's IDs. It is written to one JSON file, replaced
// atomically after every change.
type state struct {
	// Networks are keyed by Docker's network ID, which differs on every
	// host; the mapper knows the network by Name.
	Networks map[string]*networkState `json:"networks"`
	// Endpoints are keyed by Docker's endpoint ID.
	Endpoints map[string]*endpointState `json:"endpoints"`
}

type networkState struct {
	// Name is the Docker network's name, the mapper network's name; empty
	// until learned from Docker.
	Name    string       `json:"name,omitempty"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	// Created says the plugin created the mapper network, so deleting
	// the Docker network may delete it.
	Created bool `json:"created,omitempty"`
}

type endpointState struct {
	NetworkID string `json:"network_id"`
	Network   string `json:"network"`
	// Endpoint is the mapper endpoint's ID; Server and Interface where it
	// runs, Peer the interface Docker moves into the container.
	Endpoint  uint32        `json:"endpoint"`
	Server    string        `json:"server"`
	Interface string        `json:"interface"`
	Peer      string        `json:"peer"`
	IP        netip.Addr    `json:"ip"`
	MAC       mapper.MAC    `json:"mac"`
	Service   string        `json:"service,omitempty"`
	Published []portBinding `json:"published,omitempty"`
	// Created is when the plugin registered the endpoint: the watcher
	// ignores events older than that (they are about the container's
	// previous endpoints), and never removes an endpoint so young that
	// Docker may not list it yet. Zero (a state file of an older plugin)
	// counts as long ago.
	Created time.Time `json:"created,omitzero"`
	// DownByDocker says the watcher marked the endpoint down for what
	// Docker reported (paused, killed, unhealthy), so that it may mark it
	// active again when Docker reports the container well; a down the
	// watcher did not make (the agent's health checks, an operator) is
	// left alone.
	DownByDocker bool `json:"down_by_docker,omitempty"`
}

func newState() *state {
	return &state{Networks: map[string]*networkState{}, Endpoints: map[string]*endpointState{}}
}

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) (*state, error) {
	s := newState()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read plugin state: %w", err)
	}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("read plugin state %s: %w (move the file away to start afresh; Docker's networks must then be created again)", path, err)
	}
	if s.Networks == nil {
		s.Networks = map[string]*networkState{}
	}
	if s.Endpoints == nil {
		s.Endpoints = map[string]*endpointState{}
	}
	return s, nil
}

// save replaces the state file atomically: a crash leaves the old or the
// new state, never a torn one.
func (s *state) save(path string) error {
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return fmt.Errorf("save plugin state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save plugin state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save plugin state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save plugin state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save plugin state: %w", err)
	}
	return nil
}
