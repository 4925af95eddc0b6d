package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/daolinet/daoli/mapper/store"
)

// Keys. Objects live under objPrefix, which is what watchers follow;
// indexes and allocation tables live under idxPrefix.
const (
	objPrefix      = "/daoli/obj/"
	networkPrefix  = objPrefix + "networks/"
	serverPrefix   = objPrefix + "servers/"
	endpointPrefix = objPrefix + "endpoints/"

	idxPrefix = "/daoli/idx/"
	// livePrefix holds one key per live server, attached to the lease the
	// server's heartbeats renew: its expiry is the server's death.
	livePrefix     = "/daoli/live/"
	seqNetworkKey  = idxPrefix + "seq/network"
	seqEndpointKey = idxPrefix + "seq/endpoint"
	blockSizeKey   = idxPrefix + "config/block-size"
)

func networkKey(name string) string { return networkPrefix + name }
func serverKey(name string) string  { return serverPrefix + name }
func liveKey(name string) string    { return livePrefix + name }
func endpointKey(id uint32) string  { return fmt.Sprintf("%s%010d", endpointPrefix, id) }
func nameKey(name string) string    { return idxPrefix + "endpoint-name/" + name }
func serverIPKey(ip netip.Addr) string {
	return idxPrefix + "server-ip/" + ip.String()
}
func macKey(net uint32, m MAC) string { return fmt.Sprintf("%smac/%d/%s", idxPrefix, net, m) }
func wireKey(ip netip.Addr) string    { return idxPrefix + "wire/" + ip.String() }
func identityPrefix(net uint32) string {
	return fmt.Sprintf("%sidentity/%d/", idxPrefix, net)
}
func identityKey(net uint32, ip netip.Addr) string { return identityPrefix(net) + ip.String() }
func membersKey(net uint32, ip netip.Addr) string {
	return fmt.Sprintf("%smembers/%d/%s", idxPrefix, net, ip)
}
func ifaceKey(server, iface string) string { return idxPrefix + "interface/" + server + "/" + iface }

// hostPortKey names a published port of the cluster. (Before ports were
// published on every server, the index was per server, under
// published/SERVER/; those keys are no longer read.)
func hostPortKey(proto Protocol, hostPort uint16) string {
	return fmt.Sprintf("%shostport/%s/%d", idxPrefix, proto, hostPort)
}

// hostPortIndex records the service a published port leads to and the
// endpoints that publish it.
type hostPortIndex struct {
	NetworkID uint32     `json:"network_id"`
	IP        netip.Addr `json:"ip"`
	Port      uint16     `json:"port"`
	Endpoints []uint32   `json:"endpoints"`
}

func serviceKey(net uint32, ip netip.Addr, p PortSpec) string {
	return fmt.Sprintf("%sservice/%d/%s/%s/%d", idxPrefix, net, ip, p.Protocol, p.Port)
}

// serviceIndex records the mode of a service and its endpoints, so that
// the mode of a new backend is checked against the others in the same
// transaction.
type serviceIndex struct {
	Mode      Mode     `json:"mode"`
	Endpoints []uint32 `json:"endpoints"`
}

// MaxPorts is the number of ports one endpoint may serve: what every
// server's dataplane holds per endpoint.
const MaxPorts = 32

// MaxLocators is the number of locator addresses one server may have.
const MaxLocators = 8

// Config configures a Registry.
type Config struct {
	// Store holds the registry. Required. The registry does not close it.
	Store store.Store
	// BlockSize is the number of ports in every wire and identity block: a
	// power of two from 8 to 32768. It is fixed when a registry first
	// starts, because every server's dataplane finds a port's block by
	// masking with it; New refuses a different one later. Zero means the
	// size the registry has, or DefaultBlockSize for a new one.
	BlockSize uint16
	// WirePorts is the range of a locator address's ports given out as
	// wire blocks. Zero means DefaultWirePorts.
	WirePorts PortRange
	// IdentityPorts is the range identity blocks come from. Zero means
	// DefaultIdentityPorts.
	IdentityPorts PortRange
	// ServerTTL is how long a server stays alive without a heartbeat.
	// Zero means DefaultServerTTL.
	ServerTTL time.Duration
	// Logger receives the registry's logs. Nil means discard.
	Logger *slog.Logger
}

// DefaultServerTTL is how long a server is alive after its last
// heartbeat unless Config.ServerTTL says otherwise. Agents heartbeat
// every second.
const DefaultServerTTL = 5 * time.Second

// Registry is the record of networks, servers and endpoints, with their
// 6-tuples and port blocks. Every method is one serializable transaction
// on the store: nothing is half-written, and concurrent callers never get
// overlapping blocks. A Registry is safe for concurrent use; its zero
// value is not usable.
type Registry struct {
	st   store.Store
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	wire PortRange
	id   PortRange
	// gateway is the base of the last block of the wire range, every
	// server's gateway block (ingress flows leave a server from it);
	// blocks is the rest, what endpoints' wire blocks are taken from.
	gateway uint16
	blocks  PortRange
}

