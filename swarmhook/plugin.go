package swarmhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/mapper"
)

// PluginDir is where Docker looks for legacy plugin sockets. It is fixed:
// dockerd's --exec-root does not move it.
const PluginDir = "/run/docker/plugins"

// Config configures a Plugin.
type Config struct {
	// Mapper is the registry's client. Required.
	Mapper *mapper.Client
	// AgentSocket is the unix socket of this server's agent. Required.
	AgentSocket string
	// StateDir holds the plugin's state file, state.json. Required; it is
	// created if missing.
	StateDir string
	// Docker names networks by their ID. Nil means every network must be
	// created with -o daoli.network=NAME.
	Docker Docker
	// NameTimeout is how long to wait for Docker to know a new network's
	// name. Zero means 10 seconds.
	NameTimeout time.Duration
	// Logger receives the plugin's logs. Nil means discard.
	Logger *slog.Logger
}

// Plugin is a Docker network and IPAM driver backed by the mapper and the
// local agent.
type Plugin struct {
	cfg   Config
	log   *slog.Logger
	mc    *mapper.Client
	agent *agentapi.Client
	path  string // the state file

	ctx    context.Context // ends with Close: background name lookups
	cancel context.CancelFunc
	bg     sync.WaitGroup

	// mu serializes every call that changes the state, so the state file
	// and the registry move together, and so two claims of this server
	// never race each other.
	mu sync.Mutex
	st *state
	// pending holds addresses the IPAM chose that no endpoint holds yet,
	// per subnet, so two dynamic requests never get the same one.
	pending map[netip.Prefix]map[netip.Addr]bool
}

// New loads the plugin's state. It calls nothing.
func New(cfg Config) (*Plugin, error) {
	switch {
	case cfg.Mapper == nil:
		return nil, errors.New("new plugin: no mapper client")
	case cfg.AgentSocket == "":
		return nil, errors.New("new plugin: no agent socket")
	case cfg.StateDir == "":
		return nil, errors.New("new plugin: no state directory")
	}
	if cfg.NameTimeout == 0 {
		cfg.NameTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("new plugin: create %s: %w", cfg.StateDir, err)
	}
	path := filepath.Join(cfg.StateDir, "state.json")
	st, err := loadState(path)
	if err != nil {
		return nil, fmt.Errorf("new plugin: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Plugin{
		cfg: cfg, log: log, mc: cfg.Mapper, agent: agentapi.NewClient(cfg.AgentSocket), path: path,
		ctx: ctx, cancel: cancel, st: st, pending: map[netip.Prefix]map[netip.Addr]bool{},
	}, nil
}

// Close stops background work. The state stays on disk.
func (p *Plugin) Close() {
	p.cancel()
	p.bg.Wait()
}

// Listen opens the legacy plugin socket PluginDir/<name>.sock, so that
// Docker finds the plugin as driver and IPAM driver <name>. A socket left
// by a plugin that was killed is replaced.
func Listen(name string) (net.Listener, error) {
	return ListenAt(filepath.Join(PluginDir, name+".sock"))
}

// ListenAt is Listen at any path.
func ListenAt(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return l, nil
}

// Handler serves the plugin protocol.
func (p *Plugin) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(method string, f func(context.Context, []byte) (any, error)) {
		mux.HandleFunc("POST /"+method, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
			var v any
			if err == nil {
				v, err = f(r.Context(), body)
			}
			w.Header().Set("Content-Type", pluginContentType)
			if err != nil {
				p.log.Warn("plugin call failed", "method", method, "error", err)
				w.WriteHeader(http.StatusInternalServerError)
				msg := "daoli: " + err.Error()
				json.NewEncoder(w).Encode(errorResponse{Err: msg, Error: msg})
				return
			}
			p.log.Debug("plugin call", "method", method)
			json.NewEncoder(w).Encode(v)
		})
	}
	empty := func(context.Context, []byte) (any, error) { return struct{}{}, nil }
	route("Plugin.Activate", func(context.Context, []byte) (any, error) {
		return activateResponse{Implements: []string{kindNetwork, kindIPAM}}, nil
	})

	route("NetworkDriver.GetCapabilities", func(context.Context, []byte) (any, error) {
		// Local: Docker keeps each host's networks to itself. Global
		// connectivity: a daoli network spans servers, which also lets
		// swarm mode use it through --config-from (docs/docker.md).
		return capabilitiesResponse{Scope: "local", ConnectivityScope: "global"}, nil
	})
	route("NetworkDriver.CreateNetwork", typed(p.createNetwork))
	route("NetworkDriver.DeleteNetwork", typed(p.deleteNetwork))
	route("NetworkDriver.CreateEndpoint", typed(p.createEndpoint))
	route("NetworkDriver.DeleteEndpoint", typed(p.deleteEndpoint))
	route("NetworkDriver.EndpointOperInfo", typed(p.endpointInfo))
	route("NetworkDriver.Join", typed(p.join))
	route("NetworkDriver.Leave", typed(p.leave))
	route("NetworkDriver.ProgramExternalConnectivity", typed(p.programExternal))
	route("NetworkDriver.RevokeExternalConnectivity", typed(p.revokeExternal))
	route("NetworkDriver.DiscoverNew", empty)
	route("NetworkDriver.DiscoverDelete", empty)

	route("IpamDriver.GetCapabilities", func(context.Context, []byte) (any, error) {
		// No MAC needed: the mapper makes one when the user gave none.
		return ipamCapabilitiesResponse{}, nil
	})
	route("IpamDriver.GetDefaultAddressSpaces", func(context.Context, []byte) (any, error) {
		return addressSpacesResponse{LocalDefaultAddressSpace: "daoli", GlobalDefaultAddressSpace: "daoli"}, nil
	})
	route("IpamDriver.RequestPool", typed(p.requestPool))
	route("IpamDriver.ReleasePool", func(context.Context, []byte) (any, error) { return struct{}{}, nil })
	route("IpamDriver.RequestAddress", typed(p.requestAddress))
	route("IpamDriver.ReleaseAddress", typed(p.releaseAddress))
	return mux
}

