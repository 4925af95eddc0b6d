package mapper

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/daolinet/daoli/mapper/store"
)

// DefaultAddr is where `daoli mapper` listens unless told otherwise.
const DefaultAddr = "127.0.0.1:9470"

// Client talks to a mapper's HTTP API, through one of several mappers of
// one registry (stateless mappers on one etcd cluster): it keeps using the
// one that answered last and moves to the next when that one cannot be
// reached. Errors from the mapper are *APIError values that unwrap to the
// registry's sentinel errors, so errors.Is(err, ErrNotFound) works as it
// does on a Registry. A Client is safe for concurrent use.
//
// A request is sent to another mapper when the connection to one failed
// before the request went out, when the mapper answered 503 (it could not
// reach its store and wrote nothing), when the call ran out of time (the
// next call starts at another mapper), or, for requests that can be
// repeated without changing their effect (reads, PUT and DELETE,
// registering a server and heartbeats), when the connection broke before
// the answer came or a proxy answered 502 or 504. A request that creates
// something (a network, an endpoint, a batch of them, a scheduled
// service) is not repeated then: its error wraps ErrOutcomeUnknown, and
// the caller looks the object up by its name before trying again. A watch
// stream that carries nothing, not even keepalives, for three times
// WatchKeepalive ends, and the next watch starts at another mapper.
type Client struct {
	bases []string
	cur   atomic.Int32 // the mapper that answered last
	hc    *http.Client
}

// ErrOutcomeUnknown is wrapped by a Client's error when a mapper received
// a request that creates something and died before answering, or when
// the mapper itself lost the answer of its store: whether the write
// happened is unknown until it is looked up.
var ErrOutcomeUnknown = store.ErrOutcomeUnknown

// ErrUnavailable is returned when a mapper could not reach its store
// before writing anything (HTTP 503): another mapper may be asked.
var ErrUnavailable = store.ErrUnavailable

// NewClient returns a client of the mappers at addrs: one "host:port" or
// URL, or several separated by commas. A nil hc means http.DefaultClient.
func NewClient(addrs string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	c := &Client{hc: hc}
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.bases = append(c.bases, normalizeURL(a))
		}
	}
	if len(c.bases) == 0 {
		c.bases = []string{normalizeURL(DefaultAddr)}
	}
	return c
}

// URL returns the base URL of the mapper the client uses now.
func (c *Client) URL() string { return c.bases[int(c.cur.Load())%len(c.bases)] }

// URLs returns the base URLs of every mapper the client knows, in order.
func (c *Client) URLs() []string { return slices.Clone(c.bases) }

// WithHTTPClient returns a client of the same mappers through hc.
func (c *Client) WithHTTPClient(hc *http.Client) *Client {
	return NewClient(strings.Join(c.bases, ","), hc)
}

// repeatable reports whether a request may be sent again after a mapper
// received it: repeating it changes nothing that the first did not.
func repeatable(method, path string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch:
		return true
	}
	return strings.HasPrefix(path, "/v1/servers") || strings.HasSuffix(path, "/scale") || strings.HasSuffix(path, "/exports") ||
		(strings.HasPrefix(path, "/v1/endpoints/") && strings.HasSuffix(path, "/move"))
}

