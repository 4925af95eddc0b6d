package mapper

import (
	"fmt"
	"math/bits"
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

// slots is the allocation state of one port space, a locator address's
// wire blocks or a (network, IP)'s identity blocks: bit i set means the
// block at port i*size is taken. With the block size fixed per registry, a
// block is one bit, so a whole address's state is at most 1 KiB and
// allocation costs a scan of bytes, not a decode of records.
type slots []byte

func (s slots) has(i int) bool { return i/8 < len(s) && s[i/8]&(1<<(i%8)) != 0 }

func (s *slots) set(i int) {
	for len(*s) <= i/8 {
		*s = append(*s, 0)
	}
	(*s)[i/8] |= 1 << (i % 8)
}

func (s *slots) clear(i int) {
	if i/8 < len(*s) {
		(*s)[i/8] &^= 1 << (i % 8)
	}
	for len(*s) > 0 && (*s)[len(*s)-1] == 0 { // keep the encoding canonical
		*s = (*s)[:len(*s)-1]
	}
}

func (s slots) count() int {
	n := 0
	for _, b := range s {
		n += bits.OnesCount8(b)
	}
	return n
}

// take sets and returns the lowest clear block of size in r.
func (s *slots) take(r PortRange, size uint16) (uint16, bool) {
	lo := int(alignUp(uint32(r.First), uint32(size)) / uint32(size))
	hi := int((uint32(r.Last)+1)/uint32(size)) - 1
	for i := lo; i <= hi; i++ {
		if i%8 == 0 && i/8 < len(*s) && (*s)[i/8] == 0xff && i+7 <= hi {
			i += 7 // a full byte: eight taken blocks
			continue
		}
		if !s.has(i) {
			s.set(i)
			return uint16(i * int(size)), true
		}
	}
	return 0, false
}

// takeAvoiding is take, skipping blocks for which avoid is true.
func (s *slots) takeAvoiding(r PortRange, size uint16, avoid func(Block) bool) (uint16, bool) {
	lo := int(alignUp(uint32(r.First), uint32(size)) / uint32(size))
	hi := int((uint32(r.Last)+1)/uint32(size)) - 1
	for i := lo; i <= hi; i++ {
		b := Block{Base: uint16(i * int(size)), Size: size}
		if !s.has(i) && !avoid(b) {
			s.set(i)
			return b.Base, true
		}
	}
	return 0, false
}

// release clears the block at base.
func (s *slots) release(base, size uint16) { s.clear(int(base / size)) }
