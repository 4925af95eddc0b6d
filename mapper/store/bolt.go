package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketKV        = []byte("kv")
	bucketLog       = []byte("log")
	bucketMeta      = []byte("meta")
	bucketLeases    = []byte("leases")
	bucketLeaseKeys = []byte("lease_keys")

	metaRevision  = []byte("revision")
	metaCompacted = []byte("compacted")
	metaLeaseNext = []byte("lease_next")
)

// BoltConfig configures a Bolt store.
type BoltConfig struct {
	// Path is the database file. Required.
	Path string
	// Retain is how many revisions of change log are kept before older
	// ones are compacted away. Zero means 100000.
	Retain int64
	// MaxBatch caps how many concurrent updates share one commit. Zero
	// means 1000.
	MaxBatch int
	// OpenTimeout bounds the wait for the file lock held by another
	// process. Zero means 2 seconds.
	OpenTimeout time.Duration
	// LeaseCheck is how often expired leases are looked for. Zero means
	// 500 milliseconds.
	LeaseCheck time.Duration
	// Logger receives background errors. Nil means discard.
	Logger *slog.Logger
}

// Bolt is a Store in one bbolt file. Writers are serialized through one
// committer goroutine that folds every update waiting at the time into one
// bolt transaction and one fsync (group commit): each update still gets its
// own revision and fails or succeeds on its own.
//
// A Bolt is safe for concurrent use. Its zero value is not usable: call
// OpenBolt.
type Bolt struct {
	db      *bolt.DB
	cfg     BoltConfig
	log     *slog.Logger
	reqs    chan *request
	closed  chan struct{}
	stopped chan struct{} // closed when the committer has exited
	wg      sync.WaitGroup

	mu     sync.Mutex
	notify chan struct{} // closed and replaced after every commit
	done   bool
}

type request struct {
	fn   func(*boltSTM) error
	rev  int64
	err  error
	done chan struct{}
}

// OpenBolt opens (creating if needed) the store at cfg.Path.
func OpenBolt(cfg BoltConfig) (*Bolt, error) {
	if cfg.Path == "" {
		return nil, errors.New("open bolt store: no path given")
	}
	if cfg.Retain == 0 {
		cfg.Retain = 100000
	}
	if cfg.Retain < 0 {
		return nil, fmt.Errorf("open bolt store: retain %d is negative", cfg.Retain)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = 2 * time.Second
	}
	if cfg.LeaseCheck == 0 {
		cfg.LeaseCheck = 500 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: cfg.OpenTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open bolt store %s: %w (is another mapper using this file?)", cfg.Path, err)
		}
		return nil, fmt.Errorf("open bolt store %s: %w", cfg.Path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketLog, bucketMeta, bucketLeases, bucketLeaseKeys} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// A restart must not expire every lease at once: give each its
		// full ttl again, as etcd does on leader change.
		now := time.Now()
		c := tx.Bucket(bucketLeases).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			l, err := decodeLease(v)
			if err != nil {
				return fmt.Errorf("lease %d: %w", u64(k), err)
			}
			l.expiry = now.Add(l.ttl)
			if err := tx.Bucket(bucketLeases).Put(k, l.encode()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open bolt store %s: %w", cfg.Path, err)
	}
	s := &Bolt{
		db:      db,
		cfg:     cfg,
		log:     log,
		reqs:    make(chan *request, cfg.MaxBatch),
		closed:  make(chan struct{}),
		stopped: make(chan struct{}),
		notify:  make(chan struct{}),
	}
	s.wg.Add(2)
	go s.commitLoop()
	go s.leaseLoop()
	return s, nil
}

// Close stops the committer, ends every watch and closes the file. Updates
// already acknowledged are on disk; updates still queued fail with
// ErrClosed.
func (s *Bolt) Close() error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return nil
	}
	s.done = true
	close(s.closed)
	s.mu.Unlock()
	s.wg.Wait()
	return s.db.Close()
}

