package mapper

// The scheduler API: what a patched Swarm or Kubernetes scheduler calls to
// place, scale, move and remove the replicas of a service. It is a thin
// layer over the registry: a placement is a registry endpoint, chosen and
// created in the same transaction that allocates its wire block, so two
// schedulers never place onto the same last free block. docs/scheduler.md
// is the contract.

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Constraints limit where a service's replicas may be placed.
type Constraints struct {
	// Servers, if any, are the only servers replicas may run on.
	Servers []string `json:"servers,omitempty"`
	// Exclude lists servers replicas must not run on.
	Exclude []string `json:"exclude,omitempty"`
	// MaxPerServer caps the service's replicas on one server. Zero means
	// no cap (replicas still spread: a server with fewer of them wins).
	MaxPerServer uint16 `json:"max_per_server,omitempty"`
}

// PlaceRequest declares a service and how many replicas it has. Zero
// Protocol means tcp, zero Mode balance, zero State down (a replica is
// reserved until its container runs and the orchestrator marks it
// active).
type PlaceRequest struct {
	// Name names the replicas: NAME-1, NAME-2, ...
	Name        string      `json:"name"`
	Protocol    Protocol    `json:"protocol,omitempty"`
	Replicas    uint16      `json:"replicas"`
	Mode        Mode        `json:"mode,omitempty"`
	Priority    uint16      `json:"priority,omitempty"`
	State       State       `json:"state,omitempty"`
	Constraints Constraints `json:"constraints,omitzero"`
	// HostPort, when not 0, is published by every replica: a client
	// outside the cluster reaches the service at HostPort of any
	// server.
	HostPort uint16 `json:"host_port,omitempty"`
}

// ScaleRequest sets a service's number of replicas.
type ScaleRequest struct {
	Protocol Protocol `json:"protocol,omitempty"`
	Replicas uint16   `json:"replicas"`
}

// MoveReplicaRequest moves one replica of a service: to server To, or
// (To empty) to the best other server under the service's constraints.
type MoveReplicaRequest struct {
	Protocol Protocol `json:"protocol,omitempty"`
	// Replica is the replica's endpoint name or ID.
	Replica string `json:"replica"`
	To      string `json:"to,omitempty"`
}

// Placement is one replica: where it runs and its 6-tuple.
type Placement struct {
	Endpoint uint32   `json:"endpoint"`
	Name     string   `json:"name"`
	Server   string   `json:"server"`
	State    State    `json:"state"`
	Tuple    SixTuple `json:"six_tuple"`
}

// ScheduledService is a service the scheduler API manages, with its
// replicas in the order they were placed.
type ScheduledService struct {
	ServiceKey
	Name        string      `json:"name"`
	Mode        Mode        `json:"mode"`
	Priority    uint16      `json:"priority"`
	State       State       `json:"state"`
	Constraints Constraints `json:"constraints"`
	HostPort    uint16      `json:"host_port,omitempty"`
	Replicas    []Placement `json:"replicas"`
}

// schedRecord is what the registry keeps of a scheduled service, under
// idxPrefix: watchers see only its replicas.
type schedRecord struct {
	Name        string      `json:"name"`
	Mode        Mode        `json:"mode"`
	Priority    uint16      `json:"priority"`
	State       State       `json:"state"`
	Constraints Constraints `json:"constraints"`
	HostPort    uint16      `json:"host_port,omitempty"`
	Endpoints   []uint32    `json:"endpoints"`
	Next        int         `json:"next"` // the index of the next replica's name
}

func schedKey(netID uint32, k ServiceKey) string {
	return fmt.Sprintf("%sscheduler/%d/%s/%s/%d", idxPrefix, netID, k.IP, k.Protocol, k.Port)
}

// checkKey validates a service key and fills in the default protocol.
func checkKey(k *ServiceKey) error {
	if k.Network == "" {
		return invalid("network", "missing")
	}
	if !k.IP.IsValid() || !k.IP.Is4() {
		return invalid("ip", "want an IPv4 address such as 10.1.0.5")
	}
	if k.Port == 0 {
		return invalid("port", "want a port from 1 to 65535")
	}
	switch k.Protocol {
	case "":
		k.Protocol = TCP
	case TCP, UDP:
	default:
		return invalid("protocol", "unknown protocol %q, want tcp or udp", k.Protocol)
	}
	return nil
}

// schedTx is one scheduler call's view of the registry.
type schedTx struct {
	r   *Registry
	t   tx
	k   ServiceKey
	n   Network
	rec schedRecord
}

