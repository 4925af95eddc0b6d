package dataplane

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Apply makes the maps hold s: it validates s, writes what differs from the
// maps' current content and deletes what s no longer names. The first
// Apply of a Dataplane reads the maps, so a restarted process converges
// from whatever it adopted; later ones diff against what the last one
// wrote (the maps are Apply's alone), and read the maps again after a
// write failed. Lookups made by packets see each entry either old or new;
// Maglev tables are written under a fresh index before a service points
// at them, so a table swap is atomic.
func (d *Dataplane) Apply(s State) (err error) {
	s, err = s.validate()
	if err != nil {
		return fmt.Errorf("apply state: %w", err)
	}
	if max := d.MaxEndpoints(); len(s.Endpoints) > max {
		return fmt.Errorf("apply state: %d endpoints, the maps hold %d (Config.MaxEndpoints): %w", len(s.Endpoints), max, ErrInvalidState)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	defer func() {
		if err != nil {
			d.mirror = nil // what the maps hold is unknown: read them next time
		}
	}()
	if d.mirror == nil {
		d.mirror = map[*ebpf.Map]any{}
	}

	n := len(s.Endpoints)
	endpoints := make(map[uint32]daoliEndpoint, n)
	byIfindex := map[uint32]uint32{}
	wire := make(map[daoliWireKey]uint32, n)
	ident := make(map[daoliIdentKey]uint32, n)
	backends := make(map[serviceID][]Endpoint, 2*n)
	for _, e := range s.Endpoints {
		v := daoliEndpoint{
			NetId:     e.Network,
			Ip:        addr(e.IP),
			ServerIp:  addr(e.Server),
			Ifindex:   uint32(e.Ifindex),
			WireBase:  e.WireBase,
			IdentBase: e.IdentityBase,
			BlockSize: s.BlockSize,
			Nports:    uint16(len(e.Ports)),
			State:     uint8(e.State),
		}
		copy(v.Mac[:], e.MAC)
		for i, p := range e.Ports {
			v.Ports[i].Port = p.Number
			v.Ports[i].Proto = uint8(p.Proto)
			sid := serviceID{e.Network, e.IP, p.Number, uint8(p.Proto)}
			backends[sid] = append(backends[sid], e)
		}
		icmp := serviceID{e.Network, e.IP, 0, protoICMP}
		backends[icmp] = append(backends[icmp], e)
		endpoints[e.ID] = v
		if e.Ifindex != 0 {
			byIfindex[uint32(e.Ifindex)] = e.ID
		}
		wire[daoliWireKey{ServerIp: addr(e.Server), Base: e.WireBase}] = e.ID
		ident[daoliIdentKey{NetId: e.Network, Ip: addr(e.IP), Base: e.IdentityBase}] = e.ID
	}

	home, unbalanced, err := d.services(backends)
	if err != nil {
		return fmt.Errorf("apply state: %w", err)
	}
	d.unbalanced.Store(int64(unbalanced))
	if unbalanced > 0 {
		d.log.Warn("Maglev tables are all taken: some balance services send every new flow to one backend",
			"services", unbalanced, "tables", maxTables)
	}
	// Services are keyed by the network of the client that looks them up:
	// a Policy shows the services of To in From, where From's own win.
	// Replies need the identity blocks of an allowed From in To.
	services := maps.Clone(home)
	policies := map[daoliPolicyKey]daoliPolicyVerdict{}
	exports := map[daoliExportKey]uint8{}
	for _, p := range sortedPolicies(s) {
		v := daoliPolicyVerdictPOLICY_DENY
		switch {
		case p.Allow && len(p.Only) > 0:
			v = daoliPolicyVerdictPOLICY_EXPORTS
		case p.Allow:
			v = daoliPolicyVerdictPOLICY_ALLOW
		}
		policies[daoliPolicyKey{From: p.From, To: p.To}] = v
		if p.From == p.To {
			continue
		}
		only := map[daoliServiceKey]bool{}
		for _, r := range p.Only {
			k := daoliServiceKey{NetId: p.To, Ip: addr(r.IP), Port: r.Port.Number, Proto: uint8(r.Port.Proto)}
			only[k] = true
			exports[daoliExportKey{From: p.From, To: p.To, Ip: k.Ip, Port: k.Port, Proto: k.Proto}] = 1
		}
		for k, svc := range home {
			if k.NetId != p.To || len(only) > 0 && !only[k] {
				continue
			}
			k.NetId = p.From
			if _, ok := services[k]; !ok {
				services[k] = svc
			}
		}
		if !p.Allow {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Network == p.From {
				ident[daoliIdentKey{NetId: p.To, Ip: addr(e.IP), Base: e.IdentityBase}] = e.ID
			}
		}
	}

	outside, egress := outsideMaps(s)
	published := map[daoliPublishedKey]daoliServiceKey{}
	for _, p := range s.Published {
		published[daoliPublishedKey{Port: p.HostPort, Proto: uint8(p.Proto)}] = daoliServiceKey{
			NetId: p.Network, Ip: addr(p.IP), Port: p.Port, Proto: uint8(p.Proto),
		}
	}

	m := &d.objs.daoliMaps
	err = d.updateSettings(func(v *daoliServerSettings) {
		copy(v.GatewayMac[:], s.GatewayMAC)
		v.BlockSize = s.BlockSize
		v.WireFirst, v.WireLast = s.WirePorts.First, s.WirePorts.Last
		v.LocalIpCount = uint32(len(s.LocalIPs))
		v.LocalIps = [MaxLocalIPs]uint32{}
		for i, ip := range s.LocalIPs {
			v.LocalIps[i] = addr(ip)
		}
	})
	if err != nil {
		return fmt.Errorf("apply state: %w", err)
	}
	if err := d.updateGateway(s.GatewayBase); err != nil {
		return fmt.Errorf("apply state: %w", err)
	}
	// Upsert the records before the indexes that point at them, delete in
	// the reverse order, so a packet never finds a dangling index.
	var del []func() error
	for _, step := range []func() (func() error, error){
		func() (func() error, error) { return syncMap(d, m.Endpoints, endpoints) },
		func() (func() error, error) { return syncMap(d, m.WireBlocks, wire) },
		func() (func() error, error) { return syncMap(d, m.IdentBlocks, ident) },
		func() (func() error, error) { return syncMap(d, m.EndpointByIfindex, byIfindex) },
		func() (func() error, error) { return d.syncStats(byIfindex) },
		func() (func() error, error) { return syncMap(d, m.Exports, exports) },
		func() (func() error, error) { return syncMap(d, m.Policies, policies) },
		func() (func() error, error) { return syncMap(d, m.Outside, outside) },
		func() (func() error, error) { return syncMap(d, m.Egress, egress) },
		func() (func() error, error) { return syncMap(d, m.Services, services) },
		func() (func() error, error) { return syncMap(d, m.Published, published) },
	} {
		f, err := step()
		if err != nil {
			return fmt.Errorf("apply state: %w", err)
		}
		del = append(del, f)
	}
	for _, f := range slices.Backward(del) {
		if err := f(); err != nil {
			return fmt.Errorf("apply state: %w", err)
		}
	}
	d.log.Debug("state applied", "endpoints", len(endpoints), "services", len(services), "policies", len(policies))
	return nil
}

// services builds the services map, writing a Maglev table for every
// balance service whose backend set changed.
// services computes the services map, writing the Maglev tables it needs.
// It also returns how many balance services got no table (all taken) and
// send their new flows to one backend.
func (d *Dataplane) services(backends map[serviceID][]Endpoint) (map[daoliServiceKey]daoliService, int, error) {
	unbalanced := 0
	current, err := mirrored[daoliServiceKey, daoliService](d, d.objs.Services)
	if err != nil {
		return nil, 0, err
	}
	used := map[uint32]bool{}
	for _, v := range current {
		if v.Mode == uint8(Balance) && v.Backends > 0 {
			used[v.Table] = true
		}
	}

	want := make(map[daoliServiceKey]daoliService, len(backends))
	// Tables are kept by services whose backends are the same; the others
	// get theirs in a fixed order, so that table indexes are reproducible.
	type pending struct {
		sid     serviceID
		key     daoliServiceKey
		members []uint32
		active  []Endpoint
	}
	var needTable []pending
	best := func(active []Endpoint) uint32 {
		return slices.MinFunc(active, func(a, b Endpoint) int {
			return cmp.Or(cmp.Compare(b.Priority, a.Priority), cmp.Compare(a.ID, b.ID))
		}).ID
	}
	for sid, eps := range backends {
		key := daoliServiceKey{NetId: sid.network, Ip: addr(sid.ip), Port: sid.port, Proto: sid.proto}
		mode := eps[0].Mode
		if sid.proto == protoICMP {
			mode = Failover
		}
		var active []Endpoint
		for _, e := range eps {
			if e.State == Active {
				active = append(active, e)
			}
		}
		// A balance service with one active backend needs no Maglev
		// table: every new flow goes to that backend, as in failover.
		// Tables are for services that spread flows.
		if mode == Balance && len(active) == 1 {
			mode = Failover
		}
		svc := daoliService{Mode: uint8(mode), Backends: uint32(len(active)), NetId: sid.network}
		if len(active) > 0 && mode == Balance {
			members := make([]uint32, len(active))
			for i, e := range active {
				members[i] = e.ID
			}
			slices.Sort(members)
			svc.Digest = backendDigest(members)
			if old, ok := current[key]; ok && old.Mode == svc.Mode && old.Backends > 0 && old.Digest == svc.Digest {
				svc.Table = old.Table
				used[svc.Table] = true
			} else {
				needTable = append(needTable, pending{sid, key, members, active})
				continue
			}
		}
		if len(active) > 0 && mode == Failover {
			svc.Backend = best(active)
		}
		want[key] = svc
	}
	slices.SortFunc(needTable, func(a, b pending) int {
		return cmp.Or(cmp.Compare(a.sid.network, b.sid.network), a.sid.ip.Compare(b.sid.ip),
			cmp.Compare(a.sid.port, b.sid.port), cmp.Compare(a.sid.proto, b.sid.proto))
	})
	for _, p := range needTable {
		svc := daoliService{Mode: uint8(Balance), Backends: uint32(len(p.active)), NetId: p.sid.network, Digest: backendDigest(p.members)}
		if table, err := d.writeTable(p.members, used); err == nil {
			svc.Table = table
			used[svc.Table] = true
		} else if errors.Is(err, errTablesFull) {
			// Every table is taken: this service's new flows all go to
			// one backend until a table frees, rather than the whole
			// server failing to apply.
			unbalanced++
			svc.Mode, svc.Digest, svc.Backend = uint8(Failover), 0, best(p.active)
		} else {
			return nil, 0, fmt.Errorf("service %s:%d/%d: %w", p.sid.ip, p.sid.port, p.sid.proto, err)
		}
		want[p.key] = svc
	}
	return want, unbalanced, nil
}

// errTablesFull is returned when every Maglev table is taken.
var errTablesFull = errors.New("no free Maglev table (too many balance services)")

func (d *Dataplane) writeTable(members []uint32, used map[uint32]bool) (uint32, error) {
	var table uint32
	for table = 0; table < maxTables && used[table]; table++ {
	}
	if table == maxTables {
		return 0, errTablesFull
	}
	slots := maglevTable(members, MaglevSize)
	keys := make([]uint32, MaglevSize)
	for i := range keys {
		keys[i] = table*MaglevSize + uint32(i)
	}
	if _, err := d.objs.Maglev.BatchUpdate(keys, slots, nil); err != nil {
		return 0, fmt.Errorf("write Maglev table %d: %w", table, err)
	}
	d.writes.Add(uint64(len(keys)))
	return table, nil
}

// syncMap writes the entries of want that m lacks or holds differently and
// returns a function that deletes the entries of m that want lacks.
// syncMap writes the entries of want that m lacks or holds differently and
// returns a function that deletes the entries of m that want lacks. What m
// holds comes from d.mirror, or from reading m when the mirror has no copy
// of it; want becomes the copy once both halves succeeded. want must not
// change afterwards.
func syncMap[K, V comparable](d *Dataplane, m *ebpf.Map, want map[K]V) (func() error, error) {
	have, err := mirrored[K, V](d, m)
	if err != nil {
		return nil, err
	}
	delete(d.mirror, m) // until both halves succeed
	for k, v := range want {
		if old, ok := have[k]; ok && old == v {
			continue
		}
		if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("write %s: %w", m, err)
		}
		d.writes.Add(1)
	}
	return func() error {
		for k := range have {
			if _, ok := want[k]; ok {
				continue
			}
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from %s: %w", m, err)
			}
			d.writes.Add(1)
		}
		d.mirror[m] = want
		return nil
	}, nil
}

