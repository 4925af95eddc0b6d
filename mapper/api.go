package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RevisionHeader carries the registry revision a list was read at.
const RevisionHeader = "X-Daoli-Revision"

// APIError is the body of every error response, and the error the Client
// returns for one. It unwraps to the sentinel error its Code names.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`            // "invalid", "not_found", ...
	Field   string `json:"field,omitempty"` // the request field that was wrong
	Message string `json:"error"`
	// CompactRevision is set with code "compacted".
	CompactRevision int64 `json:"compact_revision,omitempty"`
	// RetryAfter is the wait a 429 asked for (its Retry-After header).
	RetryAfter time.Duration `json:"-"`
}

func (e *APIError) Error() string { return e.Message }

// Unwrap returns the sentinel error of e.Code, if any.
func (e *APIError) Unwrap() error {
	for _, c := range errorCodes {
		if c.code == e.Code {
			return c.err
		}
	}
	return nil
}

var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrInvalid, "invalid", http.StatusBadRequest},
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrExists, "exists", http.StatusConflict},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrInUse, "in_use", http.StatusConflict},
	{ErrPortSpaceFull, "port_space_full", http.StatusConflict},
	{ErrNetworkFull, "network_full", http.StatusConflict},
	{ErrCompacted, "compacted", http.StatusGone},
	{ErrUnauthenticated, "unauthenticated", http.StatusUnauthorized},
	{ErrForbidden, "forbidden", http.StatusForbidden},
	{ErrTooManyRequests, "too_many_requests", http.StatusTooManyRequests},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{ErrOutcomeUnknown, "outcome_unknown", http.StatusInternalServerError},
}

func toAPIError(err error) *APIError {
	e := &APIError{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			e.Status, e.Code = c.status, c.code
			break
		}
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		e.Field = fe.Field
	}
	return e
}

// API serves a Registry over HTTP/JSON under /v1. Its routes are listed in
// docs/api.md. An API is safe for concurrent use.
type API struct {
	reg    *Registry
	log    *slog.Logger
	mux    *http.ServeMux
	stop   chan struct{}
	once   sync.Once
	auth   *Authenticator // nil: every request is trusted
	limits limiter
}

// access is who may call a route.
type access int

const (
	read     access = iota // every identity
	operator               // operators only
	scoped                 // the registry checks the server it writes (permitServer)
)

// RequireClientCerts makes the API answer only requests with a client
// certificate au accepts, and permit each identity what its role allows
// (docs/security.md). Serve it over TLS configured with ServerTLS.
func (a *API) RequireClientCerts(au *Authenticator) { a.auth = au }

// authorize authenticates r and checks that its identity may use a route
// of access acc, returning r with the identity in its context.
func (a *API) authorize(r *http.Request, acc access) (*http.Request, error) {
	if a.auth == nil {
		return r, nil
	}
	id, err := a.auth.authenticate(r)
	if err != nil {
		return r, err
	}
	switch {
	case acc == operator:
		if err := permitOperator(WithIdentity(r.Context(), id), r.Method+" "+r.URL.Path); err != nil {
			return r, err
		}
	case acc == scoped && id.Role == RoleReader:
		return r, fmt.Errorf("%w: %s may only read and watch, not %s %s", ErrForbidden, id, r.Method, r.URL.Path)
	}
	return r.WithContext(WithIdentity(r.Context(), id)), nil
}

// Close ends every open watch stream, so that http.Server.Shutdown, which
// waits for requests to finish, does not wait for watches that never do.
// Streams end without an error line: clients see the stream end and resume.
func (a *API) Close() {
	a.once.Do(func() { close(a.stop) })
}