func (s *Bolt) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// Get implements Store.
func (s *Bolt) Get(ctx context.Context, key string) (KeyValue, bool, int64, error) {
	if s.isClosed() {
		return KeyValue{}, false, 0, ErrClosed
	}
	var (
		kv  KeyValue
		ok  bool
		rev int64
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = u64(tx.Bucket(bucketMeta).Get(metaRevision))
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return nil
		}
		var err error
		kv, err = decodeRecord(key, v)
		ok = err == nil
		return err
	})
	if err != nil {
		return KeyValue{}, false, 0, fmt.Errorf("get %q: %w", key, err)
	}
	return kv, ok, rev, nil
}

// List implements Store.
func (s *Bolt) List(ctx context.Context, prefix string) ([]KeyValue, int64, error) {
	if s.isClosed() {
		return nil, 0, ErrClosed
	}
	var (
		out []KeyValue
		rev int64
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = u64(tx.Bucket(bucketMeta).Get(metaRevision))
		var err error
		out, err = listBucket(tx.Bucket(bucketKV), prefix)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	return out, rev, nil
}

func listBucket(b *bolt.Bucket, prefix string) ([]KeyValue, error) {
	var out []KeyValue
	p := []byte(prefix)
	c := b.Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		kv, err := decodeRecord(string(k), v)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		out = append(out, kv)
	}
	return out, nil
}

// Revision implements Store.
func (s *Bolt) Revision(ctx context.Context) (rev, compacted int64, err error) {
	if s.isClosed() {
		return 0, 0, ErrClosed
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		rev, compacted = u64(m.Get(metaRevision)), u64(m.Get(metaCompacted))
		return nil
	})
	return rev, compacted, err
}

// Update implements Store. If ctx ends after the update was queued, Update
// returns ctx's error and the update may or may not have been applied, as
// with any remote store.
func (s *Bolt) Update(ctx context.Context, fn func(STM) error) (int64, error) {
	return s.submit(ctx, func(t *boltSTM) error { return fn(t) })
}

func (s *Bolt) submit(ctx context.Context, fn func(*boltSTM) error) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.isClosed() {
		return 0, ErrClosed
	}
	r := &request{fn: fn, done: make(chan struct{})}
	select {
	case s.reqs <- r:
	case <-s.closed:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case <-r.done:
		return r.rev, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.stopped:
		// The send raced with Close and may have landed in the queue
		// after the committer drained it for the last time.
		select {
		case <-r.done:
			return r.rev, r.err
		default:
			return 0, ErrClosed
		}
	}
}

func (s *Bolt) commitLoop() {
	defer s.wg.Done()
	defer close(s.stopped)
	batch := make([]*request, 0, s.cfg.MaxBatch)
	for {
		var first *request
		select {
		case first = <-s.reqs:
		case <-s.closed:
			s.failQueued()
			return
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < s.cfg.MaxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.commit(batch)
	}
}

func (s *Bolt) failQueued() {
	for {
		select {
		case r := <-s.reqs:
			r.err = ErrClosed
			close(r.done)
		default:
			return
		}
	}
}

// commit runs a batch of requests in one bolt transaction. Each request's
// writes are buffered in its own STM and applied only if it succeeded, so a
// failing request leaves no trace while the others commit.
func (s *Bolt) commit(batch []*request) {
	var (
		rev, compacted int64
		wrote          bool
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		rev = u64(meta.Get(metaRevision))
		compacted = u64(meta.Get(metaCompacted))
		for _, r := range batch {
			r.err, r.rev = nil, rev
			t := &boltSTM{tx: tx, writes: map[string]*write{}}
			if err := callSafely(r.fn, t); err != nil {
				r.err = err
				continue
			}
			if err := t.checkLeases(); err != nil {
				r.err = err
				continue
			}
			if len(t.writes) == 0 && len(t.raw) == 0 {
				continue
			}
			n, err := t.apply(rev + 1)
			if err != nil {
				return err // the bolt transaction is broken: fail the batch
			}
			if n > 0 { // deleting only missing keys is no change
				rev, wrote = rev+1, true
			}
			r.rev = rev
		}
		return meta.Put(metaRevision, revKey(rev))
	})
	for _, r := range batch {
		if err != nil {
			r.err, r.rev = fmt.Errorf("commit: %w", err), 0
		}
		close(r.done)
	}
	if err != nil || !wrote {
		return
	}
	s.broadcast()
	if rev-compacted > s.cfg.Retain+1024 {
		if err := s.Compact(context.Background(), rev-s.cfg.Retain); err != nil {
			s.log.Error("compact change log", "error", err)
		}
	}
}