// mirrored returns what m holds: d.mirror's copy, or m read.
func mirrored[K, V comparable](d *Dataplane, m *ebpf.Map) (map[K]V, error) {
	if have, ok := d.mirror[m].(map[K]V); ok {
		return have, nil
	}
	have := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", m, err)
	}
	return have, nil
}

// syncStats gives every local endpoint (the values of byIfindex) a zeroed
// counter entry unless it has one, and returns a function that deletes the
// entries of endpoints that are no longer local. The programs only add to
// existing entries, so counters never race with their creation and are
// never evicted while the endpoint lives here.
func (d *Dataplane) syncStats(byIfindex map[uint32]uint32) (func() error, error) {
	m := d.objs.EndpointStats
	local := map[uint32]bool{}
	for _, id := range byIfindex {
		local[id] = true
	}
	var have []uint32
	var id uint32
	var perCPU []daoliEpStats
	it := m.Iterate()
	for it.Next(&id, &perCPU) {
		have = append(have, id)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", m, err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count CPUs: %w", err)
	}
	zero := make([]daoliEpStats, cpus)
	for id := range local {
		err := m.Update(id, zero, ebpf.UpdateNoExist)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return nil, fmt.Errorf("write %s: %w", m, err)
		}
		if err == nil {
			d.writes.Add(1)
		}
	}
	return func() error {
		for _, id := range have {
			if local[id] {
				continue
			}
			if err := m.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from %s: %w", m, err)
			}
			d.writes.Add(1)
		}
		return nil
	}, nil
}