// typed adapts a handler of one request type.
func typed[Req, Resp any](f func(context.Context, Req) (Resp, error)) func(context.Context, []byte) (any, error) {
	return func(ctx context.Context, b []byte) (any, error) {
		var req Req
		if len(b) > 0 {
			if err := json.Unmarshal(b, &req); err != nil {
				return nil, fmt.Errorf("decode request: %w", err)
			}
		}
		return f(ctx, req)
	}
}

// ---- networks ----

func (p *Plugin) createNetwork(ctx context.Context, req createNetworkRequest) (struct{}, error) {
	if len(req.IPv6Data) > 0 {
		return struct{}{}, errors.New("create network: IPv6 is not supported; leave out --ipv6")
	}
	if len(req.IPv4Data) != 1 {
		return struct{}{}, fmt.Errorf("create network: want one IPv4 subnet, got %d (give one --subnet)", len(req.IPv4Data))
	}
	d := req.IPv4Data[0]
	subnet, err := netip.ParsePrefix(d.Pool)
	if err != nil {
		return struct{}{}, fmt.Errorf("create network: pool %q: %w", d.Pool, err)
	}
	gw, err := netip.ParsePrefix(d.Gateway)
	if err != nil {
		return struct{}{}, fmt.Errorf("create network: gateway %q: %w (use daoli's IPAM: --ipam-driver daoli)", d.Gateway, err)
	}
	ns := &networkState{Subnet: subnet.Masked(), Gateway: gw.Addr()}
	if g, ok := req.Options[optGeneric].(map[string]any); ok {
		if name, ok := g[OptNetwork].(string); ok {
			ns.Name = name
		}
	}
	if ns.Name == "" && p.cfg.Docker == nil {
		return struct{}{}, fmt.Errorf("create network: no name for the mapper: give -o %s=NAME, or run the plugin with access to the Docker API", OptNetwork)
	}
	p.mu.Lock()
	p.st.Networks[req.NetworkID] = ns
	err = p.st.save(p.path)
	p.mu.Unlock()
	if err != nil {
		return struct{}{}, fmt.Errorf("create network: %w", err)
	}
	if ns.Name != "" {
		if _, err := p.ensureNetwork(ctx, req.NetworkID); err != nil {
			p.forgetNetwork(req.NetworkID)
			return struct{}{}, fmt.Errorf("create network: %w", err)
		}
		return struct{}{}, nil
	}
	// Docker stores the network, and so can name it, only after this
	// call returns: learn the name in the background, or at the first
	// endpoint, whichever comes first.
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.NameTimeout)
		defer cancel()
		if _, err := p.ensureNetwork(ctx, req.NetworkID); err != nil && p.ctx.Err() == nil {
			p.log.Error("register network in the mapper", "network_id", req.NetworkID, "error", err)
		}
	}()
	return struct{}{}, nil
}