// open reads the service's network and record; ok is false when the
// service is not scheduled.
func (r *Registry) openSched(t tx, k ServiceKey) (*schedTx, bool, error) {
	s := &schedTx{r: r, t: t, k: k}
	if !t.get(networkKey(k.Network), &s.n) {
		return nil, false, fieldErr("network", ErrNotFound, "network %q does not exist", k.Network)
	}
	ok := t.get(schedKey(s.n.ID, k), &s.rec)
	// Replicas removed by other means (DELETE /v1/endpoints) are gone.
	s.rec.Endpoints = slices.DeleteFunc(s.rec.Endpoints, func(id uint32) bool {
		return !t.get(endpointKey(id), &Endpoint{})
	})
	return s, ok, nil
}

func (s *schedTx) save() { s.t.put(schedKey(s.n.ID, s.k), s.rec) }

func (s *schedTx) replicas() []Endpoint {
	out := make([]Endpoint, 0, len(s.rec.Endpoints))
	for _, id := range s.rec.Endpoints {
		var e Endpoint
		s.t.get(endpointKey(id), &e)
		out = append(out, e)
	}
	return out
}

func (s *schedTx) view() ScheduledService {
	v := ScheduledService{ServiceKey: s.k, Name: s.rec.Name, Mode: s.rec.Mode, Priority: s.rec.Priority,
		State: s.rec.State, Constraints: s.rec.Constraints, HostPort: s.rec.HostPort, Replicas: []Placement{}}
	for _, e := range s.replicas() {
		var srv Server
		s.t.get(serverKey(e.Server), &srv)
		v.Replicas = append(v.Replicas, Placement{Endpoint: e.ID, Name: e.Name, Server: e.Server, State: e.State, Tuple: e.SixTuples(&srv)[0]})
	}
	return v
}

// candidate is a server a replica may go to.
type candidate struct {
	srv  Server
	mine int // replicas of this service there
	used int // wire blocks taken there, by any endpoint
}

// choose returns the best server for one more replica, skipping not:
// alive, allowed by the constraints, with a free wire block, then the fewest
// replicas of this service, the fewest endpoints, and the name.
func (s *schedTx) choose(not string) (Server, error) {
	c := s.rec.Constraints
	mine := map[string]int{}
	for _, e := range s.replicas() {
		mine[e.Server]++
	}
	var cands []candidate
	for _, kv := range s.t.List(serverPrefix) {
		var srv Server
		s.t.get(kv.Key, &srv)
		if srv.Gone || srv.Name == not || len(c.Servers) > 0 && !slices.Contains(c.Servers, srv.Name) || slices.Contains(c.Exclude, srv.Name) {
			continue // a gone server would serve nothing
		}
		if c.MaxPerServer > 0 && mine[srv.Name] >= int(c.MaxPerServer) {
			continue
		}
		used, free := 0, false
		for _, ip := range srv.IPs {
			bt := s.t.slots(wireKey(ip))
			used += bt.count()
			free = free || bt.takeable(s.r.blocks, s.r.cfg.BlockSize)
		}
		if free {
			cands = append(cands, candidate{srv: srv, mine: mine[srv.Name], used: used})
		}
	}
	if len(cands) == 0 {
		return Server{}, fieldErr("replicas", ErrPortSpaceFull,
			"no server for another replica of %s: none alive and allowed by the constraints (servers %v, exclude %v, max_per_server %d) has a free wire block",
			s.k, c.Servers, c.Exclude, c.MaxPerServer)
	}
	best := slices.MinFunc(cands, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.mine, b.mine), cmp.Compare(a.used, b.used), cmp.Compare(a.srv.Name, b.srv.Name))
	})
	return best.srv, nil
}

// add places one more replica.
func (s *schedTx) add() error {
	srv, err := s.choose("")
	if err != nil {
		return err
	}
	s.rec.Next++
	spec := EndpointSpec{
		Name: s.rec.Name + "-" + strconv.Itoa(s.rec.Next), Network: s.k.Network, IP: s.k.IP, Server: srv.Name,
		Ports: []PortSpec{{Port: s.k.Port, Protocol: s.k.Protocol}}, Mode: s.rec.Mode, Priority: s.rec.Priority, State: s.rec.State,
	}
	if err := s.r.check(&spec); err != nil {
		return err
	}
	e, err := s.r.create(s.t, &spec)
	if err != nil {
		return schedField(err)
	}
	if s.rec.HostPort != 0 {
		e.Published = []PublishedPort{{HostPort: s.rec.HostPort, Port: s.k.Port, Protocol: s.k.Protocol}}
		if err := takePublished(s.t, &e, e.Published); err != nil {
			if fe, ok := err.(*FieldError); ok {
				fe.Field = "host_port"
			}
			return err
		}
		s.t.put(endpointKey(e.ID), e)
	}
	s.rec.Endpoints = append(s.rec.Endpoints, e.ID)
	return nil
}