func callSafely(fn func(*boltSTM) error, t *boltSTM) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("transaction panicked: %v", p)
		}
	}()
	return fn(t)
}

func (s *Bolt) broadcast() {
	s.mu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
}

func (s *Bolt) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

// Compact implements Store. Compacting to a revision at or below the
// current compaction revision does nothing.
func (s *Bolt) Compact(ctx context.Context, rev int64) error {
	if s.isClosed() {
		return ErrClosed
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		cur, old := u64(meta.Get(metaRevision)), u64(meta.Get(metaCompacted))
		if rev > cur+1 {
			return fmt.Errorf("compact to %d: %w (current revision %d)", rev, ErrFutureRevision, cur)
		}
		if rev <= old {
			return nil
		}
		l := tx.Bucket(bucketLog)
		c := l.Cursor()
		for k, _ := c.First(); k != nil && u64(k) < rev; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return meta.Put(metaCompacted, revKey(rev))
	})
}

// Watch implements Store.
func (s *Bolt) Watch(ctx context.Context, prefix string, rev int64) <-chan WatchResponse {
	ch := make(chan WatchResponse, 4)
	go s.watch(ctx, prefix, rev, ch)
	return ch
}

const watchPage = 512 // revisions read per pass

func (s *Bolt) watch(ctx context.Context, prefix string, next int64, ch chan<- WatchResponse) {
	defer close(ch)
	send := func(r WatchResponse) bool {
		select {
		case ch <- r:
			return true
		case <-ctx.Done():
		case <-s.closed:
		}
		return false
	}
	for {
		changed := s.changed() // before reading, so no commit is missed
		var (
			events         []Event
			cur, compacted int64
		)
		err := s.db.View(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			cur, compacted = u64(meta.Get(metaRevision)), u64(meta.Get(metaCompacted))
			if next == 0 {
				next = cur + 1
			}
			if next < compacted {
				return ErrCompacted
			}
			if next > cur+1 {
				return ErrFutureRevision
			}
			c := tx.Bucket(bucketLog).Cursor()
			k, v := c.Seek(revKey(next))
			for n := 0; k != nil && n < watchPage; n++ {
				r := u64(k)
				var err error
				if events, err = decodeEvents(r, v, prefix, events); err != nil {
					return fmt.Errorf("change log revision %d: %w", r, err)
				}
				next = r + 1
				k, v = c.Next()
			}
			return nil
		})
		switch {
		case errors.Is(err, ErrCompacted):
			send(WatchResponse{Err: ErrCompacted, CompactRevision: compacted})
			return
		case errors.Is(err, ErrFutureRevision):
			send(WatchResponse{Err: fmt.Errorf("watch from revision %d: %w (current revision %d)", next, err, cur)})
			return
		case err != nil:
			send(WatchResponse{Err: fmt.Errorf("watch: %w", err)})
			return
		}
		if len(events) > 0 && !send(WatchResponse{Events: events}) {
			return
		}
		if next <= cur {
			continue // more pages to read
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		case <-s.closed:
			return
		}
	}
}

// write is one buffered change inside an STM.
type write struct {
	value []byte
	lease LeaseID
	del   bool
}

// boltSTM buffers a transaction's writes on top of a bolt write
// transaction, so that a failing transaction function leaves nothing
// behind even though it shares the bolt transaction with others.
type boltSTM struct {
	tx     *bolt.Tx
	writes map[string]*write
	raw    []func(tx *bolt.Tx) error // non-revisioned bookkeeping (leases)
}

func (t *boltSTM) Get(key string) ([]byte, bool) {
	if w, ok := t.writes[key]; ok {
		if w.del {
			return nil, false
		}
		return w.value, true
	}
	v := t.tx.Bucket(bucketKV).Get([]byte(key))
	if v == nil {
		return nil, false
	}
	kv, err := decodeRecord(key, v)
	if err != nil {
		panic(fmt.Sprintf("key %q: %v", key, err)) // recovered by callSafely
	}
	return kv.Value, true
}