func (p *Plugin) forgetNetwork(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.st.Networks, id)
	if err := p.st.save(p.path); err != nil {
		p.log.Error("forget network", "network_id", id, "error", err)
	}
}

// ensureNetwork learns the name of Docker network id if needed and makes
// sure the mapper has that network with the same subnet and gateway. It
// returns the network's state.
func (p *Plugin) ensureNetwork(ctx context.Context, id string) (networkState, error) {
	p.mu.Lock()
	ns, ok := p.st.Networks[id]
	var cur networkState
	if ok {
		cur = *ns
	}
	p.mu.Unlock()
	if !ok {
		return cur, fmt.Errorf("network %.12s: unknown to the plugin (was it created while the plugin's state was lost? remove and create it again)", id)
	}
	if cur.Name == "" {
		name, err := p.networkName(ctx, id)
		if err != nil {
			return cur, err
		}
		cur.Name = name
	}
	// Adopt the registry's network of that name, or create it. Looked up
	// first: with client certificates, a server's may read networks but
	// only an operator's may create them.
	created := false
	n, err := p.mc.Network(ctx, cur.Name)
	if errors.Is(err, mapper.ErrNotFound) {
		n, err = p.mc.CreateNetwork(ctx, mapper.NetworkSpec{Name: cur.Name, Subnet: cur.Subnet, Gateway: cur.Gateway})
		switch {
		case err == nil:
			created = true
		case errors.Is(err, mapper.ErrExists): // created meanwhile
			n, err = p.mc.Network(ctx, cur.Name)
		case errors.Is(err, mapper.ErrForbidden):
			return cur, fmt.Errorf("network %s: not in the registry, and this server's certificate may not create it: "+
				"create it once with an operator's (daoli network create %s --subnet %s --gateway %s): %w",
				cur.Name, cur.Name, cur.Subnet, cur.Gateway, err)
		}
	}
	if err != nil {
		return cur, fmt.Errorf("network %s: %w", cur.Name, err)
	}
	if n.Subnet != cur.Subnet || n.Gateway != cur.Gateway {
		return cur, fmt.Errorf("network %s: the mapper has it with subnet %s and gateway %s, Docker's has %s and %s: %w",
			cur.Name, n.Subnet, n.Gateway, cur.Subnet, cur.Gateway, mapper.ErrConflict)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if ns, ok := p.st.Networks[id]; ok && (ns.Name != cur.Name || created && !ns.Created) {
		ns.Name = cur.Name
		ns.Created = ns.Created || created
		cur = *ns
		if err := p.st.save(p.path); err != nil {
			return cur, err
		}
	}
	return cur, nil
}

// networkName asks Docker for a network's name until it knows it.
func (p *Plugin) networkName(ctx context.Context, id string) (string, error) {
	if p.cfg.Docker == nil {
		return "", fmt.Errorf("network %.12s: no name and no Docker API to ask for it", id)
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.NameTimeout)
	defer cancel()
	for {
		name, err := p.cfg.Docker.NetworkName(ctx, id)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, ErrUnknownNetwork) {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("network %.12s: Docker did not name it: %w", id, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Plugin) deleteNetwork(ctx context.Context, req networkRequest) (struct{}, error) {
	p.mu.Lock()
	ns, ok := p.st.Networks[req.NetworkID]
	delete(p.st.Networks, req.NetworkID)
	err := p.st.save(p.path)
	shared := false
	if ok {
		for _, o := range p.st.Networks {
			shared = shared || o.Name == ns.Name
		}
	}
	p.mu.Unlock()
	if err != nil {
		return struct{}{}, fmt.Errorf("delete network: %w", err)
	}
	if ok && ns.Created && ns.Name != "" && !shared {
		// Another server's Docker may still use the network: the mapper
		// refuses while endpoints remain, and another plugin recreates it
		// on demand.
		err := p.mc.DeleteNetwork(ctx, ns.Name)
		if err != nil && !errors.Is(err, mapper.ErrInUse) && !errors.Is(err, mapper.ErrNotFound) {
			return struct{}{}, fmt.Errorf("delete network %s: %w", ns.Name, err)
		}
	}
	return struct{}{}, nil
}

// ---- endpoints ----

func (p *Plugin) createEndpoint(ctx context.Context, req createEndpointRequest) (createEndpointResponse, error) {
	var resp createEndpointResponse
	if req.Interface == nil || req.Interface.Address == "" {
		return resp, errors.New("create endpoint: Docker gave no IPv4 address; create the network with --ipam-driver daoli")
	}
	if req.Interface.AddressIPv6 != "" {
		return resp, errors.New("create endpoint: IPv6 is not supported")
	}
	addr, err := netip.ParsePrefix(req.Interface.Address)
	if err != nil {
		return resp, fmt.Errorf("create endpoint: address %q: %w", req.Interface.Address, err)
	}
	ip := addr.Addr()
	var mac mapper.MAC
	if req.Interface.MacAddress != "" {
		if mac, err = mapper.ParseMAC(req.Interface.MacAddress); err != nil {
			return resp, fmt.Errorf("create endpoint: MAC %q: %w", req.Interface.MacAddress, err)
		}
	}
	decl, err := parseDeclaration(req.Options)
	if err != nil {
		return resp, fmt.Errorf("create endpoint: %w", err)
	}
	ns, err := p.ensureNetwork(ctx, req.NetworkID)
	if err != nil {
		return resp, fmt.Errorf("create endpoint: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.unpend(ns.Subnet, ip)

	name := endpointName(decl.Service, req.EndpointID)
	if err := p.checkClaim(ctx, ns.Name, ip, decl.Service, name, 0); err != nil {
		return resp, fmt.Errorf("create endpoint: %w", err)
	}
	r, err := p.agent.HostVeth(ctx, agentapi.HostVethRequest{
		Network: ns.Name, IP: ip, MAC: mac, Name: name, Ports: decl.Ports,
		Mode: decl.Mode, Priority: decl.Priority, State: mapper.Down,
	})
	if err != nil {
		return resp, fmt.Errorf("create endpoint: %w", err)
	}
	e := r.Endpoint
	undo := func(err error) (createEndpointResponse, error) {
		if derr := detach(context.WithoutCancel(ctx), p.agent, e.ID); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back endpoint %d: %w", e.ID, derr))
		}
		return createEndpointResponse{}, fmt.Errorf("create endpoint: %w", err)
	}
	// Another server may have claimed the address at the same time: of
	// two endpoints that may not share it, the older (lower ID) keeps it.
	if err := p.checkClaim(ctx, ns.Name, ip, decl.Service, name, e.ID); err != nil {
		return undo(err)
	}
	p.st.Endpoints[req.EndpointID] = &endpointState{
		NetworkID: req.NetworkID, Network: ns.Name, Endpoint: e.ID, Server: e.Server,
		Interface: e.Interface, Peer: r.Peer, IP: ip, MAC: e.MAC, Service: decl.Service,
		Created: time.Now(),
	}
	if err := p.st.save(p.path); err != nil {
		delete(p.st.Endpoints, req.EndpointID)
		return undo(err)
	}
	p.log.Info("endpoint created", "endpoint", e.Ref(), "id", e.ID, "network", ns.Name, "ip", ip, "service", decl.Service)
	if req.Interface.MacAddress == "" {
		resp.Interface = &endpointInterface{MacAddress: e.MAC.String()}
	}
	return resp, nil
}

// ErrAddressInUse is returned (wrapped, with mapper.ErrConflict) when a
// container asks for an address that another endpoint of the network
// holds and the two did not declare the same service.
var ErrAddressInUse = errors.New("address in use")

// checkClaim checks that service may hold ip in network. With self zero
// (before registering) every other holder counts; with self set (after)
// only those older than self, since a younger one gives way to self.
func (p *Plugin) checkClaim(ctx context.Context, network string, ip netip.Addr, service, self string, selfID uint32) error {
	es, err := p.mc.Endpoints(ctx, network, "")
	if err != nil {
		return fmt.Errorf("list endpoints of %s: %w", network, err)
	}
	for _, e := range es {
		if e.IP != ip || e.Name == self || selfID != 0 && e.ID > selfID {
			continue
		}
		if service != "" && serviceOf(e.Name) == service {
			continue
		}
		holder := "no service"
		if s := serviceOf(e.Name); s != "" {
			holder = "service " + s
		}
		want := "none"
		if service != "" {
			want = service
		}
		return fmt.Errorf("%s in network %s is held by endpoint %s (%s) on %s; this container declares service %s, and only containers that declare the same service (driver option %s) may share an address: %w: %w",
			ip, network, e.Ref(), holder, e.Server, want, OptService, ErrAddressInUse, mapper.ErrConflict)
	}
	return nil
}

func (p *Plugin) endpoint(id string) (endpointState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep, ok := p.st.Endpoints[id]
	if !ok {
		return endpointState{}, false
	}
	return *ep, true
}

// endpoints returns a copy of the plugin's endpoints, by Docker endpoint
// ID.
func (p *Plugin) endpoints() map[string]endpointState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]endpointState, len(p.st.Endpoints))
	for id, ep := range p.st.Endpoints {
		out[id] = *ep
	}
	return out
}

// holds returns those of Docker endpoint IDs ids that the plugin holds.
func (p *Plugin) holds(ids []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, id := range ids {
		if _, ok := p.st.Endpoints[id]; ok {
			out = append(out, id)
		}
	}
	return out
}

// setDownByDocker records whether the watcher took an endpoint down.
func (p *Plugin) setDownByDocker(id string, v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep, ok := p.st.Endpoints[id]
	if !ok || ep.DownByDocker == v {
		return
	}
	ep.DownByDocker = v
	if err := p.st.save(p.path); err != nil {
		p.log.Error("save plugin state", "error", err)
	}
}

func (p *Plugin) deleteEndpoint(ctx context.Context, req endpointRequest) (struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep, ok := p.st.Endpoints[req.EndpointID]
	if !ok {
		return struct{}{}, nil // deleting twice is not an error
	}
	err := detach(ctx, p.agent, ep.Endpoint)
	var ae *agentapi.Error
	if err != nil && !(errors.As(err, &ae) && ae.Status == http.StatusNotFound) {
		return struct{}{}, fmt.Errorf("delete endpoint %d: %w", ep.Endpoint, err)
	}
	delete(p.st.Endpoints, req.EndpointID)
	if err := p.st.save(p.path); err != nil {
		return struct{}{}, fmt.Errorf("delete endpoint: %w", err)
	}
	p.log.Info("endpoint deleted", "id", ep.Endpoint, "network", ep.Network, "ip", ep.IP)
	return struct{}{}, nil
}

func (p *Plugin) endpointInfo(_ context.Context, req endpointRequest) (endpointInfoResponse, error) {
	ep, ok := p.endpoint(req.EndpointID)
	if !ok {
		return endpointInfoResponse{}, fmt.Errorf("endpoint %.12s: unknown", req.EndpointID)
	}
	v := map[string]any{"daoli.endpoint": ep.Endpoint, "daoli.server": ep.Server, "daoli.interface": ep.Interface}
	if ep.Service != "" {
		v["daoli.service"] = ep.Service
	}
	return endpointInfoResponse{Value: v}, nil
}

func (p *Plugin) join(ctx context.Context, req joinRequest) (joinResponse, error) {
	ep, ok := p.endpoint(req.EndpointID)
	if !ok {
		return joinResponse{}, fmt.Errorf("join: endpoint %.12s: unknown", req.EndpointID)
	}
	p.mu.Lock()
	ns, ok := p.st.Networks[req.NetworkID]
	var gw netip.Addr
	if ok {
		gw = ns.Gateway
	}
	p.mu.Unlock()
	if !ok {
		return joinResponse{}, fmt.Errorf("join: network %.12s: unknown", req.NetworkID)
	}
	if err := p.setState(ctx, ep, mapper.Active); err != nil {
		return joinResponse{}, fmt.Errorf("join: %w", err)
	}
	return joinResponse{
		InterfaceName: interfaceName{SrcName: ep.Peer, DstPrefix: "eth"},
		Gateway:       gw.String(),
	}, nil
}

// leave marks the endpoint down at once: Docker leaves the network when
// the container stopped or died, before it deletes the endpoint, and
// failover should not wait for the rest.
func (p *Plugin) leave(ctx context.Context, req endpointRequest) (struct{}, error) {
	ep, ok := p.endpoint(req.EndpointID)
	if !ok {
		return struct{}{}, nil
	}
	if err := p.setState(ctx, ep, mapper.Down); err != nil && !errors.Is(err, mapper.ErrNotFound) && !errors.Is(err, mapper.ErrConflict) {
		return struct{}{}, fmt.Errorf("leave: %w", err)
	}
	return struct{}{}, nil
}

// setState changes the endpoint's state, guarded: nothing changes when the
// endpoint no longer runs here through the same interface.
func (p *Plugin) setState(ctx context.Context, ep endpointState, s mapper.State) error {
	_, err := p.mc.SetEndpointState(ctx, strconv.FormatUint(uint64(ep.Endpoint), 10),
		mapper.StateRequest{State: s, IfServer: ep.Server, IfInterface: ep.Interface})
	if err != nil {
		return fmt.Errorf("mark endpoint %d %s: %w", ep.Endpoint, s, err)
	}
	return nil
}

// programExternal records the container's published ports (-p) in the
// plugin's state and on the mapper endpoint. The dataplane does not serve
// them yet (docs/docker.md). A host port another endpoint of this server
// publishes fails the call, and so the container's start, as Docker's
// own "port is already allocated" does.
func (p *Plugin) programExternal(ctx context.Context, req externalConnectivityRequest) (struct{}, error) {
	v, ok := req.Options[optPortMap]
	if !ok || v == nil {
		return struct{}{}, nil
	}
	var pbs []portBinding
	if err := remarshal(v, &pbs); err != nil {
		return struct{}{}, fmt.Errorf("program external connectivity: %s: %w", optPortMap, err)
	}
	if err := p.publish(ctx, req.EndpointID, pbs); err != nil {
		return struct{}{}, fmt.Errorf("program external connectivity: %w", err)
	}
	return struct{}{}, nil
}

// revokeExternal forgets the published ports.
func (p *Plugin) revokeExternal(ctx context.Context, req externalConnectivityRequest) (struct{}, error) {
	if err := p.publish(ctx, req.EndpointID, nil); err != nil && !errors.Is(err, mapper.ErrNotFound) {
		return struct{}{}, fmt.Errorf("revoke external connectivity: %w", err)
	}
	return struct{}{}, nil
}

func (p *Plugin) publish(ctx context.Context, id string, pbs []portBinding) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ep, ok := p.st.Endpoints[id]
	if !ok {
		return nil
	}
	ps := publishedPorts(pbs)
	if len(ps) > 0 || len(ep.Published) > 0 {
		if _, err := p.mc.SetPublished(ctx, strconv.FormatUint(uint64(ep.Endpoint), 10), ps); err != nil {
			return err
		}
	}
	ep.Published = pbs
	return p.st.save(p.path)
}

