package swarmhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/daolinet/daoli/mapper"
)

// agentClient speaks the JSON of the local agent's unix socket. It does
// not import the agent's package: swarmhook must not depend on the
// command, which depends on it (internal/layering).
type agentClient struct {
	path string
	hc   *http.Client
}

func newAgentClient(path string) *agentClient {
	return &agentClient{path: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// hostVethRequest is the agent's POST /v1/host-veth.
type hostVethRequest struct {
	Network  string            `json:"network"`
	IP       netip.Addr        `json:"ip"`
	MAC      mapper.MAC        `json:"mac,omitzero"`
	Name     string            `json:"name,omitempty"`
	Ports    []mapper.PortSpec `json:"ports,omitempty"`
	Mode     mapper.Mode       `json:"mode,omitempty"`
	Priority uint16            `json:"priority,omitempty"`
	State    mapper.State      `json:"state,omitempty"`
}

type hostVethResponse struct {
	Endpoint mapper.Endpoint `json:"endpoint"`
	Peer     string          `json:"peer"`
}

// agentError is an error the agent answered with; Status is its HTTP
// status (409 for a registry conflict).
type agentError struct {
	Status int
	Msg    string
}

func (e *agentError) Error() string { return "agent: " + e.Msg }

func (c *agentClient) do(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
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
		return &agentError{Status: resp.StatusCode, Msg: e.Error}
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (c *agentClient) hostVeth(ctx context.Context, req hostVethRequest) (hostVethResponse, error) {
	var r hostVethResponse
	return r, c.do(ctx, "/v1/host-veth", req, &r)
}

// detach removes the endpoint and its veth pair.
func (c *agentClient) detach(ctx context.Context, ref string) error {
	var e mapper.Endpoint
	return c.do(ctx, "/v1/detach", map[string]string{"endpoint": ref}, &e)
}