func (t *boltSTM) List(prefix string) []KeyValue {
	stored, err := listBucket(t.tx.Bucket(bucketKV), prefix)
	if err != nil {
		panic(err.Error())
	}
	var pending []string
	for k := range t.writes {
		if hasPrefix(k, prefix) {
			pending = append(pending, k)
		}
	}
	if len(pending) == 0 {
		return stored
	}
	byKey := make(map[string]int, len(stored))
	for i, kv := range stored {
		byKey[kv.Key] = i
	}
	out := stored[:0:0]
	skip := map[string]bool{}
	for _, k := range pending {
		w := t.writes[k]
		skip[k] = true
		if !w.del {
			out = append(out, KeyValue{Key: k, Value: w.value, Lease: w.lease})
		}
	}
	for _, kv := range stored {
		if !skip[kv.Key] {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (t *boltSTM) Put(key string, value []byte, lease LeaseID) {
	t.writes[key] = &write{value: bytes.Clone(value), lease: lease}
}

func (t *boltSTM) Del(key string) {
	t.writes[key] = &write{del: true}
}

func (t *boltSTM) checkLeases() error {
	for k, w := range t.writes {
		if w.del || w.lease == 0 {
			continue
		}
		if t.tx.Bucket(bucketLeases).Get(revKey(int64(w.lease))) == nil {
			return fmt.Errorf("put %q with lease %d: %w", k, w.lease, ErrLeaseNotFound)
		}
	}
	return nil
}

// apply writes the buffered changes at revision rev and logs them. It
// returns how many keys changed.
func (t *boltSTM) apply(rev int64) (int, error) {
	kvb := t.tx.Bucket(bucketKV)
	lk := t.tx.Bucket(bucketLeaseKeys)
	keys := make([]string, 0, len(t.writes))
	for k := range t.writes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	events := make([]Event, 0, len(keys))
	for _, k := range keys {
		w := t.writes[k]
		var (
			prev    KeyValue
			existed bool
		)
		if v := kvb.Get([]byte(k)); v != nil {
			var err error
			if prev, err = decodeRecord(k, v); err != nil {
				return 0, fmt.Errorf("key %q: %w", k, err)
			}
			existed = true
		}
		if existed && prev.Lease != 0 && (w.del || prev.Lease != w.lease) {
			if err := lk.Delete(leaseKey(prev.Lease, k)); err != nil {
				return 0, err
			}
		}
		if w.del {
			if !existed {
				continue
			}
			if err := kvb.Delete([]byte(k)); err != nil {
				return 0, err
			}
			events = append(events, Event{
				Type:      EventDelete,
				KV:        KeyValue{Key: k, ModRevision: rev},
				PrevValue: prev.Value,
			})
			continue
		}
		kv := KeyValue{Key: k, Value: w.value, CreateRevision: rev, ModRevision: rev, Version: 1, Lease: w.lease}
		if existed {
			kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
		}
		if err := kvb.Put([]byte(k), encodeRecord(&kv)); err != nil {
			return 0, err
		}
		if w.lease != 0 {
			if err := lk.Put(leaseKey(w.lease, k), nil); err != nil {
				return 0, err
			}
		}
		events = append(events, Event{Type: EventPut, KV: kv})
	}
	for _, f := range t.raw {
		if err := f(t.tx); err != nil {
			return 0, err
		}
	}
	if len(events) == 0 {
		return 0, nil
	}
	return len(events), t.tx.Bucket(bucketLog).Put(revKey(rev), encodeEvents(events))
}

func leaseKey(id LeaseID, key string) []byte {
	return append(revKey(int64(id)), key...)
}

type lease struct {
	ttl    time.Duration
	expiry time.Time
}

func (l lease) encode() []byte {
	b := binary.AppendVarint(nil, int64(l.ttl))
	return binary.AppendVarint(b, l.expiry.UnixNano())
}

func decodeLease(b []byte) (lease, error) {
	r := reader{b: b}
	l := lease{ttl: time.Duration(r.varint())}
	l.expiry = time.Unix(0, r.varint())
	return l, r.err
}

// Grant implements Store.
func (s *Bolt) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("grant lease: ttl %v is not positive", ttl)
	}
	var id LeaseID
	_, err := s.submit(ctx, func(t *boltSTM) error {
		meta := t.tx.Bucket(bucketMeta)
		id = LeaseID(u64(meta.Get(metaLeaseNext)) + 1)
		t.raw = append(t.raw, func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketMeta).Put(metaLeaseNext, revKey(int64(id))); err != nil {
				return err
			}
			l := lease{ttl: ttl, expiry: time.Now().Add(ttl)}
			return tx.Bucket(bucketLeases).Put(revKey(int64(id)), l.encode())
		})
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	return id, nil
}

// KeepAlive implements Store.
func (s *Bolt) KeepAlive(ctx context.Context, id LeaseID) error {
	_, err := s.submit(ctx, func(t *boltSTM) error {
		v := t.tx.Bucket(bucketLeases).Get(revKey(int64(id)))
		if v == nil {
			return ErrLeaseNotFound
		}
		l, err := decodeLease(v)
		if err != nil {
			return err
		}
		l.expiry = time.Now().Add(l.ttl)
		t.raw = append(t.raw, func(tx *bolt.Tx) error {
			return tx.Bucket(bucketLeases).Put(revKey(int64(id)), l.encode())
		})
		return nil
	})
	if err != nil {
		return fmt.Errorf("keep lease %d alive: %w", id, err)
	}
	return nil
}

// Revoke implements Store.
func (s *Bolt) Revoke(ctx context.Context, id LeaseID) error {
	if _, err := s.submit(ctx, func(t *boltSTM) error { return t.revoke(id, false) }); err != nil {
		return fmt.Errorf("revoke lease %d: %w", id, err)
	}
	return nil
}

// revoke deletes the lease and its keys. With onlyExpired, a lease that was
// kept alive since it was found expired is left alone.
func (t *boltSTM) revoke(id LeaseID, onlyExpired bool) error {
	v := t.tx.Bucket(bucketLeases).Get(revKey(int64(id)))
	if v == nil {
		return ErrLeaseNotFound
	}
	if onlyExpired {
		l, err := decodeLease(v)
		if err != nil {
			return err
		}
		if time.Now().Before(l.expiry) {
			return nil
		}
	}
	p := revKey(int64(id))
	c := t.tx.Bucket(bucketLeaseKeys).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		t.Del(string(k[len(p):]))
	}
	t.raw = append(t.raw, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLeases).Delete(revKey(int64(id)))
	})
	return nil
}