// publishedPorts converts Docker's port bindings. A binding without a
// host port (-p 80) is skipped: Docker chooses such ports only for its
// bridge driver. Of a range (-p 8080-8090:80) the first port is taken;
// the host IP is not recorded (a published port is server-wide).
func publishedPorts(pbs []portBinding) []mapper.PublishedPort {
	var out []mapper.PublishedPort
	for _, b := range pbs {
		var proto mapper.Protocol
		switch b.Proto {
		case 6:
			proto = mapper.TCP
		case 17:
			proto = mapper.UDP
		default:
			continue
		}
		if b.HostPort == 0 || b.Port == 0 {
			continue
		}
		pp := mapper.PublishedPort{HostPort: b.HostPort, Port: b.Port, Protocol: proto}
		if !slices.ContainsFunc(out, func(o mapper.PublishedPort) bool { return o.HostPort == pp.HostPort && o.Protocol == pp.Protocol }) {
			out = append(out, pp)
		}
	}
	return out
}

// ---- IPAM ----

// A pool's ID is "daoli/<subnet>" or "daoli/<subnet>/<range>": the same
// pool always gets the same ID, and the ID is all the plugin needs to
// serve it later, also after a restart.
const poolPrefix = "daoli/"

func (p *Plugin) requestPool(_ context.Context, req requestPoolRequest) (requestPoolResponse, error) {
	if req.V6 {
		return requestPoolResponse{}, errors.New("request pool: IPv6 is not supported")
	}
	if req.Pool == "" {
		return requestPoolResponse{}, errors.New("request pool: daoli's IPAM does not choose subnets; give --subnet")
	}
	pool, err := netip.ParsePrefix(req.Pool)
	if err != nil || !pool.Addr().Is4() {
		return requestPoolResponse{}, fmt.Errorf("request pool: subnet %q: want an IPv4 prefix such as 10.1.0.0/24", req.Pool)
	}
	if pool != pool.Masked() {
		return requestPoolResponse{}, fmt.Errorf("request pool: subnet %s has host bits set; want %s", pool, pool.Masked())
	}
	if pool.Bits() > 30 {
		return requestPoolResponse{}, fmt.Errorf("request pool: subnet %s is smaller than a /30", pool)
	}
	id := poolPrefix + pool.String()
	if req.SubPool != "" {
		sub, err := netip.ParsePrefix(req.SubPool)
		if err != nil || sub != sub.Masked() || !pool.Contains(sub.Addr()) || sub.Bits() < pool.Bits() {
			return requestPoolResponse{}, fmt.Errorf("request pool: --ip-range %q: want a prefix inside %s", req.SubPool, pool)
		}
		id += "/" + sub.String()
	}
	return requestPoolResponse{PoolID: id, Pool: pool.String(), Data: map[string]string{}}, nil
}

