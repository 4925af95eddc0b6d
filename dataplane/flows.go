package dataplane

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Timeouts of a flow's conntrack entries, as ct_timeout in bpf/daoli.c
// has them, and its flags.
const (
	ctTCPEstablished = 3600 * time.Second
	ctTCPUnreplied   = 30 * time.Second
	ctTCPHalfClosed  = 120 * time.Second
	ctTCPClosed      = 2 * time.Second
	ctUDP            = 30 * time.Second
	ctICMP           = 60 * time.Second

	ctUDPReuse = time.Second

	ctFlagRST     = 0x04
	ctFlagReplied = 0x08
	ctFlagFins    = 0x01 | 0x02
)

// ctHolds says whether a flow of proto with flags, idle for idle, still
// holds its place: it has not timed out, nor ended (a TCP reset or both
// FINs, which the programs count as they happen), nor is it a UDP flow
// answered and idle long enough that its offset goes to the next flow
// that needs one.
func ctHolds(proto, flags uint8, idle time.Duration) bool {
	switch {
	case idle >= ctTimeout(proto, flags):
		return false
	case proto == uint8(TCP):
		return flags&ctFlagRST == 0 && flags&ctFlagFins != ctFlagFins
	case proto == uint8(UDP):
		return flags&ctFlagReplied == 0 || idle < ctUDPReuse
	}
	return true
}

// ctTimeout is how long an idle flow of proto with flags lasts.
func ctTimeout(proto, flags uint8) time.Duration {
	switch {
	case proto == uint8(TCP) && (flags&ctFlagRST != 0 || flags&ctFlagFins == ctFlagFins):
		return ctTCPClosed
	case proto == uint8(TCP) && flags&ctFlagFins != 0:
		return ctTCPHalfClosed
	case proto == uint8(TCP) && flags&ctFlagReplied == 0:
		return ctTCPUnreplied
	case proto == uint8(TCP):
		return ctTCPEstablished
	case proto == uint8(UDP):
		return ctUDP
	}
	return ctICMP
}

// AccountFlows counts, for each endpoint with an interface on this server,
// the flows conntrack holds for it (ctHolds), and gives the programs that
// count: from it on they add the flows each endpoint opens and take off
// those that end (a TCP reset or close), so that no endpoint holds more
// than Config.MaxFlowsPerEndpoint flows. Between two calls the programs'
// count only errs high: flows that time out or go idle are taken off at
// the next call. Call it every second or so; it reads the whole conntrack
// map. It returns the counts by endpoint ID.
func (d *Dataplane) AccountFlows() (map[uint32]int, error) {
	// Not under d.mu: reading conntrack takes a while, and must not hold
	// up an Apply. The maps it writes are its own.
	d.flowMu.Lock()
	defer d.flowMu.Unlock()
	m := &d.objs.daoliMaps
	local := map[uint32]bool{}
	var ifindex, id uint32
	it := m.EndpointByIfindex.Iterate()
	for it.Next(&ifindex, &id) {
		local[id] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("account flows: %w", err)
	}
	// Flows opened are read before conntrack, flows ended after: a flow
	// opened or ended while conntrack is read then errs high until the
	// next call, never low.
	counts := func() (map[uint32]daoliFlowCount, error) {
		out := map[uint32]daoliFlowCount{}
		var n daoliFlowCount
		it := m.FlowCounts.Iterate()
		for it.Next(&id, &n) {
			out[id] = n
		}
		return out, it.Err()
	}
	opened, err := counts()
	if err != nil {
		return nil, fmt.Errorf("account flows: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("account flows: %w", err)
	}
	now := uint64(ts.Nano())
	live := map[uint32]int{}
	for id := range local {
		live[id] = 0
	}
	err = eachBatch(m.Conntrack, func(k daoliCtKey, v daoliCtEntry) {
		// A flow's CT_REV or CT_EGRESS entry is the one its packets
		// touch; its CT_OUT entry keeps the time it started.
		if k.Dir == ctOut || !local[k.Scope] {
			return
		}
		var idle time.Duration
		if now > v.LastSeen {
			idle = time.Duration(now - v.LastSeen)
		}
		if ctHolds(v.Proto, v.Flags, idle) {
			live[k.Scope]++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("account flows: %w", err)
	}
	closed, err := counts()
	if err != nil {
		return nil, fmt.Errorf("account flows: %w", err)
	}
	for id, n := range live {
		q := daoliFlowQuota{Opened: opened[id].Opened, Closed: closed[id].Closed, Live: uint32(n)}
		if err := m.FlowQuota.Update(id, q, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("account flows of endpoint %d: %w", id, err)
		}
	}
	// Endpoints gone from this server: their counts go with them.
	for _, mp := range []*ebpf.Map{m.FlowQuota, m.FlowCounts} {
		var gone []uint32
		var key uint32
		var val []byte
		it := mp.Iterate()
		for it.Next(&key, &val) {
			if !local[key] {
				gone = append(gone, key)
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("account flows: %w", err)
		}
		for _, key := range gone {
			if err := mp.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil, fmt.Errorf("account flows: %w", err)
			}
		}
	}
	return live, nil
}

// eachBatch calls fn with every entry of m, read thousands at a time: a
// full conntrack read one entry per syscall takes a CPU for most of a
// fifth of a second.
func eachBatch[K, V any](m *ebpf.Map, fn func(K, V)) error {
	const chunk = 4096
	keys, vals := make([]K, chunk), make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", m, err)
		}
	}
}