// NewAPI returns the HTTP API of reg. A nil logger discards.
func NewAPI(reg *Registry, log *slog.Logger) *API {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &API{reg: reg, log: log, mux: http.NewServeMux(), stop: make(chan struct{})}
	routes := []struct {
		pattern string
		h       func(*http.Request) (int, any, error)
		access  access
	}{
		{"GET /v1/snapshot", a.snapshot, read},
		{"GET /v1/allocation", func(*http.Request) (int, any, error) { return http.StatusOK, a.reg.Allocation(), nil }, read},
		{"GET /v1/networks", a.listNetworks, read},
		{"POST /v1/networks", a.createNetwork, operator},
		{"GET /v1/networks/{name}", a.getNetwork, read},
		{"PATCH /v1/networks/{name}", a.updateNetwork, operator},
		{"DELETE /v1/networks/{name}", a.deleteNetwork, operator},
		{"GET /v1/networks/{name}/claims", a.listClaims, read},
		{"DELETE /v1/networks/{name}/claims", a.forget, operator},
		{"PUT /v1/networks/{name}/connections/{other}", a.connect, operator},
		{"DELETE /v1/networks/{name}/connections/{other}", a.disconnect, operator},
		{"POST /v1/networks/{name}/exports", a.export, operator},
		{"DELETE /v1/networks/{name}/exports", a.unexport, operator},
		{"GET /v1/servers", a.listServers, read},
		{"POST /v1/servers", a.registerServer, scoped},
		{"GET /v1/servers/{name}", a.getServer, read},
		{"DELETE /v1/servers/{name}", a.deleteServer, operator},
		{"POST /v1/servers/{name}/heartbeat", a.heartbeat, scoped},
		{"GET /v1/endpoints", a.listEndpoints, read},
		{"POST /v1/endpoints", a.createEndpoint, scoped},
		{"POST /v1/endpoints/batch", a.createEndpoints, scoped},
		{"GET /v1/endpoints/{ref}", a.getEndpoint, read},
		{"DELETE /v1/endpoints/{ref}", a.deleteEndpoint, scoped},
		{"POST /v1/endpoints/{ref}/move", a.moveEndpoint, scoped},
		{"PUT /v1/endpoints/{ref}/state", a.setState, scoped},
		{"PUT /v1/endpoints/{ref}/published", a.setPublished, scoped},
		{"GET /v1/services", a.listServices, read},
		{"GET " + schedPath, a.getScheduled, read},
		{"POST " + schedPath, a.placeService, operator},
		{"POST " + schedPath + "/scale", a.scaleService, operator},
		{"POST " + schedPath + "/move", a.moveReplica, operator},
		{"DELETE " + schedPath, a.removeService, operator},
	}
	for _, rt := range routes {
		a.mux.HandleFunc(rt.pattern, a.wrap(rt.access, rt.h))
	}
	a.mux.HandleFunc("GET /v1/watch", a.watch)
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &APIError{Status: http.StatusNotFound, Code: "not_found",
			Message: fmt.Sprintf("no route %s %s; see docs/api.md", r.Method, r.URL.Path)})
	})
	return a
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func (a *API) wrap(acc access, h func(*http.Request) (int, any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		r, ok := a.admit(w, r, acc)
		if !ok {
			return
		}
		status, v, err := h(r)
		if err != nil {
			e := toAPIError(err)
			if e.Status >= 500 {
				a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
			}
			writeError(w, e)
			return
		}
		if p, ok := v.(listPage); ok {
			if p.next != "" {
				w.Header().Set(NextHeader, p.next)
			}
			v = p.items
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
}

// admit authorizes r and takes it from its client's rate. When it may not
// go on, admit answers it and returns false.
func (a *API) admit(w http.ResponseWriter, r *http.Request, acc access) (*http.Request, bool) {
	// Refused requests count against their address's rate too, so a
	// client without a certificate cannot flood the mapper with them.
	r, err := a.authorize(r, acc)
	if wait, rerr := a.limits.allow(r); rerr != nil {
		w.Header().Set("Retry-After", retryAfter(wait))
		err = rerr
	}
	if err != nil {
		a.log.Warn("request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
		writeError(w, toAPIError(err))
		return r, false
	}
	return r, true
}

func writeError(w http.ResponseWriter, e *APIError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	json.NewEncoder(w).Encode(e)
}

func (a *API) snapshot(r *http.Request) (int, any, error) {
	s, err := a.reg.Snapshot(r.Context())
	return http.StatusOK, s, err
}

func (a *API) listNetworks(r *http.Request) (int, any, error) {
	s, err := a.reg.Snapshot(r.Context())
	if err != nil {
		return 0, nil, err
	}
	name := func(n Network) string { return n.Name }
	p, err := paginate(a, r, s.Networks, name, afterName(name))
	return http.StatusOK, p, err
}

func (a *API) createNetwork(r *http.Request) (int, any, error) {
	var spec NetworkSpec
	if err := decodeRequest(r.Body, &spec); err != nil {
		return 0, nil, err
	}
	n, err := a.reg.CreateNetwork(r.Context(), spec)
	return http.StatusCreated, n, err
}

func (a *API) getNetwork(r *http.Request) (int, any, error) {
	n, err := a.reg.Network(r.Context(), r.PathValue("name"))
	return http.StatusOK, n, err
}

func (a *API) updateNetwork(r *http.Request) (int, any, error) {
	var u NetworkUpdate
	if err := decodeRequest(r.Body, &u); err != nil {
		return 0, nil, err
	}
	n, err := a.reg.UpdateNetwork(r.Context(), r.PathValue("name"), u)
	return http.StatusOK, n, err
}

func (a *API) deleteNetwork(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, a.reg.DeleteNetwork(r.Context(), r.PathValue("name"))
}

func (a *API) listClaims(r *http.Request) (int, any, error) {
	cs, err := a.reg.Claims(r.Context(), r.PathValue("name"))
	return http.StatusOK, cs, err
}

// forget takes the owner as a query parameter: owners hold slashes.
func (a *API) forget(r *http.Request) (int, any, error) {
	owner := r.URL.Query().Get("owner")
	if owner == "" {
		return 0, nil, invalid("owner", "missing; want ?owner=OWNER")
	}
	c, err := a.reg.Forget(r.Context(), r.PathValue("name"), owner)
	return http.StatusOK, c, err
}

func (a *API) connect(r *http.Request) (int, any, error) {
	n, err := a.reg.ConnectNetworks(r.Context(), r.PathValue("name"), r.PathValue("other"))
	return http.StatusOK, n, err
}

func (a *API) disconnect(r *http.Request) (int, any, error) {
	n, err := a.reg.DisconnectNetworks(r.Context(), r.PathValue("name"), r.PathValue("other"))
	return http.StatusOK, n, err
}

func (a *API) export(r *http.Request) (int, any, error) {
	var spec ExportSpec
	if err := decodeRequest(r.Body, &spec); err != nil {
		return 0, nil, err
	}
	n, err := a.reg.ExportService(r.Context(), r.PathValue("name"), spec)
	return http.StatusOK, n, err
}

func (a *API) unexport(r *http.Request) (int, any, error) {
	q := r.URL.Query()
	k, err := ServiceKeyOf(r.PathValue("name"), q.Get("ip"), q.Get("port"), Protocol(q.Get("protocol")))
	if err != nil {
		return 0, nil, err
	}
	spec := ExportSpec{IP: k.IP, Port: k.Port, Protocol: k.Protocol, To: q.Get("to")}
	n, err := a.reg.UnexportService(r.Context(), r.PathValue("name"), spec)
	return http.StatusOK, n, err
}

func (a *API) listServers(r *http.Request) (int, any, error) {
	s, err := a.reg.Snapshot(r.Context())
	if err != nil {
		return 0, nil, err
	}
	name := func(s Server) string { return s.Name }
	p, err := paginate(a, r, s.Servers, name, afterName(name))
	return http.StatusOK, p, err
}

func (a *API) registerServer(r *http.Request) (int, any, error) {
	var spec ServerSpec
	if err := decodeRequest(r.Body, &spec); err != nil {
		return 0, nil, err
	}
	s, err := a.reg.RegisterServer(r.Context(), spec)
	return http.StatusOK, s, err
}

func (a *API) getServer(r *http.Request) (int, any, error) {
	s, err := a.reg.Server(r.Context(), r.PathValue("name"))
	return http.StatusOK, s, err
}

func (a *API) deleteServer(r *http.Request) (int, any, error) {
	return http.StatusNoContent, nil, a.reg.DeleteServer(r.Context(), r.PathValue("name"))
}

func (a *API) heartbeat(r *http.Request) (int, any, error) {
	s, err := a.reg.Heartbeat(r.Context(), r.PathValue("name"))
	return http.StatusOK, s, err
}

// listEndpoints answers GET /v1/endpoints[?network=N][&server=S].
func (a *API) listEndpoints(r *http.Request) (int, any, error) {
	s, err := a.reg.Snapshot(r.Context())
	if err != nil {
		return 0, nil, err
	}
	net, srv := r.URL.Query().Get("network"), r.URL.Query().Get("server")
	out := s.Endpoints[:0]
	for _, e := range s.Endpoints {
		if (net == "" || e.Network == net) && (srv == "" || e.Server == srv) {
			out = append(out, e)
		}
	}
	p, err := paginate(a, r, out, func(e Endpoint) string { return strconv.FormatUint(uint64(e.ID), 10) },
		func(s string) (func(Endpoint) bool, error) {
			id, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, invalid("after", "%q: want an endpoint ID", s)
			}
			return func(e Endpoint) bool { return uint64(e.ID) > id }, nil
		})
	return http.StatusOK, p, err
}

func (a *API) createEndpoint(r *http.Request) (int, any, error) {
	var spec EndpointSpec
	if err := decodeRequest(r.Body, &spec); err != nil {
		return 0, nil, err
	}
	e, err := a.reg.CreateEndpoint(r.Context(), spec)
	return http.StatusCreated, e, err
}

// BatchRequest is the body of POST /v1/endpoints/batch.
type BatchRequest struct {
	Endpoints []EndpointSpec `json:"endpoints"`
}

func (a *API) createEndpoints(r *http.Request) (int, any, error) {
	var req BatchRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	eps, err := a.reg.CreateEndpoints(r.Context(), req.Endpoints)
	return http.StatusCreated, eps, err
}

// EndpointDetail is an endpoint with its 6-tuples, as GET
// /v1/endpoints/{ref} returns it.
type EndpointDetail struct {
	Endpoint  Endpoint   `json:"endpoint"`
	SixTuples []SixTuple `json:"six_tuples"`
}

func (a *API) getEndpoint(r *http.Request) (int, any, error) {
	e, err := a.reg.Endpoint(r.Context(), r.PathValue("ref"))
	if err != nil {
		return 0, nil, err
	}
	srv, err := a.reg.Server(r.Context(), e.Server)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, EndpointDetail{Endpoint: e, SixTuples: e.SixTuples(&srv)}, nil
}

func (a *API) deleteEndpoint(r *http.Request) (int, any, error) {
	e, err := a.reg.DeleteEndpoint(r.Context(), r.PathValue("ref"))
	return http.StatusOK, e, err
}

// MoveRequest is the body of POST /v1/endpoints/{ref}/move.
type MoveRequest struct {
	Server    string `json:"server"`
	Interface string `json:"interface,omitempty"`
}

func (a *API) moveEndpoint(r *http.Request) (int, any, error) {
	var req MoveRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	if req.Server == "" {
		return 0, nil, invalid("server", "missing")
	}
	e, err := a.reg.MoveEndpoint(r.Context(), r.PathValue("ref"), req.Server, req.Interface)
	return http.StatusOK, e, err
}

func (a *API) setState(r *http.Request) (int, any, error) {
	var req StateRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	e, err := a.reg.SetEndpointState(r.Context(), r.PathValue("ref"), req)
	return http.StatusOK, e, err
}

func (a *API) setPublished(r *http.Request) (int, any, error) {
	var req PublishedRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	e, err := a.reg.SetPublished(r.Context(), r.PathValue("ref"), req.Published)
	return http.StatusOK, e, err
}

func (a *API) listServices(r *http.Request) (int, any, error) {
	s, err := a.reg.Snapshot(r.Context())
	if err != nil {
		return 0, nil, err
	}
	svcs := Services(s.Servers, s.Endpoints)
	if svcs == nil {
		svcs = []Service{}
	}
	p, err := paginate(a, r, svcs, func(s Service) string { return serviceCursor(s.ServiceKey) },
		func(c string) (func(Service) bool, error) {
			k, err := parseServiceCursor(c)
			if err != nil {
				return nil, err
			}
			return func(s Service) bool { return compareServiceKeys(s.ServiceKey, k) > 0 }, nil
		})
	return http.StatusOK, p, err
}

// serviceCursor is a service's key as a list cursor:
// NETWORK/IP/PORT/PROTOCOL.
func serviceCursor(k ServiceKey) string {
	return url.PathEscape(k.Network) + "/" + k.IP.String() + "/" + strconv.Itoa(int(k.Port)) + "/" + string(k.Protocol)
}

func parseServiceCursor(c string) (ServiceKey, error) {
	parts := strings.Split(c, "/")
	bad := invalid("after", "%q: want a service's NETWORK/IP/PORT/PROTOCOL", c)
	if len(parts) != 4 {
		return ServiceKey{}, bad
	}
	network, err := url.PathUnescape(parts[0])
	if err != nil {
		return ServiceKey{}, bad
	}
	k, err := ServiceKeyOf(network, parts[1], parts[2], Protocol(parts[3]))
	if err != nil {
		return ServiceKey{}, bad
	}
	return k, nil
}

// schedPath is the scheduler API's service: docs/scheduler.md.
const schedPath = "/v1/scheduler/services/{network}/{ip}/{port}"

func schedKeyOf(r *http.Request, proto Protocol) (ServiceKey, error) {
	return ServiceKeyOf(r.PathValue("network"), r.PathValue("ip"), r.PathValue("port"), proto)
}

func (a *API) getScheduled(r *http.Request) (int, any, error) {
	k, err := schedKeyOf(r, Protocol(r.URL.Query().Get("protocol")))
	if err != nil {
		return 0, nil, err
	}
	s, err := a.reg.ScheduledService(r.Context(), k)
	return http.StatusOK, s, err
}

func (a *API) placeService(r *http.Request) (int, any, error) {
	var req PlaceRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	k, err := schedKeyOf(r, req.Protocol)
	if err != nil {
		return 0, nil, err
	}
	s, created, err := a.reg.PlaceService(r.Context(), k, req)
	if created {
		return http.StatusCreated, s, err
	}
	return http.StatusOK, s, err
}

func (a *API) scaleService(r *http.Request) (int, any, error) {
	var req ScaleRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	k, err := schedKeyOf(r, req.Protocol)
	if err != nil {
		return 0, nil, err
	}
	s, err := a.reg.ScaleService(r.Context(), k, req.Replicas)
	return http.StatusOK, s, err
}

func (a *API) moveReplica(r *http.Request) (int, any, error) {
	var req MoveReplicaRequest
	if err := decodeRequest(r.Body, &req); err != nil {
		return 0, nil, err
	}
	k, err := schedKeyOf(r, req.Protocol)
	if err != nil {
		return 0, nil, err
	}
	s, err := a.reg.MoveReplica(r.Context(), k, req.Replica, req.To)
	return http.StatusOK, s, err
}

func (a *API) removeService(r *http.Request) (int, any, error) {
	k, err := schedKeyOf(r, Protocol(r.URL.Query().Get("protocol")))
	if err != nil {
		return 0, nil, err
	}
	s, err := a.reg.RemoveService(r.Context(), k)
	return http.StatusOK, s, err
}

// watch streams the change log as newline-delimited JSON: one Change per
// line, from ?revision=R on (default: the next revision). A stream that
// cannot go on ends with one APIError line.
func (a *API) watch(w http.ResponseWriter, r *http.Request) {
	r, ok := a.admit(w, r, read)
	if !ok {
		return
	}
	done, err := a.limits.watch(r)
	if err != nil {
		a.log.Warn("watch refused", "remote", r.RemoteAddr, "error", err)
		writeError(w, toAPIError(err))
		return
	}
	defer done()
	var rev int64
	if s := r.URL.Query().Get("revision"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			writeError(w, toAPIError(invalid("revision", "%q: want a whole number, 0 or more", s)))
			return
		}
		rev = v
	}
	cur, compacted, err := a.reg.st.Revision(r.Context())
	if err != nil {
		writeError(w, toAPIError(err))
		return
	}
	if rev != 0 && rev < compacted {
		e := toAPIError(fmt.Errorf("watch from revision %d: %w (oldest is %d): list again", rev, ErrCompacted, compacted))
		e.CompactRevision = compacted
		writeError(w, e)
		return
	}
	if rev > cur+1 {
		writeError(w, toAPIError(invalid("revision", "%d is in the future (current revision %d)", rev, cur)))
		return
	}
	if rev == 0 {
		// "From the next change" is the one after the revision the header
		// reports, decided here rather than by the store later, so no
		// commit in between is missed.
		rev = cur + 1
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set(RevisionHeader, strconv.FormatInt(cur, 10))
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-a.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	enc := json.NewEncoder(w)
	keepalive := time.NewTicker(WatchKeepalive)
	defer keepalive.Stop()
	changes := a.reg.Watch(ctx, rev)
	for {
		select {
		case <-keepalive.C:
			// An empty line: a client that hears nothing for a few of
			// these knows this mapper is gone, even without a reset.
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		case resp, ok := <-changes:
			if !ok {
				return
			}
			for i := range resp.Changes {
				if err := enc.Encode(&resp.Changes[i]); err != nil {
					return
				}
			}
			if resp.Err != nil {
				e := toAPIError(resp.Err)
				e.CompactRevision = resp.CompactRevision
				enc.Encode(e)
				return
			}
			keepalive.Reset(WatchKeepalive)
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// healthz answers 200 "ok" while the registry's store answers a read
// within two seconds, 503 otherwise (an etcd cluster without a quorum).
func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, _, _, err := a.reg.st.Get(ctx, blockSizeKey); err != nil {
		http.Error(w, "the registry's store does not answer: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// WatchKeepalive is how often a watch stream with no change to send sends
// an empty line. Clients treat three intervals of silence as a dead
// mapper.
const WatchKeepalive = 2 * time.Second

// normalizeURL accepts "host:port" as well as a full URL.
func normalizeURL(s string) string {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	return strings.TrimRight(s, "/")
}
