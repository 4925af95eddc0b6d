package store

import (
	"encoding/binary"
	"errors"
)

// The on-disk encodings are small varint records. They are versioned by
// their first byte so that a later format can be told apart.

const codecVersion = 1

var errCorrupt = errors.New("corrupt record")

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.err = errCorrupt
		return nil
	}
	v := make([]byte, n)
	copy(v, r.b[:n])
	r.b = r.b[n:]
	return v
}

// encodeRecord encodes a key's stored state (the key itself is the bolt key).
func encodeRecord(kv *KeyValue) []byte {
	b := make([]byte, 0, len(kv.Value)+24)
	b = append(b, codecVersion)
	b = binary.AppendVarint(b, kv.CreateRevision)
	b = binary.AppendVarint(b, kv.ModRevision)
	b = binary.AppendVarint(b, kv.Version)
	b = binary.AppendVarint(b, int64(kv.Lease))
	return appendBytes(b, kv.Value)
}

func decodeRecord(key string, b []byte) (KeyValue, error) {
	if len(b) == 0 || b[0] != codecVersion {
		return KeyValue{}, errCorrupt
	}
	r := reader{b: b[1:]}
	kv := KeyValue{Key: key}
	kv.CreateRevision = r.varint()
	kv.ModRevision = r.varint()
	kv.Version = r.varint()
	kv.Lease = LeaseID(r.varint())
	kv.Value = r.bytes()
	return kv, r.err
}

// encodeEvents encodes the events of one revision for the change log.
func encodeEvents(evs []Event) []byte {
	b := []byte{codecVersion}
	b = binary.AppendUvarint(b, uint64(len(evs)))
	for i := range evs {
		e := &evs[i]
		b = append(b, byte(e.Type))
		b = appendBytes(b, []byte(e.KV.Key))
		b = binary.AppendVarint(b, e.KV.CreateRevision)
		b = binary.AppendVarint(b, e.KV.Version)
		b = binary.AppendVarint(b, int64(e.KV.Lease))
		b = appendBytes(b, e.KV.Value)
		b = appendBytes(b, e.PrevValue)
	}
	return b
}

// decodeEvents decodes one revision's events, keeping those whose key has
// the prefix.
func decodeEvents(rev int64, b []byte, prefix string, out []Event) ([]Event, error) {
	if len(b) == 0 || b[0] != codecVersion {
		return out, errCorrupt
	}
	r := reader{b: b[1:]}
	n := r.uvarint()
	for i := uint64(0); i < n && r.err == nil; i++ {
		var e Event
		if len(r.b) == 0 {
			return out, errCorrupt
		}
		e.Type = EventType(r.b[0])
		r.b = r.b[1:]
		e.KV.Key = string(r.bytes())
		e.KV.ModRevision = rev
		e.KV.CreateRevision = r.varint()
		e.KV.Version = r.varint()
		e.KV.Lease = LeaseID(r.varint())
		e.KV.Value = r.bytes()
		if prev := r.bytes(); len(prev) > 0 {
			e.PrevValue = prev
		}
		if r.err == nil && hasPrefix(e.KV.Key, prefix) {
			out = append(out, e)
		}
	}
	return out, r.err
}

func hasPrefix(s, prefix string) bool {
	return len(s) >= len(prefix) && s[:len(prefix)] == prefix
}

func revKey(rev int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(rev))
}

func u64(b []byte) int64 {
	if len(b) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}
