// Package store is the mapper's storage: a revisioned key-value space with
// serializable transactions, a change log that watchers follow from any
// revision, and leases.
//
// Two backends implement it, and pass the same conformance suite
// (storetest):
//
//   - Bolt, the embedded default: one file, every acknowledged write
//     fsynced, concurrent writers coalesced into one commit (group
//     commit), so durability costs one fsync per batch rather than one
//     per write. Revisions start at 1 and grow by exactly one for every
//     Update that wrote something.
//   - Etcd, for registries that must outlive any one machine: several
//     stateless mappers on one etcd cluster. The interface maps onto
//     etcd's: Get/List ↔ KV.Get (WithPrefix), Watch ↔ Watcher.Watch
//     (WithPrefix, WithRev, ErrCompacted included), Compact ↔ KV.Compact,
//     Grant/KeepAlive/Revoke ↔ Lease. Update is an optimistic
//     transaction of its own (etcd's STM has no range reads), and
//     concurrent Updates of one store are committed together and share a
//     revision: see Etcd. Revisions are etcd's, which grow with every
//     write to the cluster.
//
// In both, all keys written by one Update share its revision, as in etcd.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by stores.
var (
	// ErrCompacted is returned by Watch (in a WatchResponse) when the
	// requested start revision is older than the oldest revision the change
	// log still holds. The watcher must list again and watch from there.
	ErrCompacted = errors.New("revision compacted")
	// ErrFutureRevision is returned by Watch when the start revision lies
	// more than one past the current revision.
	ErrFutureRevision = errors.New("revision is in the future")
	// ErrLeaseNotFound is returned for a lease that was never granted,
	// was revoked, or expired.
	ErrLeaseNotFound = errors.New("lease not found")
	// ErrClosed is returned by every call on a closed store.
	ErrClosed = errors.New("store closed")
	// ErrUnavailable is returned by Update when the store could not be
	// reached before anything was written: trying again elsewhere is safe.
	ErrUnavailable = errors.New("store unavailable")
	// ErrOutcomeUnknown is returned by Update when a commit was sent and
	// no answer says whether it happened.
	ErrOutcomeUnknown = errors.New("outcome unknown")
)

// KeyValue is one key at one revision.
type KeyValue struct {
	Key   string
	Value []byte
	// CreateRevision is the revision that created the key; ModRevision the
	// revision that last wrote it; Version counts writes since creation.
	CreateRevision int64
	ModRevision    int64
	Version        int64
	// Lease is the lease the key is attached to; zero means none.
	Lease LeaseID
}

// LeaseID names a lease. The zero value means "no lease".
type LeaseID int64

// EventType says whether an event wrote or deleted its key.
type EventType uint8

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one change to one key. For EventDelete, KV holds the key and the
// revision of the deletion, and PrevValue the value the key had. Puts carry
// no previous value: the change log stays half the size, and a watcher
// that needs one keeps its own copy (as etcd without WithPrevKV).
type Event struct {
	Type      EventType
	KV        KeyValue
	PrevValue []byte
}

// WatchResponse carries the events of one or more consecutive revisions, in
// order. A response with Err set is the last one on its channel.
type WatchResponse struct {
	Events []Event
	// CompactRevision is set together with Err = ErrCompacted: the oldest
	// revision still available.
	CompactRevision int64
	Err             error
}

// STM is the view of the store inside one Update: reads see the state as
// of the transaction plus its own writes; writes are applied atomically when
// the transaction function returns nil, and discarded otherwise.
type STM interface {
	// Get returns the value of key, and false if it does not exist.
	Get(key string) ([]byte, bool)
	// List returns the keys with the prefix, in key order.
	List(prefix string) []KeyValue
	// Put writes key; lease zero means none.
	Put(key string, value []byte, lease LeaseID)
	// Del deletes key; deleting a missing key is not an error.
	Del(key string)
}

// Store is a revisioned key-value store. Implementations are safe for
// concurrent use.
type Store interface {
	// Get returns one key and the store's revision at the time of reading.
	// ok is false when the key does not exist.
	Get(ctx context.Context, key string) (kv KeyValue, ok bool, rev int64, err error)
	// List returns every key with the prefix, in key order, all read at
	// the returned revision.
	List(ctx context.Context, prefix string) ([]KeyValue, int64, error)
	// Update runs fn in a serializable transaction and commits its writes.
	// It returns the revision of the commit (the current revision if fn
	// wrote nothing). An error returned by fn aborts the transaction and is
	// returned unchanged. fn may run more than once and must have no side
	// effects outside the STM. When Update returns nil, the write is durable.
	Update(ctx context.Context, fn func(STM) error) (int64, error)
	// Watch sends every event on keys with the prefix from revision rev
	// (inclusive) on, in revision order, until ctx is done or an error is
	// sent. rev zero means "from the next revision".
	Watch(ctx context.Context, prefix string, rev int64) <-chan WatchResponse
	// Compact drops change-log entries older than rev.
	Compact(ctx context.Context, rev int64) error
	// Revision returns the current revision and the compaction revision.
	Revision(ctx context.Context) (rev, compacted int64, err error)
	// Grant creates a lease that expires after ttl unless kept alive; keys
	// attached to it are deleted when it expires or is revoked.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews a lease for its ttl.
	KeepAlive(ctx context.Context, id LeaseID) error
	// Revoke ends a lease and deletes its keys.
	Revoke(ctx context.Context, id LeaseID) error
	// Close releases the store. Watch channels are closed.
	Close() error
}
