// Package agentapi is the protocol of a daoli agent's unix socket: the
// requests orchestrator hooks (the command line, Docker's network plugin,
// the CNI plugin) send to the agent of their server, and a client for it.
//
// It depends on the mapper's model only, so that a hook can speak to the
// agent without linking the agent, its eBPF dataplane or netlink. The
// socket is root's alone (mode 0600): whoever can open it can attach any
// container to any network this server's agent may write.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"

	"github.com/daolinet/daoli/mapper"
)

// DefaultRunDir is where agents put their sockets unless told otherwise.
const DefaultRunDir = "/run/daoli"

// SocketPath is the socket of the agent of server name in runDir (zero:
// DefaultRunDir).
func SocketPath(runDir, name string) string {
	if runDir == "" {
		runDir = DefaultRunDir
	}
	return filepath.Join(runDir, name+".sock")
}

// AttachRequest attaches a container to a network through this server
// (POST /v1/attach, answered with the mapper.Endpoint).
type AttachRequest struct {
	// Netns is the path of the container's network namespace, such as
	// /proc/PID/ns/net or /run/netns/NAME.
	Netns string `json:"netns"`
	// Ifname is the interface inside the container. Zero means eth0.
	Ifname  string     `json:"ifname,omitempty"`
	Network string     `json:"network"`
	IP      netip.Addr `json:"ip,omitzero"`
	MAC     mapper.MAC `json:"mac,omitzero"`
	Name    string     `json:"name,omitempty"`
	// Owner is who the address belongs to (mapper.Claim): with an owner,
	// IP may be zero and the owner's address, or a free one, is used.
	Owner    string            `json:"owner,omitempty"`
	Ports    []mapper.PortSpec `json:"ports,omitempty"`
	Mode     mapper.Mode       `json:"mode,omitempty"`
	Priority uint16            `json:"priority,omitempty"`
	// Published are ports every server serves to clients outside the
	// cluster, leading to ports it serves.
	Published []mapper.PublishedPort `json:"published,omitempty"`
}

// MoveRequest re-attaches an endpoint's container to this server: live
// migration when the container's namespace is reachable from here
// (POST /v1/move).
type MoveRequest struct {
	Endpoint string `json:"endpoint"` // ID or name
	Netns    string `json:"netns"`
	Ifname   string `json:"ifname,omitempty"`
}

// DetachRequest removes an endpoint attached through this server
// (POST /v1/detach).
type DetachRequest struct {
	Endpoint string `json:"endpoint"` // ID or name
}

// HostVethRequest registers an endpoint on this server and creates its
// veth pair in the server's namespace, both ends there: the caller moves
// the peer into the container (POST /v1/host-veth).
type HostVethRequest struct {
	Network  string            `json:"network"`
	IP       netip.Addr        `json:"ip"`
	MAC      mapper.MAC        `json:"mac,omitzero"`
	Name     string            `json:"name,omitempty"`
	Ports    []mapper.PortSpec `json:"ports,omitempty"`
	Mode     mapper.Mode       `json:"mode,omitempty"`
	Priority uint16            `json:"priority,omitempty"`
	// State is the endpoint's first state. Zero means active; an
	// orchestrator that must check the registration first (Docker's
	// plugin claims an address this way) asks for down and marks the
	// endpoint active in the mapper when the container starts.
	State mapper.State `json:"state,omitempty"`
}

// HostVethResponse is what POST /v1/host-veth answers.
type HostVethResponse struct {
	Endpoint mapper.Endpoint `json:"endpoint"`
	// Peer is the container's side, down, in the server's namespace,
	// with the endpoint's MAC and the uplink's MTU. Deleting the
	// endpoint (POST /v1/detach) deletes the pair, wherever Peer is then.
	Peer string `json:"peer"`
}

// CheckRequest asks the agent whether an endpoint of this server is
// whole (POST /v1/check): registered here with its interface, the host
// side of its veth up, and inside Netns an interface Ifname with the
// endpoint's MAC and address and a default route through the gateway.
type CheckRequest struct {
	Endpoint string `json:"endpoint"` // ID or name
	Netns    string `json:"netns"`
	Ifname   string `json:"ifname,omitempty"`
}

// Attachment is what POST /v1/check answers, and what a hook needs to
// describe an attachment: the endpoint and its network.
type Attachment struct {
	Endpoint mapper.Endpoint `json:"endpoint"`
	Network  mapper.Network  `json:"network"`
}

// Ready is what GET /v1/ready answers when the agent is serving and its
// mapper answers; otherwise the agent answers 503 with the reason.
type Ready struct {
	Server string `json:"server"`
	Mapper string `json:"mapper"` // the mapper address that answered
}

// Error is an error the agent answered with.
type Error struct {
	Status int // HTTP status: 400 bad request, 404, 409 registry conflict, 503 not ready
	Msg    string
}

func (e *Error) Error() string { return "agent: " + e.Msg }

// Client talks to an agent over its unix socket. It is safe for
// concurrent use.
type Client struct {
	path string
	hc   *http.Client
}

// NewClient returns a client of the agent listening at socket path.
func NewClient(path string) *Client {
	return &Client{path: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Path is the socket the client talks to.
func (c *Client) Path() string { return c.path }

// Do sends a request with body in (none if nil) and decodes the answer
// into out. An answer other than 200 is an *Error; no answer at all an
// error that names the socket.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w (is daoli agent running on this server?)", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return &Error{Status: resp.StatusCode, Msg: e.Error}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Attach asks the agent to attach a container.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (mapper.Endpoint, error) {
	var e mapper.Endpoint
	return e, c.Do(ctx, http.MethodPost, "/v1/attach", req, &e)
}

// Move asks the agent to take over an endpoint's container.
func (c *Client) Move(ctx context.Context, req MoveRequest) (mapper.Endpoint, error) {
	var e mapper.Endpoint
	return e, c.Do(ctx, http.MethodPost, "/v1/move", req, &e)
}

// Detach asks the agent to remove an endpoint.
func (c *Client) Detach(ctx context.Context, req DetachRequest) (mapper.Endpoint, error) {
	var e mapper.Endpoint
	return e, c.Do(ctx, http.MethodPost, "/v1/detach", req, &e)
}

// HostVeth asks the agent to register an endpoint and create its veth
// pair on the server's side.
func (c *Client) HostVeth(ctx context.Context, req HostVethRequest) (HostVethResponse, error) {
	var r HostVethResponse
	return r, c.Do(ctx, http.MethodPost, "/v1/host-veth", req, &r)
}

// Check asks the agent whether an endpoint of its server is whole.
func (c *Client) Check(ctx context.Context, req CheckRequest) (Attachment, error) {
	var a Attachment
	return a, c.Do(ctx, http.MethodPost, "/v1/check", req, &a)
}

// Ready asks the agent whether it and its mapper answer.
func (c *Client) Ready(ctx context.Context) (Ready, error) {
	var r Ready
	return r, c.Do(ctx, http.MethodGet, "/v1/ready", nil, &r)
}

// Endpoints lists the endpoints of the agent's server in the registry
// (GET /v1/endpoints), the mapper's answer rather than the agent's view.
func (c *Client) Endpoints(ctx context.Context) ([]mapper.Endpoint, error) {
	var eps []mapper.Endpoint
	return eps, c.Do(ctx, http.MethodGet, "/v1/endpoints", nil, &eps)
}
