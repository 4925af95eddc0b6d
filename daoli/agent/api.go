package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/mapper"
	"golang.org/x/sys/unix"
)

// Status is what GET /v1/status on an agent's socket answers.
type Status struct {
	Server   string   `json:"server"`
	IPs      []string `json:"ips"`
	Revision int64    `json:"revision"` // newest seen
	Applied  int64    `json:"applied"`  // programmed into the dataplane
	// Snapshots counts the registry snapshots the agent has loaded (one
	// at start, then one per compaction it fell behind); MapWrites the
	// dataplane map entries it has written or deleted.
	Snapshots int64                         `json:"snapshots"`
	MapWrites uint64                        `json:"map_writes"`
	Endpoints []mapper.Endpoint             `json:"endpoints"`
	Drops     map[string]uint64             `json:"drops"`
	Counters  map[uint32]dataplane.Counters `json:"counters"`
}

// listen opens the agent's unix socket, readable by root only.
func (a *Agent) listen() (net.Listener, error) {
	path := SocketPath(a.cfg.RunDir, a.cfg.Name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	os.Remove(path) // a socket left by an agent that was killed
	// Created 0600, not chmod'ed there after a moment open to all: the
	// agent runs nothing else yet.
	umask := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(umask)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict %s: %w", path, err)
	}
	return l, nil
}

func (a *Agent) api() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, f func(context.Context, []byte) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
			var v any
			if err == nil {
				v, err = f(r.Context(), body)
			}
			w.Header().Set("Content-Type", "application/json")
			if err != nil {
				status := http.StatusInternalServerError
				var ae *mapper.APIError
				if errors.As(err, &ae) {
					status = ae.Status
				} else if errors.Is(err, errBadRequest) {
					status = http.StatusBadRequest
				}
				var nr *notReady
				if errors.As(err, &nr) {
					status = http.StatusServiceUnavailable
				}
				w.WriteHeader(status)
				json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			json.NewEncoder(w).Encode(v)
		})
	}
	handle("POST /v1/attach", func(ctx context.Context, b []byte) (any, error) {
		var req AttachRequest
		if err := decode(b, &req); err != nil {
			return nil, err
		}
		return a.Attach(ctx, req)
	})
	handle("POST /v1/move", func(ctx context.Context, b []byte) (any, error) {
		var req MoveRequest
		if err := decode(b, &req); err != nil {
			return nil, err
		}
		return a.Move(ctx, req)
	})
	handle("POST /v1/detach", func(ctx context.Context, b []byte) (any, error) {
		var req DetachRequest
		if err := decode(b, &req); err != nil {
			return nil, err
		}
		return a.Detach(ctx, req)
	})
	handle("POST /v1/host-veth", a.hostVethRoute) // hostveth.go: for Docker's network plugin
	handle("POST /v1/check", func(ctx context.Context, b []byte) (any, error) {
		var req agentapi.CheckRequest
		if err := decode(b, &req); err != nil {
			return nil, err
		}
		return a.Check(ctx, req)
	})
	handle("GET /v1/ready", func(ctx context.Context, _ []byte) (any, error) { return a.Ready(ctx) })
	handle("GET /v1/endpoints", func(ctx context.Context, _ []byte) (any, error) {
		return a.mc.Endpoints(ctx, "", a.cfg.Name)
	})
	handle("GET /v1/status", func(ctx context.Context, _ []byte) (any, error) { return a.Status() })
	return mux
}

var errBadRequest = errors.New("bad request")

func decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}

// Status reports the agent's view and its dataplane's counters.
func (a *Agent) Status() (Status, error) {
	s := Status{Server: a.cfg.Name, Revision: a.model.rev(), Applied: a.model.current(a.m.programmed()), Endpoints: a.model.local(a.cfg.Name), Drops: map[string]uint64{},
		Snapshots: a.m.snapshots.Load(), MapWrites: a.dp.Writes()}
	for _, ip := range a.ips {
		s.IPs = append(s.IPs, ip.String())
	}
	drops, err := a.dp.DropCounters()
	if err != nil {
		return s, err
	}
	for r, n := range drops {
		s.Drops[r.String()] = n
	}
	s.Counters, err = a.dp.EndpointCounters()
	return s, err
}

// Client talks to an agent over its unix socket: agentapi's client, and
// the agent's status. It is safe for concurrent use.
type Client struct{ *agentapi.Client }

// NewClient returns a client of the agent listening at socket path.
func NewClient(path string) *Client { return &Client{agentapi.NewClient(path)} }

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.Do(ctx, http.MethodGet, "/v1/status", nil, &s)
}