// outsideMaps returns the contents of the outside map (the subnets of
// every network and the addresses that never leave, as internal; every
// server's address as a locator) and of the egress map (per network, the
// prefixes it may reach).
func outsideMaps(s State) (map[daoliOutsideKey]daoliOutsideKind, map[daoliEgressKey]uint32) {
	outside := map[daoliOutsideKey]daoliOutsideKind{}
	for _, p := range neverEgress {
		outside[outsideKey(p)] = daoliOutsideKindOUTSIDE_INTERNAL
	}
	for _, n := range s.Networks {
		outside[outsideKey(n.Subnet)] = daoliOutsideKindOUTSIDE_INTERNAL
	}
	for _, sv := range s.Servers {
		outside[outsideKey(netip.PrefixFrom(sv.IP, 32))] = daoliOutsideKindOUTSIDE_LOCATOR
	}
	egress := map[daoliEgressKey]uint32{}
	for _, n := range s.Networks {
		for _, p := range n.Egress {
			egress[daoliEgressKey{Prefixlen: 32 + uint32(p.Bits()), NetId: n.ID, Addr: addr(p.Addr())}] = 1
		}
	}
	return outside, egress
}

// outsideKey returns the LPM key of prefix p, which must be masked: the
// kernel keeps the bytes it was given and returns them when iterated.
func outsideKey(p netip.Prefix) daoliOutsideKey {
	return daoliOutsideKey{Prefixlen: uint32(p.Bits()), Addr: addr(p.Masked().Addr())}
}

// addr returns a's four bytes as the kernel stores them, in network order.
func addr(a netip.Addr) uint32 {
	b := a.Unmap().As4()
	return binary.NativeEndian.Uint32(b[:])
}