// New returns a registry over cfg.Store.
func New(cfg Config) (*Registry, error) {
	if cfg.Store == nil {
		return nil, errors.New("new registry: no store")
	}
	size, err := fixBlockSize(cfg.Store, cfg.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("new registry: %w", err)
	}
	cfg.BlockSize = size
	if !validBlockSize(cfg.BlockSize) {
		return nil, fmt.Errorf("new registry: block size %d is not a power of two from 8 to 32768", cfg.BlockSize)
	}
	if cfg.WirePorts == (PortRange{}) {
		cfg.WirePorts = DefaultWirePorts
	}
	if cfg.IdentityPorts == (PortRange{}) {
		cfg.IdentityPorts = DefaultIdentityPorts
	}
	if cfg.ServerTTL == 0 {
		cfg.ServerTTL = DefaultServerTTL
	}
	if cfg.ServerTTL < time.Second {
		return nil, fmt.Errorf("new registry: server TTL %v is below one second, the granularity of leases", cfg.ServerTTL)
	}
	for _, r := range []struct {
		name string
		r    PortRange
	}{{"wire", cfg.WirePorts}, {"identity", cfg.IdentityPorts}} {
		if r.r.First == 0 || r.r.blocks(cfg.BlockSize) == 0 {
			return nil, fmt.Errorf("new registry: %s port range %s holds no aligned block of %d ports", r.name, r.r, cfg.BlockSize)
		}
	}
	if cfg.WirePorts.blocks(cfg.BlockSize) < 2 {
		return nil, fmt.Errorf("new registry: wire port range %s holds one aligned block of %d ports: want two or more, the last is the servers' gateway block", cfg.WirePorts, cfg.BlockSize)
	}
	if cfg.WirePorts.First <= cfg.IdentityPorts.Last && cfg.IdentityPorts.First <= cfg.WirePorts.Last {
		return nil, fmt.Errorf("new registry: wire ports %s overlap identity ports %s", cfg.WirePorts, cfg.IdentityPorts)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registry{st: cfg.Store, cfg: cfg, log: log, now: time.Now, wire: cfg.WirePorts, id: cfg.IdentityPorts}
	r.gateway = uint16((uint32(cfg.WirePorts.Last)+1)/uint32(cfg.BlockSize)*uint32(cfg.BlockSize) - uint32(cfg.BlockSize))
	r.blocks = PortRange{First: cfg.WirePorts.First, Last: r.gateway - 1}
	return r, nil
}

// fixBlockSize returns the registry's block size: the stored one, or want
// (DefaultBlockSize if zero) stored now for a new registry.
func fixBlockSize(st store.Store, want uint16) (uint16, error) {
	ctx := context.Background()
	kv, ok, _, err := st.Get(ctx, blockSizeKey)
	if err != nil {
		return 0, fmt.Errorf("read block size: %w", err)
	}
	if ok {
		n, err := strconv.ParseUint(string(kv.Value), 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%w %s: %q", errCorrupt, blockSizeKey, kv.Value)
		}
		if want != 0 && want != uint16(n) {
			return 0, fmt.Errorf("block size %d differs from %d, which this registry was created with and every dataplane uses", want, n)
		}
		return uint16(n), nil
	}
	if want == 0 {
		want = DefaultBlockSize
	}
	if !validBlockSize(want) {
		return want, nil // New reports it
	}
	_, err = st.Update(ctx, func(t store.STM) error {
		if _, ok := t.Get(blockSizeKey); !ok {
			t.Put(blockSizeKey, []byte(strconv.Itoa(int(want))), 0)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store block size: %w", err)
	}
	return fixBlockSize(st, 0)
}

// BlockSize returns the registry's block size.
func (r *Registry) BlockSize() uint16 { return r.cfg.BlockSize }

// Allocation is how a registry hands out ports: what every agent must
// know to program its dataplane and keep its server's own sockets out of
// the wire range.
type Allocation struct {
	BlockSize     uint16    `json:"block_size"`
	WirePorts     PortRange `json:"wire_ports"`
	IdentityPorts PortRange `json:"identity_ports"`
	// GatewayBase is the first port of every server's gateway block: the
	// last block of WirePorts, which no endpoint gets. Ingress flows
	// leave the server a client dialled from its ports.
	GatewayBase uint16 `json:"gateway_base"`
}

// Allocation returns the registry's allocation settings.
func (r *Registry) Allocation() Allocation {
	return Allocation{BlockSize: r.cfg.BlockSize, WirePorts: r.wire, IdentityPorts: r.id, GatewayBase: r.gateway}
}

// Capacity says how many blocks one locator address and one (network, IP)
// hold with the current configuration.
func (r *Registry) Capacity() (wirePerAddr, identityPerIP int) {
	return r.blocks.blocks(r.cfg.BlockSize), r.id.blocks(r.cfg.BlockSize)
}

// tx wraps an STM with JSON helpers. A decoding failure means the store
// holds something this code did not write; it aborts the transaction.
type tx struct{ store.STM }

var errCorrupt = errors.New("corrupt registry record")

func (t tx) get(key string, v any) bool {
	b, ok := t.Get(key)
	if !ok {
		return false
	}
	if err := json.Unmarshal(b, v); err != nil {
		panic(fmt.Errorf("%w %s: %v", errCorrupt, key, err))
	}
	return true
}

func (t tx) put(key string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Errorf("encode %s: %v", key, err))
	}
	t.Put(key, b, 0)
}

func (t tx) next(key string) (uint32, error) {
	var n uint32
	t.get(key, &n)
	if n == ^uint32(0) {
		return 0, fmt.Errorf("%s: identifiers exhausted", key)
	}
	n++
	t.put(key, n)
	return n, nil
}

// slots reads an allocation bitmap; a missing key is an empty one.
func (t tx) slots(key string) slots {
	b, _ := t.Get(key)
	return slots(b)
}

// putSlots writes an allocation bitmap, deleting the key when it is empty.
func (t tx) putSlots(key string, s slots) {
	if len(s) == 0 {
		t.Del(key)
		return
	}
	t.Put(key, s, 0)
}

func (r *Registry) update(ctx context.Context, fn func(tx) error) (int64, error) {
	return r.st.Update(ctx, func(s store.STM) error { return fn(tx{s}) })
}

// ---- networks ----

// NetworkSpec is what a network is created from. A zero Gateway means the
// subnet's first address, a zero Egress that every address outside the
// networks may be reached.
type NetworkSpec struct {
	Name    string       `json:"name"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
	Egress  Egress       `json:"egress,omitzero"`
	Groups  []string     `json:"groups,omitempty"`
}

// NetworkUpdate changes a network; a nil field stays as it is.
type NetworkUpdate struct {
	Egress *Egress `json:"egress,omitempty"`
	// Groups, when not nil, replaces the network's groups ([] leaves
	// every group).
	Groups *[]string `json:"groups,omitempty"`
}

// CreateNetwork creates a network.
func (r *Registry) CreateNetwork(ctx context.Context, spec NetworkSpec) (Network, error) {
	n := Network{Name: spec.Name, Subnet: spec.Subnet, Gateway: spec.Gateway, Egress: spec.Egress, Groups: slices.Clone(spec.Groups)}
	if err := validName("name", n.Name); err != nil {
		return Network{}, err
	}
	if err := checkGroups(n.Groups); err != nil {
		return Network{}, err
	}
	slices.Sort(n.Groups)
	if err := n.Egress.check(); err != nil {
		return Network{}, err
	}
	if !n.Subnet.IsValid() {
		return Network{}, invalid("subnet", "missing; want a CIDR such as 10.1.0.0/24")
	}
	if !n.Subnet.Addr().Is4() {
		return Network{}, invalid("subnet", "%s is not IPv4; only IPv4 networks are supported", n.Subnet)
	}
	if n.Subnet.Masked() != n.Subnet {
		return Network{}, invalid("subnet", "%s has host bits set; did you mean %s?", n.Subnet, n.Subnet.Masked())
	}
	if n.Subnet.Bits() > 30 {
		return Network{}, invalid("subnet", "%s is too small; want /30 or larger", n.Subnet)
	}
	if !n.Gateway.IsValid() {
		n.Gateway = n.Subnet.Addr().Next()
	} else if err := checkHostAddr("gateway", n.Gateway, n.Subnet); err != nil {
		return Network{}, err
	}
	_, err := r.update(ctx, func(t tx) error {
		if t.get(networkKey(n.Name), &Network{}) {
			return fieldErr("name", ErrExists, "network %q already exists", n.Name)
		}
		id, err := t.next(seqNetworkKey)
		if err != nil {
			return err
		}
		n.ID = id
		if len(n.Groups) > 0 {
			if err := checkReachWith(t, &n); err != nil {
				return err
			}
		}
		t.put(networkKey(n.Name), n)
		return nil
	})
	if err != nil {
		return Network{}, fmt.Errorf("create network %s: %w", spec.Name, err)
	}
	return n, nil
}

// UpdateNetwork changes the network with the name as u says and returns
// it. Watchers see the new network; agents apply it at once.
func (r *Registry) UpdateNetwork(ctx context.Context, name string, u NetworkUpdate) (Network, error) {
	if u.Egress != nil {
		if err := u.Egress.check(); err != nil {
			return Network{}, fmt.Errorf("update network %s: %w", name, err)
		}
	}
	var groups []string
	if u.Groups != nil {
		groups = slices.Clone(*u.Groups)
		if err := checkGroups(groups); err != nil {
			return Network{}, fmt.Errorf("update network %s: %w", name, err)
		}
		slices.Sort(groups)
	}
	var n Network
	_, err := r.update(ctx, func(t tx) error {
		if !t.get(networkKey(name), &n) {
			return ErrNotFound
		}
		if u.Egress != nil {
			n.Egress = *u.Egress
		}
		if u.Groups != nil {
			n.Groups = groups
			if err := checkReachWith(t, &n); err != nil {
				return err
			}
		}
		t.put(networkKey(name), n)
		return nil
	})
	if err != nil {
		return Network{}, fmt.Errorf("update network %s: %w", name, err)
	}
	return n, nil
}

// Network returns the network with the name.
func (r *Registry) Network(ctx context.Context, name string) (Network, error) {
	var n Network
	if err := r.getObject(ctx, networkKey(name), &n); err != nil {
		return Network{}, fmt.Errorf("network %s: %w", name, err)
	}
	return n, nil
}

// DeleteNetwork removes a network no endpoint is attached to.
func (r *Registry) DeleteNetwork(ctx context.Context, name string) error {
	_, err := r.update(ctx, func(t tx) error {
		var n Network
		if !t.get(networkKey(name), &n) {
			return ErrNotFound
		}
		if held := t.List(identityPrefix(n.ID)); len(held) > 0 {
			return fmt.Errorf("%w: endpoints with %d addresses are still attached; remove them first", ErrInUse, len(held))
		}
		dropClaims(t, n)
		forgetNetwork(t, name)
		t.Del(networkKey(name))
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	return nil
}

// ---- servers ----

// ServerSpec registers a server. Registering an existing server updates
// it: that is what an agent does each time it starts.
type ServerSpec struct {
	Name   string       `json:"name"`
	IPs    []netip.Addr `json:"ips"`
	MAC    MAC          `json:"mac"`
	Uplink string       `json:"uplink,omitempty"`
}

// RegisterServer creates or updates a server and marks it seen now.
func (r *Registry) RegisterServer(ctx context.Context, spec ServerSpec) (Server, error) {
	if err := validName("name", spec.Name); err != nil {
		return Server{}, err
	}
	if err := permitServer(ctx, spec.Name, "register servers"); err != nil {
		return Server{}, fmt.Errorf("register server %s: %w", spec.Name, err)
	}
	if len(spec.IPs) == 0 {
		return Server{}, invalid("ips", "missing; want at least one locator address")
	}
	if len(spec.IPs) > MaxLocators {
		return Server{}, invalid("ips", "%d addresses; a server may have at most %d locators", len(spec.IPs), MaxLocators)
	}
	for i, ip := range spec.IPs {
		f := fmt.Sprintf("ips[%d]", i)
		switch {
		case !ip.IsValid():
			return Server{}, invalid(f, "missing address")
		case !ip.Is4():
			return Server{}, invalid(f, "%s is not IPv4; only IPv4 locators are supported", ip)
		case ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return Server{}, invalid(f, "%s cannot be a server's locator address", ip)
		case slices.Contains(spec.IPs[:i], ip):
			return Server{}, invalid(f, "%s is listed twice", ip)
		}
	}
	if !spec.MAC.IsUnicast() {
		return Server{}, invalid("mac", "%q is not a unicast MAC", spec.MAC)
	}
	lease, err := r.st.Grant(ctx, r.cfg.ServerTTL)
	if err != nil {
		return Server{}, fmt.Errorf("register server %s: liveness lease: %w", spec.Name, err)
	}
	srv := Server{Name: spec.Name, IPs: spec.IPs, MAC: spec.MAC, Uplink: spec.Uplink, Since: r.now().UTC()}
	_, err = r.update(ctx, func(t tx) error {
		var old Server
		if t.get(serverKey(srv.Name), &old) && !old.Gone && !old.Since.IsZero() {
			srv.Since = old.Since // alive before, alive now
		}
		for i, ip := range srv.IPs {
			var owner string
			if t.get(serverIPKey(ip), &owner) && owner != srv.Name {
				return fieldErr(fmt.Sprintf("ips[%d]", i), ErrConflict, "%s is already a locator of server %s", ip, owner)
			}
		}
		for _, ip := range old.IPs {
			if slices.Contains(srv.IPs, ip) {
				continue
			}
			if n := t.slots(wireKey(ip)).count(); n > 0 {
				return fieldErr("ips", ErrInUse, "%s still carries the wire blocks of %d endpoints; move or remove them first", ip, n)
			}
			t.Del(serverIPKey(ip))
		}
		for _, ip := range srv.IPs {
			t.put(serverIPKey(ip), srv.Name)
		}
		if !slices.Equal(old.IPs, srv.IPs) || old.MAC != srv.MAC || old.Uplink != srv.Uplink || old.Gone || old.Since != srv.Since {
			t.put(serverKey(srv.Name), srv)
		}
		t.Put(liveKey(srv.Name), []byte(srv.Name), lease)
		return nil
	})
	if err != nil {
		if !errors.Is(err, store.ErrOutcomeUnknown) { // it may have landed: keep its lease
			r.st.Revoke(context.WithoutCancel(ctx), lease)
		}
		return Server{}, fmt.Errorf("register server %s: %w", spec.Name, err)
	}
	return srv, nil
}

// Heartbeat renews a server's liveness lease. It writes nothing while the
// server stays alive: heartbeats cost the change log nothing. A server
// whose lease ran out (marked gone, or not yet) gets a new one and is
// alive again.
func (r *Registry) Heartbeat(ctx context.Context, name string) (Server, error) {
	fail := func(err error) (Server, error) {
		return Server{}, fmt.Errorf("heartbeat of server %s: %w", name, err)
	}
	if err := permitServer(ctx, name, "renew the liveness of servers"); err != nil {
		return fail(err)
	}
	kv, ok, _, err := r.st.Get(ctx, liveKey(name))
	if err != nil {
		return fail(err)
	}
	if ok {
		if err := r.st.KeepAlive(ctx, kv.Lease); err == nil {
			srv, err := r.Server(ctx, name)
			if err != nil || !srv.Gone {
				return srv, err
			}
			// Renewed in time, but a judge marked it gone meanwhile.
		} else if !errors.Is(err, store.ErrLeaseNotFound) {
			return fail(err)
		}
	}
	lease, err := r.st.Grant(ctx, r.cfg.ServerTTL)
	if err != nil {
		return fail(fmt.Errorf("liveness lease: %w", err))
	}
	var srv Server
	_, err = r.update(ctx, func(t tx) error {
		if !t.get(serverKey(name), &srv) {
			return ErrNotFound
		}
		if srv.Gone {
			srv.Gone, srv.Since = false, r.now().UTC()
			t.put(serverKey(name), srv)
		}
		t.Put(liveKey(name), []byte(name), lease)
		return nil
	})
	if err != nil {
		if !errors.Is(err, store.ErrOutcomeUnknown) { // it may have landed: keep its lease
			r.st.Revoke(context.WithoutCancel(ctx), lease)
		}
		return fail(err)
	}
	return srv, nil
}

// Server returns the server with the name.
func (r *Registry) Server(ctx context.Context, name string) (Server, error) {
	var s Server
	if err := r.getObject(ctx, serverKey(name), &s); err != nil {
		return Server{}, fmt.Errorf("server %s: %w", name, err)
	}
	return s, nil
}

// DeleteServer removes a server that runs no endpoint.
func (r *Registry) DeleteServer(ctx context.Context, name string) error {
	_, err := r.update(ctx, func(t tx) error {
		var srv Server
		if !t.get(serverKey(name), &srv) {
			return ErrNotFound
		}
		n := 0
		for _, ip := range srv.IPs {
			n += t.slots(wireKey(ip)).count()
		}
		if n > 0 {
			return fmt.Errorf("%w: %d endpoints still run there; move or remove them first", ErrInUse, n)
		}
		for _, ip := range srv.IPs {
			t.Del(serverIPKey(ip))
			t.Del(wireKey(ip))
		}
		t.Del(serverKey(name))
		t.Del(liveKey(name))
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove server %s: %w", name, err)
	}
	return nil
}

// ---- endpoints ----

// EndpointSpec is what an endpoint is created from. Zero MAC means
// generate one (or the owner's, see Claim); zero Mode means Balance; zero
// State means Active. IP may be zero when Owner is set: the owner's
// claimed address, or a free one.
type EndpointSpec struct {
	Name      string     `json:"name,omitempty"`
	Owner     string     `json:"owner,omitempty"`
	Network   string     `json:"network"`
	IP        netip.Addr `json:"ip,omitzero"`
	MAC       MAC        `json:"mac,omitzero"`
	Server    string     `json:"server"`
	Interface string     `json:"interface,omitempty"`
	Ports     []PortSpec `json:"ports,omitempty"`
	Mode      Mode       `json:"mode,omitempty"`
	Priority  uint16     `json:"priority,omitempty"`
	State     State      `json:"state,omitempty"`
	// Published are ports every server serves to clients outside the
	// cluster, leading to ports the endpoint serves (see SetPublished).
	Published []PublishedPort `json:"published,omitempty"`
}

// check validates what can be validated without the registry's state.
func (r *Registry) check(spec *EndpointSpec) error {
	if spec.Name != "" {
		if err := validName("name", spec.Name); err != nil {
			return err
		}
		if _, err := strconv.ParseUint(spec.Name, 10, 64); err == nil {
			return invalid("name", "%q is a number, which would be mistaken for an endpoint ID", spec.Name)
		}
	}
	if spec.Network == "" {
		return invalid("network", "missing")
	}
	if spec.Server == "" {
		return invalid("server", "missing")
	}
	if spec.Owner != "" {
		if err := validOwner(spec.Owner); err != nil {
			return err
		}
	} else if !spec.IP.IsValid() {
		return invalid("ip", "missing")
	}
	if !spec.MAC.IsZero() && !spec.MAC.IsUnicast() {
		return invalid("mac", "%s is a group address; want a unicast MAC", spec.MAC)
	}
	if len(spec.Ports) > MaxPorts {
		return invalid("ports", "%d ports; an endpoint may serve at most %d", len(spec.Ports), MaxPorts)
	}
	if err := checkIfname("interface", spec.Interface); err != nil {
		return err
	}
	if len(spec.Ports) >= int(r.cfg.BlockSize) {
		return invalid("ports", "%d ports do not fit a block of %d with room for outgoing flows", len(spec.Ports), r.cfg.BlockSize)
	}
	for i, p := range spec.Ports {
		if p.Port == 0 {
			return invalid(fmt.Sprintf("ports[%d].port", i), "want a port from 1 to 65535")
		}
		if p.Protocol != TCP && p.Protocol != UDP {
			return invalid(fmt.Sprintf("ports[%d].protocol", i), "unknown protocol %q, want tcp or udp", p.Protocol)
		}
		if slices.Contains(spec.Ports[:i], p) {
			return invalid(fmt.Sprintf("ports[%d]", i), "%s is listed twice", p)
		}
	}
	switch spec.Mode {
	case "":
		spec.Mode = Balance
	case Balance, Failover:
	default:
		return invalid("mode", "unknown mode %q, want balance or failover", spec.Mode)
	}
	switch spec.State {
	case "":
		spec.State = Active
	case Active, Down:
	default:
		return invalid("state", "unknown state %q, want active or down", spec.State)
	}
	if err := r.checkPublished(spec.Published); err != nil {
		return err
	}
	for i, p := range spec.Published {
		if !slices.Contains(spec.Ports, PortSpec{Port: p.Port, Protocol: p.Protocol}) {
			return invalid(fmt.Sprintf("published[%d].port", i), "the endpoint does not serve %d/%s (it serves %v)", p.Port, p.Protocol, spec.Ports)
		}
	}
	return nil
}

// checkPublished validates published ports without the registry's state.
func (r *Registry) checkPublished(ps []PublishedPort) error {
	for i, p := range ps {
		f := fmt.Sprintf("published[%d]", i)
		switch {
		case p.HostPort == 0:
			return invalid(f+".host_port", "want a port from 1 to 65535")
		case p.Port == 0:
			return invalid(f+".port", "want a port from 1 to 65535")
		case p.Protocol != TCP && p.Protocol != UDP:
			return invalid(f+".protocol", "unknown protocol %q, want tcp or udp", p.Protocol)
		case r.wire.First <= p.HostPort && p.HostPort <= r.wire.Last:
			return invalid(f+".host_port", "%d is inside the wire range %s, which belongs to the dataplane", p.HostPort, r.wire)
		}
		for j, q := range ps[:i] {
			if q.HostPort == p.HostPort && q.Protocol == p.Protocol {
				return invalid(f+".host_port", "%d/%s is also published[%d]", p.HostPort, p.Protocol, j)
			}
		}
	}
	return nil
}

// CreateEndpoint registers an endpoint and allocates its blocks.
func (r *Registry) CreateEndpoint(ctx context.Context, spec EndpointSpec) (Endpoint, error) {
	eps, err := r.createEndpoints(ctx, []EndpointSpec{spec}, false)
	if err != nil {
		return Endpoint{}, err
	}
	return eps[0], nil
}

// CreateEndpoints registers endpoints in one transaction: all of them or,
// on any error, none. Errors name the failing one as endpoints[i].
func (r *Registry) CreateEndpoints(ctx context.Context, specs []EndpointSpec) ([]Endpoint, error) {
	if err := checkBatch(specs); err != nil {
		return nil, fmt.Errorf("create endpoints: %w", err)
	}
	return r.createEndpoints(ctx, specs, true)
}

func (r *Registry) createEndpoints(ctx context.Context, specs []EndpointSpec, batch bool) ([]Endpoint, error) {
	name := func(err error, i int) error {
		if batch {
			return prefixField(err, i)
		}
		return err
	}
	for i := range specs {
		if err := r.check(&specs[i]); err != nil {
			return nil, fmt.Errorf("create endpoint: %w", name(err, i))
		}
		if err := permitServer(ctx, specs[i].Server, "create endpoints"); err != nil {
			return nil, fmt.Errorf("create endpoint: %w", name(err, i))
		}
	}
	var out []Endpoint
	_, err := r.update(ctx, func(t tx) error {
		out = out[:0]
		for i := range specs {
			e, err := r.create(t, &specs[i])
			if err != nil {
				return name(err, i)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		what := "create endpoint"
		if batch {
			what = fmt.Sprintf("create a batch of %d endpoints", len(specs))
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}

func prefixField(err error, i int) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		fe.Field = fmt.Sprintf("endpoints[%d].%s", i, fe.Field)
	}
	return err
}

func (r *Registry) create(t tx, spec *EndpointSpec) (Endpoint, error) {
	var n Network
	if !t.get(networkKey(spec.Network), &n) {
		return Endpoint{}, fieldErr("network", ErrNotFound, "network %q does not exist", spec.Network)
	}
	if err := r.claimAddress(t, n, spec); err != nil {
		return Endpoint{}, err
	}
	if err := checkHostAddr("ip", spec.IP, n.Subnet); err != nil {
		return Endpoint{}, err
	}
	if spec.IP == n.Gateway {
		return Endpoint{}, invalid("ip", "%s is network %s's gateway", spec.IP, n.Name)
	}
	var srv Server
	if !t.get(serverKey(spec.Server), &srv) {
		return Endpoint{}, fieldErr("server", ErrNotFound, "server %q does not exist", spec.Server)
	}
	if spec.Name != "" {
		var other uint32
		if t.get(nameKey(spec.Name), &other) {
			return Endpoint{}, fieldErr("name", ErrExists, "endpoint %q already exists (id %d)", spec.Name, other)
		}
	}
	mac := spec.MAC
	if mac.IsZero() {
		for mac = randomMAC(); t.get(macKey(n.ID, mac), new(uint32)); mac = randomMAC() {
		}
	} else {
		var other uint32
		if t.get(macKey(n.ID, mac), &other) {
			return Endpoint{}, fieldErr("mac", ErrConflict, "%s is already used by endpoint %d in network %s", mac, other, n.Name)
		}
	}
	if spec.Interface != "" {
		var other uint32
		if t.get(ifaceKey(srv.Name, spec.Interface), &other) {
			return Endpoint{}, fieldErr("interface", ErrConflict, "%s on server %s is already endpoint %d's", spec.Interface, srv.Name, other)
		}
	}
	// Identity blocks are what peers see as client ports of the endpoints
	// sharing (network, IP), so none may hold a port one of them serves:
	// check the new ports against the blocks held, and keep the new block
	// clear of every port served there.
	var members []uint32
	t.get(membersKey(n.ID, spec.IP), &members)
	served := map[uint16]bool{}
	for _, p := range spec.Ports {
		served[p.Port] = true
	}
	for _, m := range members {
		var other Endpoint
		if !t.get(endpointKey(m), &other) {
			continue
		}
		for i, p := range spec.Ports {
			if other.Identity.Contains(p.Port) {
				return Endpoint{}, fieldErr(fmt.Sprintf("ports[%d]", i), ErrConflict,
					"port %d lies in the identity block %s of endpoint %d, which shares %s: peers see those ports as its client ports; serve another port or use another IP",
					p.Port, other.Identity, m, spec.IP)
			}
		}
		for _, p := range other.Ports {
			served[p.Port] = true
		}
	}
	for i, p := range spec.Ports {
		var si serviceIndex
		if t.get(serviceKey(n.ID, spec.IP, p), &si) && si.Mode != spec.Mode {
			return Endpoint{}, fieldErr(fmt.Sprintf("ports[%d]", i), ErrConflict,
				"service %s:%s in network %s is %s (endpoints %v); this endpoint asks for %s",
				spec.IP, p, n.Name, si.Mode, si.Endpoints, spec.Mode)
		}
	}
	id, err := t.next(seqEndpointKey)
	if err != nil {
		return Endpoint{}, err
	}
	e := Endpoint{
		ID: id, Name: spec.Name, Owner: spec.Owner, Network: n.Name, NetworkID: n.ID, IP: spec.IP, MAC: mac,
		Server: srv.Name, Interface: spec.Interface, Ports: slices.Clone(spec.Ports),
		Mode: spec.Mode, Priority: spec.Priority, State: spec.State,
	}
	if e.Ports == nil {
		e.Ports = []PortSpec{}
	}
	if e.Wire, err = r.allocWire(t, &srv, id); err != nil {
		return Endpoint{}, err
	}
	it := t.slots(identityKey(n.ID, e.IP))
	base, ok := it.takeAvoiding(r.id, r.cfg.BlockSize, func(b Block) bool {
		for p := range served {
			if b.Contains(p) {
				return true
			}
		}
		return false
	})
	if !ok {
		return Endpoint{}, fieldErr("ip", ErrPortSpaceFull,
			"%d endpoints already share %s in network %s: no free identity block of %d ports in %s",
			it.count(), e.IP, n.Name, r.cfg.BlockSize, r.id)
	}
	t.putSlots(identityKey(n.ID, e.IP), it)
	e.Identity = Block{Base: base, Size: r.cfg.BlockSize}
	for _, p := range e.Ports {
		var si serviceIndex
		t.get(serviceKey(n.ID, e.IP, p), &si)
		si.Mode = e.Mode
		si.Endpoints = append(si.Endpoints, id)
		t.put(serviceKey(n.ID, e.IP, p), si)
	}
	t.put(macKey(n.ID, mac), id)
	if e.Name != "" {
		t.put(nameKey(e.Name), id)
	}
	if e.Interface != "" {
		t.put(ifaceKey(e.Server, e.Interface), id)
	}
	t.put(membersKey(n.ID, e.IP), append(members, id))
	if len(spec.Published) > 0 {
		e.Published = slices.Clone(spec.Published)
		if err := takePublished(t, &e, e.Published); err != nil {
			return Endpoint{}, err
		}
	}
	rememberMAC(t, e)
	t.put(endpointKey(id), e)
	return e, nil
}

// allocWire takes a wire block on the first locator address of srv that
// has one free.
func (r *Registry) allocWire(t tx, srv *Server, id uint32) (Block, error) {
	held := 0
	for _, ip := range srv.IPs {
		bt := t.slots(wireKey(ip))
		if base, ok := bt.take(r.blocks, r.cfg.BlockSize); ok {
			t.putSlots(wireKey(ip), bt)
			return Block{Addr: ip, Base: base, Size: r.cfg.BlockSize}, nil
		}
		held += bt.count()
	}
	return Block{}, fieldErr("server", ErrPortSpaceFull,
		"server %s has no free wire block of %d ports in %s on its %d addresses (%d endpoints hold blocks); add a locator address",
		srv.Name, r.cfg.BlockSize, r.blocks, len(srv.IPs), held)
}

func (r *Registry) freeWire(t tx, e *Endpoint) {
	bt := t.slots(wireKey(e.Wire.Addr))
	bt.release(e.Wire.Base, e.Wire.Size)
	t.putSlots(wireKey(e.Wire.Addr), bt)
}

// resolve finds an endpoint by ID or name inside a transaction.
func resolve(t tx, ref string) (Endpoint, error) {
	var id uint32
	if n, err := strconv.ParseUint(ref, 10, 32); err == nil {
		id = uint32(n)
	} else if !t.get(nameKey(ref), &id) {
		return Endpoint{}, ErrNotFound
	}
	var e Endpoint
	if !t.get(endpointKey(id), &e) {
		return Endpoint{}, ErrNotFound
	}
	return e, nil
}

// Endpoint returns the endpoint with the ID or name ref.
func (r *Registry) Endpoint(ctx context.Context, ref string) (Endpoint, error) {
	id, err := strconv.ParseUint(ref, 10, 32)
	if err != nil {
		var n uint32
		if err := r.getObject(ctx, nameKey(ref), &n); err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %s: %w", ref, err)
		}
		id = uint64(n)
	}
	var e Endpoint
	if err := r.getObject(ctx, endpointKey(uint32(id)), &e); err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", ref, err)
	}
	return e, nil
}

// DeleteEndpoint removes an endpoint and frees its blocks.
func (r *Registry) DeleteEndpoint(ctx context.Context, ref string) (Endpoint, error) {
	var e Endpoint
	_, err := r.update(ctx, func(t tx) error {
		var err error
		if e, err = resolve(t, ref); err != nil {
			return err
		}
		if err := permitServer(ctx, e.Server, "remove endpoints"); err != nil {
			return err
		}
		r.remove(t, &e)
		return nil
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("remove endpoint %s: %w", ref, err)
	}
	return e, nil
}

// remove deletes endpoint e and frees its blocks, inside a transaction.
func (r *Registry) remove(t tx, e *Endpoint) {
	r.freeWire(t, e)
	it := t.slots(identityKey(e.NetworkID, e.IP))
	it.release(e.Identity.Base, e.Identity.Size)
	t.putSlots(identityKey(e.NetworkID, e.IP), it)
	for _, p := range e.Ports {
		var si serviceIndex
		if !t.get(serviceKey(e.NetworkID, e.IP, p), &si) {
			continue
		}
		si.Endpoints = slices.DeleteFunc(si.Endpoints, func(id uint32) bool { return id == e.ID })
		if len(si.Endpoints) == 0 {
			t.Del(serviceKey(e.NetworkID, e.IP, p))
		} else {
			t.put(serviceKey(e.NetworkID, e.IP, p), si)
		}
	}
	t.Del(macKey(e.NetworkID, e.MAC))
	if e.Name != "" {
		t.Del(nameKey(e.Name))
	}
	if e.Interface != "" {
		t.Del(ifaceKey(e.Server, e.Interface))
	}
	var members []uint32
	t.get(membersKey(e.NetworkID, e.IP), &members)
	if members = slices.DeleteFunc(members, func(id uint32) bool { return id == e.ID }); len(members) == 0 {
		t.Del(membersKey(e.NetworkID, e.IP))
	} else {
		t.put(membersKey(e.NetworkID, e.IP), members)
	}
	releasePublished(t, e)
	t.Del(endpointKey(e.ID))
}

// MoveEndpoint moves an endpoint to another server. Its identity (network,
// IP, MAC, ports, identity block) stays; its wire block is taken on the
// new server, and its host-side interface becomes iface. Moving to the
// server it is on keeps the wire block and only records the interface.
func (r *Registry) MoveEndpoint(ctx context.Context, ref, server, iface string) (Endpoint, error) {
	if err := checkIfname("interface", iface); err != nil {
		return Endpoint{}, err
	}
	var e Endpoint
	_, err := r.update(ctx, func(t tx) error {
		var err error
		if e, err = resolve(t, ref); err != nil {
			return err
		}
		// A server takes endpoints over (live migration), and gives its
		// own away (a move undone).
		if err := permitServer(ctx, server, "move endpoints to other servers"); err != nil {
			if permitServer(ctx, e.Server, "move endpoints") != nil {
				return err
			}
		}
		var srv Server
		if !t.get(serverKey(server), &srv) {
			return fieldErr("server", ErrNotFound, "server %q does not exist", server)
		}
		if iface != "" && iface != e.Interface {
			var other uint32
			if t.get(ifaceKey(server, iface), &other) {
				return fieldErr("interface", ErrConflict, "%s on server %s is already endpoint %d's", iface, server, other)
			}
		}
		if e.Server == server {
			if iface != e.Interface {
				setIface(t, &e, server, iface)
				t.put(endpointKey(e.ID), e)
			}
			return nil
		}
		return r.move(t, &e, &srv, iface)
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("move endpoint %s to %s: %w", ref, server, err)
	}
	return e, nil
}

// PublishedRequest is the body of PUT /v1/endpoints/{ref}/published.
type PublishedRequest struct {
	Published []PublishedPort `json:"published"`
}

// SetPublished replaces the ports an endpoint publishes (none: an empty
// list). Every server serves them, to clients outside the cluster. Each
// must lead to a port the endpoint serves, lie outside the wire range
// (those ports are the dataplane's), and lead nowhere else: endpoints of
// one service may publish the same port, endpoints of different services
// may not.
func (r *Registry) SetPublished(ctx context.Context, ref string, ps []PublishedPort) (Endpoint, error) {
	if err := r.checkPublished(ps); err != nil {
		return Endpoint{}, fmt.Errorf("publish ports of endpoint %s: %w", ref, err)
	}
	var e Endpoint
	_, err := r.update(ctx, func(t tx) error {
		var err error
		if e, err = resolve(t, ref); err != nil {
			return err
		}
		if err := permitServer(ctx, e.Server, "publish ports of endpoints"); err != nil {
			return err
		}
		for i, p := range ps {
			if !slices.Contains(e.Ports, PortSpec{Port: p.Port, Protocol: p.Protocol}) {
				return invalid(fmt.Sprintf("published[%d].port", i), "endpoint %s does not serve %d/%s (it serves %v)", ref, p.Port, p.Protocol, e.Ports)
			}
		}
		releasePublished(t, &e)
		if err := takePublished(t, &e, ps); err != nil {
			return err
		}
		e.Published = slices.Clone(ps)
		if len(e.Published) == 0 {
			e.Published = nil
		}
		t.put(endpointKey(e.ID), e)
		return nil
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("publish ports of endpoint %s: %w", ref, err)
	}
	return e, nil
}

// takePublished records that endpoint e publishes ps, or names the first
// host port that leads to another service. Every server serves a
// published port, so one port leads to one service cluster-wide; the
// endpoints of that service (replicas, a backup) may all publish it.
func takePublished(t tx, e *Endpoint, ps []PublishedPort) error {
	for i, p := range ps {
		var idx hostPortIndex
		k := hostPortKey(p.Protocol, p.HostPort)
		if t.get(k, &idx) && len(idx.Endpoints) > 0 &&
			(idx.NetworkID != e.NetworkID || idx.IP != e.IP || idx.Port != p.Port) {
			var other Endpoint
			t.get(endpointKey(idx.Endpoints[0]), &other)
			return fieldErr(fmt.Sprintf("published[%d].host_port", i), ErrConflict,
				"%d/%s already leads to %s/%s (published by endpoint %s); a published port is served by every server, so it leads to one service",
				p.HostPort, p.Protocol, other.Network, netip.AddrPortFrom(idx.IP, idx.Port), other.Ref())
		}
		if len(idx.Endpoints) == 0 {
			idx = hostPortIndex{NetworkID: e.NetworkID, IP: e.IP, Port: p.Port}
		}
		if !slices.Contains(idx.Endpoints, e.ID) {
			idx.Endpoints = append(idx.Endpoints, e.ID)
		}
		t.put(k, idx)
	}
	return nil
}

// releasePublished removes endpoint e from the index of the ports it
// publishes.
func releasePublished(t tx, e *Endpoint) {
	for _, p := range e.Published {
		var idx hostPortIndex
		k := hostPortKey(p.Protocol, p.HostPort)
		if !t.get(k, &idx) {
			continue
		}
		idx.Endpoints = slices.DeleteFunc(idx.Endpoints, func(id uint32) bool { return id == e.ID })
		if len(idx.Endpoints) == 0 {
			t.Del(k)
		} else {
			t.put(k, idx)
		}
	}
}

// move puts endpoint e on srv, through iface, inside a transaction.
func (r *Registry) move(t tx, e *Endpoint, srv *Server, iface string) error {
	var err error
	r.freeWire(t, e)
	if e.Wire, err = r.allocWire(t, srv, e.ID); err != nil {
		return err
	}
	setIface(t, e, srv.Name, iface)
	e.Server = srv.Name
	t.put(endpointKey(e.ID), *e)
	return nil
}

// setIface moves e's interface index entry to (server, iface).
func setIface(t tx, e *Endpoint, server, iface string) {
	if e.Interface != "" {
		t.Del(ifaceKey(e.Server, e.Interface))
	}
	if iface != "" {
		t.put(ifaceKey(server, iface), e.ID)
	}
	e.Interface = iface
}

// StateRequest changes an endpoint's state. With IfServer (and
// IfInterface) set, it applies only while the endpoint still runs there:
// an agent whose veth vanished because the endpoint moved away must not
// mark it down on its new server.
type StateRequest struct {
	State       State  `json:"state"`
	IfServer    string `json:"if_server,omitempty"`
	IfInterface string `json:"if_interface,omitempty"`
}

// SetEndpointState marks an endpoint active or down. A guard of req that
// does not hold is ErrConflict, and nothing changes.
func (r *Registry) SetEndpointState(ctx context.Context, ref string, req StateRequest) (Endpoint, error) {
	state := req.State
	if state != Active && state != Down {
		return Endpoint{}, invalid("state", "unknown state %q, want active or down", state)
	}
	var e Endpoint
	_, err := r.update(ctx, func(t tx) error {
		var err error
		if e, err = resolve(t, ref); err != nil {
			return err
		}
		if err := permitServer(ctx, e.Server, "change the state of endpoints"); err != nil {
			return err
		}
		if req.IfServer != "" && e.Server != req.IfServer {
			return fieldErr("if_server", ErrConflict, "endpoint %s runs on %s, not %s", ref, e.Server, req.IfServer)
		}
		if req.IfInterface != "" && e.Interface != req.IfInterface {
			return fieldErr("if_interface", ErrConflict, "endpoint %s is attached through %q, not %q", ref, e.Interface, req.IfInterface)
		}
		if e.State != state {
			e.State = state
			t.put(endpointKey(e.ID), e)
		}
		return nil
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("set endpoint %s %s: %w", ref, state, err)
	}
	return e, nil
}

// ---- reading and watching ----

func (r *Registry) getObject(ctx context.Context, key string, v any) error {
	kv, ok, _, err := r.st.Get(ctx, key)
	if err != nil {
		return err
	}
	if !ok {
		return ErrNotFound
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return fmt.Errorf("%w %s: %v", errCorrupt, key, err)
	}
	return nil
}

// Snapshot returns every network, server and endpoint at one revision.
func (r *Registry) Snapshot(ctx context.Context) (Snapshot, error) {
	kvs, rev, err := r.st.List(ctx, objPrefix)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot: %w", err)
	}
	s := Snapshot{Revision: rev, Networks: []Network{}, Servers: []Server{}, Endpoints: []Endpoint{}}
	for _, kv := range kvs {
		c, err := decodeObject(kv.Key, kv.Value)
		if err != nil {
			return Snapshot{}, fmt.Errorf("snapshot: %w", err)
		}
		switch {
		case c.Network != nil:
			s.Networks = append(s.Networks, *c.Network)
		case c.Server != nil:
			s.Servers = append(s.Servers, *c.Server)
		case c.Endpoint != nil:
			s.Endpoints = append(s.Endpoints, *c.Endpoint)
		}
	}
	return s, nil
}

// Kinds of objects in a Change.
const (
	KindNetwork  = "network"
	KindServer   = "server"
	KindEndpoint = "endpoint"
)

// Change is one entry of the change log: an object written or deleted at
// a revision. For a deletion, the object is the one that was deleted.
type Change struct {
	Revision int64     `json:"revision"`
	Type     string    `json:"type"` // "put" or "delete"
	Kind     string    `json:"kind"`
	Network  *Network  `json:"network,omitempty"`
	Server   *Server   `json:"server,omitempty"`
	Endpoint *Endpoint `json:"endpoint,omitempty"`
}

func decodeObject(key string, value []byte) (Change, error) {
	var c Change
	var v any
	switch {
	case strings.HasPrefix(key, networkPrefix):
		c.Kind, c.Network = KindNetwork, new(Network)
		v = c.Network
	case strings.HasPrefix(key, serverPrefix):
		c.Kind, c.Server = KindServer, new(Server)
		v = c.Server
	case strings.HasPrefix(key, endpointPrefix):
		c.Kind, c.Endpoint = KindEndpoint, new(Endpoint)
		v = c.Endpoint
	default:
		return c, fmt.Errorf("%w: unknown key %s", errCorrupt, key)
	}
	if err := json.Unmarshal(value, v); err != nil {
		return c, fmt.Errorf("%w %s: %v", errCorrupt, key, err)
	}
	return c, nil
}

// deletedObject is the Change of a deletion known only by its key: the
// object holds what the key says (a name, or an endpoint's ID).
func deletedObject(key string) (Change, error) {
	var c Change
	switch {
	case strings.HasPrefix(key, networkPrefix):
		c.Kind, c.Network = KindNetwork, &Network{Name: strings.TrimPrefix(key, networkPrefix)}
	case strings.HasPrefix(key, serverPrefix):
		c.Kind, c.Server = KindServer, &Server{Name: strings.TrimPrefix(key, serverPrefix)}
	case strings.HasPrefix(key, endpointPrefix):
		id, err := strconv.ParseUint(strings.TrimPrefix(key, endpointPrefix), 10, 32)
		if err != nil {
			return c, fmt.Errorf("%w: endpoint key %s", errCorrupt, key)
		}
		c.Kind, c.Endpoint = KindEndpoint, &Endpoint{ID: uint32(id)}
	default:
		return c, fmt.Errorf("%w: unknown key %s", errCorrupt, key)
	}
	return c, nil
}

// WatchResponse carries changes in revision order. One with Err set ends
// its channel; with ErrCompacted, CompactRevision is the oldest revision
// still available.
type WatchResponse struct {
	Changes         []Change
	CompactRevision int64
	Err             error
}

// Watch sends every change from revision rev on (zero: from the next one)
// until ctx ends or an error is sent. To follow the registry without a gap,
// take a Snapshot and watch from its Revision+1; after a disconnect, watch
// again from the last revision seen, since changes of one write share a
// revision and the stream may have ended between them.
func (r *Registry) Watch(ctx context.Context, rev int64) <-chan WatchResponse {
	out := make(chan WatchResponse, 4)
	go func() {
		defer close(out)
		for resp := range r.st.Watch(ctx, objPrefix, rev) {
			w := WatchResponse{Err: resp.Err, CompactRevision: resp.CompactRevision}
			if errors.Is(resp.Err, store.ErrCompacted) {
				w.Err = fmt.Errorf("watch from revision %d: %w (oldest is %d): list again", rev, ErrCompacted, resp.CompactRevision)
			}
			for _, ev := range resp.Events {
				value := ev.KV.Value
				if ev.Type == store.EventDelete {
					value = ev.PrevValue
				}
				var c Change
				var err error
				if ev.Type == store.EventDelete && value == nil {
					// A store may lose the previous value of a delete at
					// its compaction revision: what the key names is
					// enough to delete it.
					c, err = deletedObject(ev.KV.Key)
				} else {
					c, err = decodeObject(ev.KV.Key, value)
				}
				if err != nil {
					w.Err = err
					break
				}
				c.Revision, c.Type = ev.KV.ModRevision, ev.Type.String()
				w.Changes = append(w.Changes, c)
			}
			select {
			case out <- w:
			case <-ctx.Done():
				return
			}
			if w.Err != nil {
				return
			}
		}
	}()
	return out
}

// ---- validation helpers ----

func validName(field, s string) error {
	if s == "" {
		return invalid(field, "missing")
	}
	if len(s) > 63 {
		return invalid(field, "%q is longer than 63 characters", s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return invalid(field, "%q: want letters, digits, and - _ . after the first character", s)
		}
	}
	return nil
}

// checkIfname checks a host-side interface name: agents look endpoints'
// interfaces up by it, so it must be one the kernel could hold. Empty is
// allowed (not attached yet).
func checkIfname(field, s string) error {
	if s == "" {
		return nil
	}
	if len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n") {
		return invalid(field, "%q is not an interface name: want at most 15 characters, without '/', ':' or spaces", s)
	}
	return nil
}

// checkHostAddr checks that ip may be a host's address in subnet.
func checkHostAddr(field string, ip netip.Addr, subnet netip.Prefix) error {
	if !ip.Is4() {
		return invalid(field, "%s is not an IPv4 address", ip)
	}
	if !subnet.Contains(ip) {
		return invalid(field, "%s is outside the subnet %s", ip, subnet)
	}
	if ip == subnet.Addr() {
		return invalid(field, "%s is the network address of %s", ip, subnet)
	}
	if ip == lastAddr(subnet) {
		return invalid(field, "%s is the broadcast address of %s", ip, subnet)
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