// schedField renames the fields of endpoint errors to the request's.
func schedField(err error) error {
	if fe, ok := err.(*FieldError); ok {
		switch {
		case fe.Field == "ports[0]":
			fe.Field = "mode"
		case fe.Field == "server":
			fe.Field = "replicas"
		}
	}
	return err
}

// scale adds or removes replicas (the newest first) to reach n.
func (s *schedTx) scale(n uint16) error {
	for len(s.rec.Endpoints) < int(n) {
		if err := s.add(); err != nil {
			return err
		}
	}
	for len(s.rec.Endpoints) > int(n) {
		last := s.rec.Endpoints[len(s.rec.Endpoints)-1]
		var e Endpoint
		s.t.get(endpointKey(last), &e)
		s.r.remove(s.t, &e)
		s.rec.Endpoints = s.rec.Endpoints[:len(s.rec.Endpoints)-1]
	}
	return nil
}

func (r *Registry) sched(ctx context.Context, what string, k ServiceKey, fn func(s *schedTx, ok bool) error) (ScheduledService, error) {
	if err := checkKey(&k); err != nil {
		return ScheduledService{}, fmt.Errorf("%s: %w", what, err)
	}
	var out ScheduledService
	_, err := r.update(ctx, func(t tx) error {
		s, ok, err := r.openSched(t, k)
		if err != nil {
			return err
		}
		if err := fn(s, ok); err != nil {
			return err
		}
		out = s.view()
		return nil
	})
	if err != nil {
		return ScheduledService{}, fmt.Errorf("%s %s: %w", what, k, err)
	}
	return out, nil
}

func notScheduled(k ServiceKey) error {
	return fmt.Errorf("%w: service %s is not scheduled (POST /v1/scheduler/services/%s/%s/%d first)", ErrNotFound, k, k.Network, k.IP, k.Port)
}

// PlaceService declares a service with req.Replicas replicas, placing
// them all in one transaction, or none. Placing a service again with the
// same request changes nothing and answers created=false; with another
// request it is ErrConflict, naming the field that differs.
func (r *Registry) PlaceService(ctx context.Context, k ServiceKey, req PlaceRequest) (_ ScheduledService, created bool, _ error) {
	k.Protocol = cmp.Or(req.Protocol, k.Protocol)
	if err := validName("name", req.Name); err != nil {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", err)
	}
	if len(req.Name) > 56 {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", invalid("name", "%q is longer than 56 characters (replica names add -N)", req.Name))
	}
	if req.Replicas == 0 {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", invalid("replicas", "want 1 or more (DELETE removes a service)"))
	}
	req.Mode = cmp.Or(req.Mode, Balance)
	if req.Mode != Balance && req.Mode != Failover {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", invalid("mode", "unknown mode %q, want balance or failover", req.Mode))
	}
	req.State = cmp.Or(req.State, Down)
	if req.State != Active && req.State != Down {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", invalid("state", "unknown state %q, want active or down", req.State))
	}
	if req.HostPort != 0 && r.wire.First <= req.HostPort && req.HostPort <= r.wire.Last {
		return ScheduledService{}, false, fmt.Errorf("place service: %w", invalid("host_port", "%d is inside the wire range %s, which belongs to the dataplane", req.HostPort, r.wire))
	}
	v, err := r.sched(ctx, "place service", k, func(s *schedTx, ok bool) error {
		created = false
		want := schedRecord{Name: req.Name, Mode: req.Mode, Priority: req.Priority, State: req.State, Constraints: req.Constraints, HostPort: req.HostPort}
		if ok {
			switch {
			case s.rec.Name != want.Name:
				return fieldErr("name", ErrConflict, "service %s is scheduled as %q", s.k, s.rec.Name)
			case s.rec.Mode != want.Mode:
				return fieldErr("mode", ErrConflict, "service %s is scheduled in mode %s", s.k, s.rec.Mode)
			case s.rec.Priority != want.Priority:
				return fieldErr("priority", ErrConflict, "service %s is scheduled with priority %d", s.k, s.rec.Priority)
			case s.rec.State != want.State:
				return fieldErr("state", ErrConflict, "service %s is scheduled with state %s", s.k, s.rec.State)
			case !slices.Equal(s.rec.Constraints.Servers, want.Constraints.Servers) || !slices.Equal(s.rec.Constraints.Exclude, want.Constraints.Exclude) ||
				s.rec.Constraints.MaxPerServer != want.Constraints.MaxPerServer:
				return fieldErr("constraints", ErrConflict, "service %s is scheduled with constraints %+v", s.k, s.rec.Constraints)
			case s.rec.HostPort != want.HostPort:
				return fieldErr("host_port", ErrConflict, "service %s is scheduled with host port %d", s.k, s.rec.HostPort)
			case len(s.rec.Endpoints) != int(req.Replicas):
				return fieldErr("replicas", ErrConflict, "service %s has %d replicas; POST .../scale changes that", s.k, len(s.rec.Endpoints))
			}
			return nil
		}
		for i, name := range want.Constraints.Servers {
			if !s.t.get(serverKey(name), &Server{}) {
				return fieldErr(fmt.Sprintf("constraints.servers[%d]", i), ErrNotFound, "server %q does not exist", name)
			}
		}
		s.rec = want
		if err := s.scale(req.Replicas); err != nil {
			return err
		}
		s.save()
		created = true
		return nil
	})
	return v, created, err
}

