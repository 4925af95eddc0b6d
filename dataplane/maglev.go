package dataplane

import (
	"encoding/binary"
	"hash/fnv"
	"slices"
)

// maglevTable builds the lookup table of Maglev (Eisenbud et al., NSDI
// 2016) over the endpoint ids: every id gets about size/len(ids) slots, and
// removing one id moves few slots of the others. It depends only on the set
// of ids, so every server builds the same table.
func maglevTable(ids []uint32, size int) []uint32 {
	if len(ids) == 0 {
		return nil
	}
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	n := len(ids)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	for i, id := range ids {
		offset[i] = maglevHash("offset", id) % uint64(size)
		skip[i] = maglevHash("skip", id)%uint64(size-1) + 1
	}
	table := make([]uint32, size)
	taken := make([]bool, size)
	next := make([]uint64, n)
	for filled := 0; ; {
		for i := range ids {
			c := (offset[i] + next[i]*skip[i]) % uint64(size)
			for taken[c] {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % uint64(size)
			}
			table[c] = ids[i]
			taken[c] = true
			next[i]++
			filled++
			if filled == size {
				return table
			}
		}
	}
}

func maglevHash(seed string, id uint32) uint64 {
	h := fnv.New64a()
	h.Write([]byte(seed))
	h.Write(binary.LittleEndian.AppendUint32(nil, id))
	return h.Sum64()
}

// backendDigest names a set of backends, so an unchanged set keeps its
// table.
func backendDigest(ids []uint32) uint32 {
	h := fnv.New32a()
	for _, id := range ids {
		h.Write(binary.LittleEndian.AppendUint32(nil, id))
	}
	return h.Sum32()
}