// parsePoolID returns a pool's subnet and the range dynamic addresses come
// from.
func parsePoolID(id string) (subnet, rng netip.Prefix, err error) {
	rest, ok := strings.CutPrefix(id, poolPrefix)
	if !ok {
		return subnet, rng, fmt.Errorf("pool %q: not one of daoli's", id)
	}
	// "10.1.0.0/24" or "10.1.0.0/24/10.1.0.128/25"
	first, second := rest, ""
	if i := nthIndex(rest, '/', 2); i >= 0 {
		first, second = rest[:i], rest[i+1:]
	}
	if subnet, err = netip.ParsePrefix(first); err != nil {
		return subnet, rng, fmt.Errorf("pool %q: %w", id, err)
	}
	rng = subnet
	if second != "" {
		if rng, err = netip.ParsePrefix(second); err != nil {
			return subnet, rng, fmt.Errorf("pool %q: %w", id, err)
		}
	}
	return subnet, rng, nil
}

func nthIndex(s string, c byte, n int) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			if n--; n == 0 {
				return i
			}
		}
	}
	return -1
}

// requestAddress hands out an address. A requested one (--ip, --gateway)
// is checked only against the subnet: whether it may be shared is for
// CreateEndpoint to decide, the first call that sees what the container
// declared. A dynamic one is the first address no endpoint of any of this
// subnet's networks holds.
func (p *Plugin) requestAddress(ctx context.Context, req requestAddressRequest) (requestAddressResponse, error) {
	subnet, rng, err := parsePoolID(req.PoolID)
	if err != nil {
		return requestAddressResponse{}, fmt.Errorf("request address: %w", err)
	}
	answer := func(a netip.Addr) requestAddressResponse {
		return requestAddressResponse{Address: netip.PrefixFrom(a, subnet.Bits()).String(), Data: map[string]string{}}
	}
	if req.Address != "" {
		a, err := netip.ParseAddr(req.Address)
		if err != nil {
			return requestAddressResponse{}, fmt.Errorf("request address: %q: %w", req.Address, err)
		}
		if !subnet.Contains(a) || a == subnet.Addr() || a == lastAddr(subnet) {
			return requestAddressResponse{}, fmt.Errorf("request address: %s is not a host address of %s", a, subnet)
		}
		return answer(a), nil
	}
	if req.Options[optRequestAddressType] == gatewayAddressType {
		return answer(subnet.Addr().Next()), nil
	}
	held, err := p.held(ctx, subnet)
	if err != nil {
		return requestAddressResponse{}, fmt.Errorf("request address: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for a := rng.Masked().Addr(); rng.Contains(a); a = a.Next() {
		if a == subnet.Addr() || a == lastAddr(subnet) || held[a] || p.pending[subnet][a] {
			continue
		}
		if p.pending[subnet] == nil {
			p.pending[subnet] = map[netip.Addr]bool{}
		}
		p.pending[subnet][a] = true
		return answer(a), nil
	}
	return requestAddressResponse{}, fmt.Errorf("request address: no free address in %s", rng)
}

// held returns the addresses taken in every network of this subnet: the
// endpoints' and the gateways.
func (p *Plugin) held(ctx context.Context, subnet netip.Prefix) (map[netip.Addr]bool, error) {
	p.mu.Lock()
	var ids []string
	for id, ns := range p.st.Networks {
		if ns.Subnet == subnet {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	held := map[netip.Addr]bool{}
	for _, id := range ids {
		ns, err := p.ensureNetwork(ctx, id)
		if err != nil {
			return nil, err
		}
		held[ns.Gateway] = true
		es, err := p.mc.Endpoints(ctx, ns.Name, "")
		if err != nil {
			return nil, fmt.Errorf("list endpoints of %s: %w", ns.Name, err)
		}
		for _, e := range es {
			held[e.IP] = true
		}
	}
	return held, nil
}

// unpend forgets a dynamic address once its endpoint exists or failed.
// The caller holds mu.
func (p *Plugin) unpend(subnet netip.Prefix, a netip.Addr) {
	delete(p.pending[subnet], a)
}

func (p *Plugin) releaseAddress(_ context.Context, req releaseAddressRequest) (struct{}, error) {
	subnet, _, err := parsePoolID(req.PoolID)
	if err != nil {
		return struct{}{}, fmt.Errorf("release address: %w", err)
	}
	if a, err := netip.ParseAddr(req.Address); err == nil {
		p.mu.Lock()
		p.unpend(subnet, a)
		p.mu.Unlock()
	}
	return struct{}{}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