// ScheduledService returns a scheduled service and its replicas.
func (r *Registry) ScheduledService(ctx context.Context, k ServiceKey) (ScheduledService, error) {
	return r.sched(ctx, "scheduled service", k, func(s *schedTx, ok bool) error {
		if !ok {
			return notScheduled(s.k)
		}
		return nil
	})
}

// ScaleService adds replicas (placed as PlaceService does) or removes the
// newest ones until the service has n. Scaling to the count it has
// changes nothing.
func (r *Registry) ScaleService(ctx context.Context, k ServiceKey, n uint16) (ScheduledService, error) {
	if n == 0 {
		return ScheduledService{}, fmt.Errorf("scale service: %w", invalid("replicas", "want 1 or more (DELETE removes a service)"))
	}
	return r.sched(ctx, "scale service", k, func(s *schedTx, ok bool) error {
		if !ok {
			return notScheduled(s.k)
		}
		if err := s.scale(n); err != nil {
			return err
		}
		s.save()
		return nil
	})
}

// MoveReplica moves one replica to server to, or, with to empty, to the
// best other server under the service's constraints. The replica keeps
// its identity (IP, MAC, identity block) and gets a wire block on the new
// server; its interface is cleared and it is marked down until the
// orchestrator has its container running there. Moving a replica to the
// server it is on changes nothing.
func (r *Registry) MoveReplica(ctx context.Context, k ServiceKey, replica, to string) (ScheduledService, error) {
	if replica == "" {
		return ScheduledService{}, fmt.Errorf("move replica: %w", invalid("replica", "missing; want a replica's name or endpoint ID"))
	}
	return r.sched(ctx, "move replica", k, func(s *schedTx, ok bool) error {
		if !ok {
			return notScheduled(s.k)
		}
		e, err := resolve(s.t, replica)
		if err != nil || !slices.Contains(s.rec.Endpoints, e.ID) {
			return fieldErr("replica", ErrNotFound, "%q is not a replica of %s", replica, s.k)
		}
		var srv Server
		if to != "" {
			if !s.t.get(serverKey(to), &srv) {
				return fieldErr("to", ErrNotFound, "server %q does not exist", to)
			}
			if srv.Name == e.Server {
				return nil
			}
		} else if srv, err = s.choose(e.Server); err != nil {
			return err
		}
		if err := s.r.move(s.t, &e, &srv, ""); err != nil {
			if fe, ok := err.(*FieldError); ok && fe.Field == "server" {
				fe.Field = "to"
			}
			return err
		}
		e.State = Down
		s.t.put(endpointKey(e.ID), e)
		return nil
	})
}

// RemoveService removes every replica of a scheduled service and the
// service itself, and returns what it was.
func (r *Registry) RemoveService(ctx context.Context, k ServiceKey) (ScheduledService, error) {
	var was ScheduledService
	_, err := r.sched(ctx, "remove service", k, func(s *schedTx, ok bool) error {
		if !ok {
			return notScheduled(s.k)
		}
		was = s.view()
		for _, e := range s.replicas() {
			s.r.remove(s.t, &e)
		}
		s.rec.Endpoints = nil
		s.t.Del(schedKey(s.n.ID, s.k))
		return nil
	})
	return was, err
}

// ServiceKeyOf parses the path of a scheduler route.
func ServiceKeyOf(network, ip, port string, proto Protocol) (ServiceKey, error) {
	k := ServiceKey{Network: network, Protocol: proto}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return k, invalid("ip", "%q is not an IPv4 address such as 10.1.0.5", ip)
	}
	k.IP = a
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return k, invalid("port", "%q: want a port from 1 to 65535", port)
	}
	k.Port = uint16(n)
	return k, checkKey(&k)
}

// takeable reports whether take would find a free block; s is unchanged.
func (s slots) takeable(r PortRange, size uint16) bool {
	c := slices.Clone(s)
	_, ok := c.take(r, size)
	return ok
}