// notSent reports whether a transport error happened before the request
// left: the connection was never made.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// next moves the client off mapper i, unless another call already did.
func (c *Client) next(i int) {
	c.cur.CompareAndSwap(int32(i), int32((i+1)%len(c.bases)))
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	for {
		_, err := c.across(ctx, func(base string) (error, bool) {
			return c.try(ctx, base, method, path, body, out)
		})
		// Over the mapper's rate: a request that may be repeated waits
		// as long as the mapper asks, within ctx.
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.RetryAfter <= 0 || !repeatable(method, path) {
			return err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < ae.RetryAfter {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(ae.RetryAfter):
		}
	}
}

// across calls f with one mapper after another, from the one that answered
// last, until f succeeds or says that asking another is not safe (its
// second result). A mapper that failed, or did not answer in time, is
// left: the next call starts at another. It returns the index of the
// last mapper asked.
func (c *Client) across(ctx context.Context, f func(base string) (err error, again bool)) (int, error) {
	start := int(c.cur.Load())
	var errs []error
	for n := range len(c.bases) {
		i := (start + n) % len(c.bases)
		err, again := f(c.bases[i])
		if err == nil {
			c.cur.Store(int32(i))
			return i, nil
		}
		var ae *APIError
		if again || (ctx.Err() != nil && !errors.As(err, &ae)) {
			c.next(i)
		}
		if !again || ctx.Err() != nil {
			return i, err
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return start, errs[0]
	}
	return start, fmt.Errorf("no mapper answered: %w", errors.Join(errs...))
}

// try sends one request to the mapper at base; again says whether another
// mapper may be asked.
func (c *Client) try(ctx context.Context, base, method, path string, body []byte, out any) (err error, again bool) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err, false
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s %s: %w", method, path, err), false
		case notSent(err):
			return fmt.Errorf("%s %s: %w (is the mapper running at %s?)", method, path, err, base), true
		case repeatable(method, path):
			return fmt.Errorf("%s %s: %w (the mapper at %s failed)", method, path, err, base), true
		}
		return fmt.Errorf("%s %s: the mapper at %s failed after receiving the request (%v); look up what it was to create before trying again: %w",
			method, path, base, err, ErrOutcomeUnknown), false
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			// The mapper wrote nothing (it could not reach its store).
			return readAPIError(resp), true
		case http.StatusBadGateway, http.StatusGatewayTimeout:
			// A proxy's: the mapper may have received the request.
			return readAPIError(resp), repeatable(method, path)
		}
		return readAPIError(resp), false
	}
	if out == nil {
		return nil, false
	}
	if p, ok := out.(*paged); ok {
		p.next = resp.Header.Get(NextHeader)
		out = p.items
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		err = fmt.Errorf("%s %s: decode response: %w", method, path, err)
		if !repeatable(method, path) {
			err = fmt.Errorf("%w: %w", err, ErrOutcomeUnknown)
		}
		return err, false
	}
	return nil, false
}

// paged is the answer to a list request: the items of one page, and the
// cursor of the next (empty on the last page).
type paged struct {
	items any
	next  string
}

// list gets every page of the list at path (with the query q) into out.
// Each page is read at its own revision: an item created or removed while
// the pages are read may be missing (use Snapshot for one revision).
func list[T any](ctx context.Context, c *Client, path string, q url.Values, out *[]T) error {
	*out = []T{}
	for {
		var items []T
		p := &paged{items: &items}
		u := path
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		if err := c.do(ctx, http.MethodGet, u, nil, p); err != nil {
			return err
		}
		*out = append(*out, items...)
		if p.next == "" {
			return nil
		}
		if q == nil {
			q = url.Values{}
		}
		q.Set("after", p.next)
	}
}

func readAPIError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &APIError{Status: resp.StatusCode}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	if err := json.Unmarshal(b, e); err != nil || e.Message == "" {
		e.Message = fmt.Sprintf("mapper answered %s: %s", resp.Status, bytes.TrimSpace(b))
		if bytes.Contains(b, []byte("HTTP request to an HTTPS server")) {
			e.Message += " (it serves TLS: dial https://, or give the registry's CA with --tls-ca)"
		}
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
	return ns, list(ctx, c, "/v1/networks", nil, &ns)
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

// ConnectNetworks connects networks a and b: each reaches every service of
// the other. It returns a.
func (c *Client) ConnectNetworks(ctx context.Context, a, b string) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodPut, "/v1/networks/"+url.PathEscape(a)+"/connections/"+url.PathEscape(b), nil, &n)
}

// DisconnectNetworks undoes ConnectNetworks. It returns a.
func (c *Client) DisconnectNetworks(ctx context.Context, a, b string) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodDelete, "/v1/networks/"+url.PathEscape(a)+"/connections/"+url.PathEscape(b), nil, &n)
}

