package mapper

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// DefaultAddr is where `daoli mapper` listens unless told otherwise.
const DefaultAddr = "127.0.0.1:9470"

// Client talks to a mapper's HTTP API. Errors from the mapper are
// *APIError values that unwrap to the registry's sentinel errors, so
// errors.Is(err, ErrNotFound) works as it does on a Registry. A Client is
// safe for concurrent use.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client of the mapper at base ("host:port" or a URL).
// A nil hc means http.DefaultClient.
func NewClient(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: normalizeURL(base), hc: hc}
}

// URL returns the mapper's base URL.
func (c *Client) URL() string { return c.base }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w (is the mapper running at %s?)", method, path, err, c.base)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return readAPIError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

func readAPIError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{Status: resp.StatusCode}
	if err := json.Unmarshal(b, e); err != nil || e.Message == "" {
		e.Message = fmt.Sprintf("mapper answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return e
}

// CreateNetwork creates a network.
func (c *Client) CreateNetwork(ctx context.Context, spec NetworkSpec) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodPost, "/v1/networks", spec, &n)
}

// Networks lists the networks.
func (c *Client) Networks(ctx context.Context) ([]Network, error) {
	var ns []Network
	return ns, c.do(ctx, http.MethodGet, "/v1/networks", nil, &ns)
}

// Network returns one network.
func (c *Client) Network(ctx context.Context, name string) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodGet, "/v1/networks/"+url.PathEscape(name), nil, &n)
}

// UpdateNetwork changes a network.
func (c *Client) UpdateNetwork(ctx context.Context, name string, u NetworkUpdate) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodPatch, "/v1/networks/"+url.PathEscape(name), u, &n)
}

// DeleteNetwork removes a network.
func (c *Client) DeleteNetwork(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/networks/"+url.PathEscape(name), nil, nil)
}

// RegisterServer creates or updates a server.
func (c *Client) RegisterServer(ctx context.Context, spec ServerSpec) (Server, error) {
	var s Server
	return s, c.do(ctx, http.MethodPost, "/v1/servers", spec, &s)
}

// Servers lists the servers.
func (c *Client) Servers(ctx context.Context) ([]Server, error) {
	var ss []Server
	return ss, c.do(ctx, http.MethodGet, "/v1/servers", nil, &ss)
}

// Server returns one server.
func (c *Client) Server(ctx context.Context, name string) (Server, error) {
	var s Server
	return s, c.do(ctx, http.MethodGet, "/v1/servers/"+url.PathEscape(name), nil, &s)
}

// DeleteServer removes a server.
func (c *Client) DeleteServer(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/servers/"+url.PathEscape(name), nil, nil)
}

// Heartbeat marks a server seen now.
func (c *Client) Heartbeat(ctx context.Context, name string) (Server, error) {
	var s Server
	return s, c.do(ctx, http.MethodPost, "/v1/servers/"+url.PathEscape(name)+"/heartbeat", nil, &s)
}

// CreateEndpoint registers an endpoint.
func (c *Client) CreateEndpoint(ctx context.Context, spec EndpointSpec) (Endpoint, error) {
	var e Endpoint
	return e, c.do(ctx, http.MethodPost, "/v1/endpoints", spec, &e)
}

// CreateEndpoints registers endpoints in one transaction.
func (c *Client) CreateEndpoints(ctx context.Context, specs []EndpointSpec) ([]Endpoint, error) {
	var es []Endpoint
	return es, c.do(ctx, http.MethodPost, "/v1/endpoints/batch", BatchRequest{Endpoints: specs}, &es)
}

// Endpoints lists endpoints; a non-empty network or server filters.
func (c *Client) Endpoints(ctx context.Context, network, server string) ([]Endpoint, error) {
	q := url.Values{}
	if network != "" {
		q.Set("network", network)
	}
	if server != "" {
		q.Set("server", server)
	}
	path := "/v1/endpoints"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var es []Endpoint
	return es, c.do(ctx, http.MethodGet, path, nil, &es)
}

// Endpoint returns an endpoint, by ID or name, with its 6-tuples.
func (c *Client) Endpoint(ctx context.Context, ref string) (EndpointDetail, error) {
	var d EndpointDetail
	return d, c.do(ctx, http.MethodGet, "/v1/endpoints/"+url.PathEscape(ref), nil, &d)
}

// DeleteEndpoint removes an endpoint and returns what it was.
func (c *Client) DeleteEndpoint(ctx context.Context, ref string) (Endpoint, error) {
	var e Endpoint
	return e, c.do(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(ref), nil, &e)
}

// MoveEndpoint moves an endpoint to another server.
func (c *Client) MoveEndpoint(ctx context.Context, ref, server, iface string) (Endpoint, error) {
	var e Endpoint
	return e, c.do(ctx, http.MethodPost, "/v1/endpoints/"+url.PathEscape(ref)+"/move", MoveRequest{Server: server, Interface: iface}, &e)
}

// SetEndpointState marks an endpoint active or down, under req's guards.
func (c *Client) SetEndpointState(ctx context.Context, ref string, req StateRequest) (Endpoint, error) {
	var e Endpoint
	return e, c.do(ctx, http.MethodPut, "/v1/endpoints/"+url.PathEscape(ref)+"/state", req, &e)
}