func (s *Bolt) leaseLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.LeaseCheck)
	defer tick.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-tick.C:
		}
		var expired []LeaseID
		now := time.Now()
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketLeases).Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				l, err := decodeLease(v)
				if err != nil {
					return err
				}
				if now.After(l.expiry) {
					expired = append(expired, LeaseID(u64(k)))
				}
			}
			return nil
		})
		if err != nil {
			s.log.Error("scan leases", "error", err)
			continue
		}
		for _, id := range expired {
			_, err := s.submit(context.Background(), func(t *boltSTM) error { return t.revoke(id, true) })
			if err != nil && !errors.Is(err, ErrLeaseNotFound) && !errors.Is(err, ErrClosed) {
				s.log.Error("expire lease", "lease", id, "error", err)
			}
		}
	}
}

// Check verifies the file: bbolt's page-level consistency check, then that
// every record and change-log entry decodes and that the change log does
// not run past the current revision.
func (s *Bolt) Check() error {
	if s.isClosed() {
		return ErrClosed
	}
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("check %s: %w", s.cfg.Path, err)
		}
		if _, err := listBucket(tx.Bucket(bucketKV), ""); err != nil {
			return fmt.Errorf("check %s: %w", s.cfg.Path, err)
		}
		rev := u64(tx.Bucket(bucketMeta).Get(metaRevision))
		c := tx.Bucket(bucketLog).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			r := u64(k)
			if r > rev {
				return fmt.Errorf("check %s: change log holds revision %d past the current %d", s.cfg.Path, r, rev)
			}
			if _, err := decodeEvents(r, v, "", nil); err != nil {
				return fmt.Errorf("check %s: change log revision %d: %w", s.cfg.Path, r, err)
			}
		}
		return nil
	})
}
