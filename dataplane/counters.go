package dataplane

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// DropReason says why a program dropped a packet.
type DropReason uint32

// The drop reasons, mirrored from enum drop_reason in bpf/daoli.h.
const (
	DropUnknownIfindex = DropReason(daoliDropReasonDROP_UNKNOWN_IFINDEX)
	DropNotIPv4        = DropReason(daoliDropReasonDROP_NOT_IPV4)
	DropMalformed      = DropReason(daoliDropReasonDROP_MALFORMED)
	DropFragment       = DropReason(daoliDropReasonDROP_FRAGMENT)
	DropSpoofed        = DropReason(daoliDropReasonDROP_SPOOFED)
	DropUnsupported    = DropReason(daoliDropReasonDROP_UNSUPPORTED)
	DropNoService      = DropReason(daoliDropReasonDROP_NO_SERVICE)
	DropNoBackend      = DropReason(daoliDropReasonDROP_NO_BACKEND)
	DropOffsetsFull    = DropReason(daoliDropReasonDROP_OFFSETS_FULL)
	DropUnknownPeer    = DropReason(daoliDropReasonDROP_UNKNOWN_PEER)
	DropCTMiss         = DropReason(daoliDropReasonDROP_CT_MISS)
	DropPolicy         = DropReason(daoliDropReasonDROP_POLICY)
	DropNoUplink       = DropReason(daoliDropReasonDROP_NO_UPLINK)
	DropARP            = DropReason(daoliDropReasonDROP_ARP)
	DropTTL            = DropReason(daoliDropReasonDROP_TTL)
	DropStaleWire      = DropReason(daoliDropReasonDROP_STALE_WIRE)
	DropEgressDenied   = DropReason(daoliDropReasonDROP_EGRESS_DENIED)
	DropTooBig         = DropReason(daoliDropReasonDROP_TOO_BIG)
	DropIPOptions      = DropReason(daoliDropReasonDROP_IP_OPTIONS)
	DropBadChecksum    = DropReason(daoliDropReasonDROP_BAD_CHECKSUM)
	DropFlowLimit      = DropReason(daoliDropReasonDROP_FLOW_LIMIT)
	dropReasons        = DropReason(daoliDropReasonDROP_REASONS)
)

var dropNames = [...]string{
	DropUnknownIfindex: "unknown_ifindex",
	DropNotIPv4:        "not_ipv4",
	DropMalformed:      "malformed",
	DropFragment:       "fragment",
	DropSpoofed:        "spoofed",
	DropUnsupported:    "unsupported",
	DropNoService:      "no_service",
	DropNoBackend:      "no_backend",
	DropOffsetsFull:    "offsets_full",
	DropUnknownPeer:    "unknown_peer",
	DropCTMiss:         "ct_miss",
	DropPolicy:         "policy",
	DropNoUplink:       "no_uplink",
	DropARP:            "arp",
	DropTTL:            "ttl",
	DropStaleWire:      "stale_wire",
	DropEgressDenied:   "egress_denied",
	DropTooBig:         "too_big",
	DropIPOptions:      "ip_options",
	DropBadChecksum:    "bad_checksum",
	DropFlowLimit:      "flow_limit",
}

// String returns the reason as named in the C enum, lower case, without
// "drop_".
func (r DropReason) String() string {
	if r < dropReasons {
		return dropNames[r]
	}
	return fmt.Sprintf("drop_reason(%d)", uint32(r))
}

// Counters are one endpoint's packet counters. Tx is what the container
// sent, Rx what was delivered into it.
type Counters struct {
	TxPackets, TxBytes, RxPackets, RxBytes uint64
}

// DropCounters returns the number of packets dropped per reason, summed
// over CPUs, since the maps were created.
func (d *Dataplane) DropCounters() (map[DropReason]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[DropReason]uint64{}
	for r := DropReason(0); r < dropReasons; r++ {
		var perCPU []uint64
		if err := d.objs.Drops.Lookup(uint32(r), &perCPU); err != nil {
			return nil, fmt.Errorf("read drop counter %s: %w", r, err)
		}
		var n uint64
		for _, c := range perCPU {
			n += c
		}
		out[r] = n
	}
	return out, nil
}

// EndpointCounters returns the counters of every endpoint that saw traffic
// on this server, summed over CPUs. Idle endpoints may be evicted.
func (d *Dataplane) EndpointCounters() (map[uint32]Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[uint32]Counters{}
	var id uint32
	var perCPU []daoliEpStats
	it := d.objs.EndpointStats.Iterate()
	for it.Next(&id, &perCPU) {
		var c Counters
		for _, s := range perCPU {
			c.TxPackets += s.TxPackets
			c.TxBytes += s.TxBytes
			c.RxPackets += s.RxPackets
			c.RxBytes += s.RxBytes
		}
		out[id] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read endpoint counters: %w", err)
	}
	return out, nil
}

// ctOut is CT_OUT of bpf/daoli.h: the client-side entry of a flow, keyed
// by the 5-tuple the client sent.
const ctOut = 0

// MapFill is how full one hash map is.
type MapFill struct {
	Name       string
	Entries    int
	MaxEntries int
}

// Fill reports the entries of every hash map against its capacity, and
// the number of flows in conntrack (one per client-side 5-tuple; each
// flow holds two conntrack entries). It walks the maps, so its cost grows
// with their size: call it at scrape intervals, not per packet.
func (d *Dataplane) Fill() (fill []MapFill, flows int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := &d.objs.daoliMaps
	for _, x := range []struct {
		name string
		m    *ebpf.Map
	}{
		{"conntrack", m.Conntrack}, {"endpoints", m.Endpoints}, {"endpoint_by_ifindex", m.EndpointByIfindex},
		{"wire_blocks", m.WireBlocks}, {"ident_blocks", m.IdentBlocks}, {"services", m.Services},
		{"policies", m.Policies}, {"exports", m.Exports}, {"offset_cursor", m.OffsetCursor},
	} {
		n := 0
		var err error
		if x.m == m.Conntrack {
			err = eachBatch(m.Conntrack, func(k daoliCtKey, _ daoliCtEntry) {
				n++
				if k.Dir == ctOut {
					flows++
				}
			})
		} else {
			var k, v []byte
			it := x.m.Iterate()
			for it.Next(&k, &v) {
				n++
			}
			err = it.Err()
		}
		if err != nil {
			return nil, 0, fmt.Errorf("count %s: %w", x.name, err)
		}
		fill = append(fill, MapFill{Name: x.name, Entries: n, MaxEntries: int(x.m.MaxEntries())})
	}
	return fill, flows, nil
}