// ExportService lets clients of network spec.To reach one service of
// network. It returns network.
func (c *Client) ExportService(ctx context.Context, network string, spec ExportSpec) (Network, error) {
	var n Network
	return n, c.do(ctx, http.MethodPost, "/v1/networks/"+url.PathEscape(network)+"/exports", spec, &n)
}

// UnexportService undoes ExportService, for spec.To or, when it is empty,
// every network. It returns network.
func (c *Client) UnexportService(ctx context.Context, network string, spec ExportSpec) (Network, error) {
	q := url.Values{"ip": {spec.IP.String()}, "port": {strconv.Itoa(int(spec.Port))}}
	if spec.Protocol != "" {
		q.Set("protocol", string(spec.Protocol))
	}
	if spec.To != "" {
		q.Set("to", spec.To)
	}
	var n Network
	return n, c.do(ctx, http.MethodDelete, "/v1/networks/"+url.PathEscape(network)+"/exports?"+q.Encode(), nil, &n)
}

// Claims lists the address claims of a network.
func (c *Client) Claims(ctx context.Context, network string) ([]Claim, error) {
	var cs []Claim
	return cs, c.do(ctx, http.MethodGet, "/v1/networks/"+url.PathEscape(network)+"/claims", nil, &cs)
}

// Forget removes an owner's address claim in a network.
func (c *Client) Forget(ctx context.Context, network, owner string) (Claim, error) {
	var cl Claim
	return cl, c.do(ctx, http.MethodDelete, "/v1/networks/"+url.PathEscape(network)+"/claims?owner="+url.QueryEscape(owner), nil, &cl)
}

// RegisterServer creates or updates a server.
func (c *Client) RegisterServer(ctx context.Context, spec ServerSpec) (Server, error) {
	var s Server
	return s, c.do(ctx, http.MethodPost, "/v1/servers", spec, &s)
}

// Servers lists the servers.
func (c *Client) Servers(ctx context.Context) ([]Server, error) {
	var ss []Server
	return ss, list(ctx, c, "/v1/servers", nil, &ss)
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

// Heartbeat renews a server's liveness lease.
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
	var es []Endpoint
	return es, list(ctx, c, "/v1/endpoints", q, &es)
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
	return s, list(ctx, c, "/v1/services", nil, &s)
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
		resp, i, err := c.openWatch(ctx, rev)
		if err != nil {
			var ae *APIError
			errors.As(err, &ae)
			w := WatchResponse{Err: err}
			if ae != nil {
				w.CompactRevision = ae.CompactRevision
			}
			send(w)
			return
		}
		defer resp.Body.Close()
		// A mapper that goes silent for three keepalives is gone (its
		// machine died, no reset will come): end the stream, and the
		// next watch starts at another mapper.
		silent := time.AfterFunc(3*WatchKeepalive, func() { resp.Body.Close() })
		defer silent.Stop()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), maxBody)
		for sc.Scan() {
			silent.Reset(3 * WatchKeepalive)
			line := sc.Bytes()
			if len(bytes.TrimSpace(line)) == 0 {
				continue // a keepalive
			}
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
			// The mapper went away: the next watch starts at another.
			c.next(i)
			send(WatchResponse{Err: fmt.Errorf("watch: stream from %s ended: %w", c.bases[i], err)})
		}
	}()
	return out
}

// openWatch starts a watch stream at the first mapper that answers.
func (c *Client) openWatch(ctx context.Context, rev int64) (*http.Response, int, error) {
	var resp *http.Response
	i, err := c.across(ctx, func(base string) (error, bool) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/watch?revision="+strconv.FormatInt(rev, 10), nil)
		if err != nil {
			return err, false
		}
		r, err := c.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("watch: %w", err), false
			}
			return fmt.Errorf("watch: %w (is the mapper running at %s?)", err, base), true
		}
		if r.StatusCode == http.StatusOK {
			resp = r
			return nil, false
		}
		defer r.Body.Close()
		err = readAPIError(r)
		switch r.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return err, true
		}
		return err, false
	})
	return resp, i, err
}
