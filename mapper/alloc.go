package mapper

import (
	"fmt"
	"math/bits"
	"slices"
)

// PortRange is an inclusive range of ports.
type PortRange struct {
	First uint16 `json:"first"`
	Last  uint16 `json:"last"`
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// Defaults for Config. The wire range stays below Linux's default
// ephemeral range (32768-60999) so that the server's own outgoing
// connections never pick a port the dataplane owns; the identity range is
// what peers see as client ports, so it looks like an ephemeral range.
var (
	DefaultWirePorts     = PortRange{16384, 32767}
	DefaultIdentityPorts = PortRange{32768, 60927}
)

// DefaultBlockSize is the number of ports in a wire or identity block.
const DefaultBlockSize = 256

// blocks returns how many aligned blocks of size fit in r.
func (r PortRange) blocks(size uint16) int {
	first := alignUp(uint32(r.First), uint32(size))
	if first+uint32(size)-1 > uint32(r.Last) {
		return 0
	}
	return int((uint32(r.Last) - first + 1) / uint32(size))
}

func alignUp(v, size uint32) uint32 { return (v + size - 1) &^ (size - 1) }

func validBlockSize(n uint16) bool { return n >= 8 && bits.OnesCount16(n) == 1 }

// ownedBlock is a block and the endpoint that holds it.
type ownedBlock struct {
	Base     uint16 `json:"base"`
	Size     uint16 `json:"size"`
	Endpoint uint32 `json:"endpoint"`
}

// blockTable is the allocation state of one port space: a locator
// address's wire blocks, or a (network, IP)'s identity blocks. Blocks are
// kept sorted by base. Holding base and size per block, rather than a
// bitmap of fixed slots, keeps existing allocations valid when the block
// size in the configuration changes.
type blockTable struct {
	Blocks []ownedBlock `json:"blocks"`
}

// alloc takes the lowest free block of size in r, aligned to size (the
// dataplane finds a port's block by masking), for endpoint id.
func (t *blockTable) alloc(r PortRange, size uint16, id uint32) (uint16, bool) {
	base := alignUp(uint32(r.First), uint32(size))
	i := 0
	for base+uint32(size)-1 <= uint32(r.Last) {
		// Skip the blocks that end before this candidate.
		for i < len(t.Blocks) && uint32(t.Blocks[i].Base)+uint32(t.Blocks[i].Size) <= base {
			i++
		}
		if i == len(t.Blocks) || uint32(t.Blocks[i].Base) >= base+uint32(size) {
			t.Blocks = slices.Insert(t.Blocks, i, ownedBlock{Base: uint16(base), Size: size, Endpoint: id})
			return uint16(base), true
		}
		// Overlap: move past the block in the way, staying aligned.
		base = alignUp(uint32(t.Blocks[i].Base)+uint32(t.Blocks[i].Size), uint32(size))
	}
	return 0, false
}

// free releases the block held by id at base; it reports whether there was
// one.
func (t *blockTable) free(base uint16, id uint32) bool {
	for i, b := range t.Blocks {
		if b.Base == base && b.Endpoint == id {
			t.Blocks = slices.Delete(t.Blocks, i, i+1)
			return true
		}
	}
	return false
}