// SetPublished replaces the ports an endpoint publishes on its server.
func (c *Client) SetPublished(ctx context.Context, ref string, ps []PublishedPort) (Endpoint, error) {
	var e Endpoint
	if ps == nil {
		ps = []PublishedPort{}
	}
	return e, c.do(ctx, http.MethodPut, "/v1/endpoints/"+url.PathEscape(ref)+"/published", PublishedRequest{Published: ps}, &e)
}

func schedURL(k ServiceKey) string {
	return "/v1/scheduler/services/" + url.PathEscape(k.Network) + "/" + k.IP.String() + "/" + strconv.Itoa(int(k.Port))
}

func protoQuery(p Protocol) string {
	if p == "" {
		return ""
	}
	return "?protocol=" + url.QueryEscape(string(p))
}

// PlaceService declares a scheduled service and places its replicas.
func (c *Client) PlaceService(ctx context.Context, k ServiceKey, req PlaceRequest) (ScheduledService, error) {
	var s ScheduledService
	req.Protocol = cmp.Or(req.Protocol, k.Protocol)
	return s, c.do(ctx, http.MethodPost, schedURL(k), req, &s)
}

// ScheduledService returns a scheduled service and its replicas.
func (c *Client) ScheduledService(ctx context.Context, k ServiceKey) (ScheduledService, error) {
	var s ScheduledService
	return s, c.do(ctx, http.MethodGet, schedURL(k)+protoQuery(k.Protocol), nil, &s)
}

// ScaleService sets a scheduled service's number of replicas.
func (c *Client) ScaleService(ctx context.Context, k ServiceKey, replicas uint16) (ScheduledService, error) {
	var s ScheduledService
	return s, c.do(ctx, http.MethodPost, schedURL(k)+"/scale", ScaleRequest{Protocol: k.Protocol, Replicas: replicas}, &s)
}

// MoveReplica moves one replica of a scheduled service; to empty lets the
// mapper choose.
func (c *Client) MoveReplica(ctx context.Context, k ServiceKey, replica, to string) (ScheduledService, error) {
	var s ScheduledService
	return s, c.do(ctx, http.MethodPost, schedURL(k)+"/move", MoveReplicaRequest{Protocol: k.Protocol, Replica: replica, To: to}, &s)
}

// RemoveService removes a scheduled service and its replicas.
func (c *Client) RemoveService(ctx context.Context, k ServiceKey) (ScheduledService, error) {
	var s ScheduledService
	return s, c.do(ctx, http.MethodDelete, schedURL(k)+protoQuery(k.Protocol), nil, &s)
}

// Services lists the services with their backends.
func (c *Client) Services(ctx context.Context) ([]Service, error) {
	var s []Service
	return s, c.do(ctx, http.MethodGet, "/v1/services", nil, &s)
}

// Allocation returns the mapper's block size and port ranges.
func (c *Client) Allocation(ctx context.Context) (Allocation, error) {
	var a Allocation
	return a, c.do(ctx, http.MethodGet, "/v1/allocation", nil, &a)
}

// Snapshot returns the whole registry at one revision.
func (c *Client) Snapshot(ctx context.Context) (Snapshot, error) {
	var s Snapshot
	return s, c.do(ctx, http.MethodGet, "/v1/snapshot", nil, &s)
}

// Watch follows the change log from revision rev (zero: the next one). The
// channel ends with a response whose Err is set, or when ctx ends. A
// dropped connection is an error too: watch again from the last revision
// seen (changes of one write share a revision, and the stream may have
// ended between them; apply changes idempotently), or, on ErrCompacted,
// take a new Snapshot.
func (c *Client) Watch(ctx context.Context, rev int64) <-chan WatchResponse {
	out := make(chan WatchResponse, 4)
	go func() {
		defer close(out)
		send := func(w WatchResponse) bool {
			select {
			case out <- w:
				return true
			case <-ctx.Done():
				return false
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/watch?revision="+strconv.FormatInt(rev, 10), nil)
		if err != nil {
			send(WatchResponse{Err: err})
			return
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			send(WatchResponse{Err: fmt.Errorf("watch: %w", err)})
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err := readAPIError(resp)
			send(WatchResponse{Err: err, CompactRevision: err.(*APIError).CompactRevision})
			return
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), maxBody)
		for sc.Scan() {
			line := sc.Bytes()
			var probe struct {
				Message string `json:"error"`
			}
			json.Unmarshal(line, &probe)
			if probe.Message != "" {
				e := &APIError{}
				json.Unmarshal(line, e)
				send(WatchResponse{Err: e, CompactRevision: e.CompactRevision})
				return
			}
			var ch Change
			if err := json.Unmarshal(line, &ch); err != nil {
				send(WatchResponse{Err: fmt.Errorf("watch: decode change: %w", err)})
				return
			}
			if !send(WatchResponse{Changes: []Change{ch}}) {
				return
			}
		}
		err = sc.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		if ctx.Err() == nil {
			send(WatchResponse{Err: fmt.Errorf("watch: stream ended: %w", err)})
		}
	}()
	return out
}
