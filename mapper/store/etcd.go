package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// EtcdConfig configures an Etcd store.
type EtcdConfig struct {
	// Endpoints are the etcd members' client URLs. Required.
	Endpoints []string
	// TLS, if set, is used for every connection to the members.
	TLS *tls.Config
	// Prefix is prepended to every key, so that several registries (or
	// other users) can share one etcd cluster. Zero means none: the
	// registry's keys already start with /daoli/.
	Prefix string
	// DialTimeout bounds the first connection. Zero means 5 seconds.
	DialTimeout time.Duration
	// Dial, if set, makes the connections to the members (addr is
	// host:port), for members this process reaches only through it, such
	// as ones in another network namespace.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Logger receives background errors. Nil means discard.
	Logger *slog.Logger
}

// Etcd is a Store on an etcd cluster. Revisions are etcd's own: the
// cluster's revision, which every write anywhere in the cluster advances,
// so a registry that shares its cluster sees gaps between its revisions
// (nothing in daoli relies on consecutive ones). The change log is etcd's
// history of the keys under the prefix: Watch is an etcd watch, Compact
// is etcd's compaction (of the whole cluster, as etcd's always is).
//
// Update is optimistic, and grouped: one committer per store takes every
// Update waiting at the time and runs their functions in turn against a
// local mirror of every key under the prefix (kept by a watch), each
// seeing the writes of those before it, at one revision R no older than
// the cluster's revision when the group started (so a write acknowledged
// through another store is always seen). Their writes are committed in
// one etcd transaction that succeeds only if every key they read from
// the mirror still has the revision it had at R, and no key under a
// prefix they listed was written after R; otherwise the mirror catches
// up and the group runs again. The Updates of a group share its
// revision. Reads cost no round trip; a group costs two: reading the
// cluster's revision, and the commit (with etcd's quorum fsync, which is
// what makes it durable). Under contention that is what keeps
// throughput up: concurrent writers of one mapper never conflict with
// each other, and one quorum fsync serves them all.
//
// Hazards. A key deleted by a lease's expiry is not seen as a conflict by
// an Update that listed its prefix (only Updates write the fence that
// deletions by Updates raise). etcd leases have a granularity of one
// second and a floor of 1.5 election timeouts: Grant rounds up. A group
// becomes one etcd transaction, bounded by the members' --max-txn-ops and
// --max-request-bytes (see docs/ha.md): a group beyond them is committed
// one Update at a time, and an Update beyond them alone fails with an
// error that says so. A transaction function must not call Update on its
// own store (the committer is busy running it).
//
// An Etcd is safe for concurrent use. Its zero value is not usable: call
// OpenEtcd.
type Etcd struct {
	c        *clientv3.Client
	prefix   string
	internal string // the store's own bookkeeping, outside the prefix
	fence    string
	markers  string // prefix of this store's commit markers
	log      *slog.Logger
	seq      atomic.Uint64
	ctx      context.Context // ends at Close
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	reqs     chan *update
	stop     chan struct{} // closed by Close
	exited   chan struct{} // closed when the committer has returned

	mu        sync.RWMutex // guards the mirror; held shared while a transaction function runs
	kv        *btree.BTreeG[KeyValue]
	rev       int64         // the mirror holds every write up to here
	advanced  chan struct{} // closed and replaced when rev grows
	committed int64         // the newest revision this store committed
	closed    bool
	// epoch is the lease commit markers are written with; a new one is
	// granted every markerTTL/3, and each expires on its own, taking its
	// markers with it.
	epoch     clientv3.LeaseID
	epochTime time.Time
}

// markerTTL is how long a commit marker outlives its transaction: the
// time within which a commit whose outcome was lost (the member died
// while answering) is resolved.
const markerTTL = 60 * time.Second

// OpenEtcd connects to the cluster and loads the mirror.
func OpenEtcd(cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("open etcd store: no endpoints")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var dialOpts []grpc.DialOption
	if cfg.Dial != nil {
		dialOpts = append(dialOpts, grpc.WithContextDialer(cfg.Dial))
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		DialOptions: dialOpts,
		// As large as the members' --max-request-bytes that docs/ha.md
		// asks for; gRPC's default would refuse a large group at 2 MiB.
		MaxCallSendMsgSize: 32 << 20,
		MaxCallRecvMsgSize: 256 << 20,
		Logger:             zap.NewNop(),
		// Keep a connection that the network silently dropped from
		// hanging a watch: a dead member is noticed and left.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("open etcd store at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	var id [8]byte
	rand.Read(id[:])
	internal := strings.TrimSuffix(cfg.Prefix, "/") + "\x00"
	s := &Etcd{
		c: c, prefix: cfg.Prefix, internal: internal, fence: internal + "fence",
		markers: internal + "txn/" + hex.EncodeToString(id[:]) + "/", log: log,
		advanced: make(chan struct{}), reqs: make(chan *update, maxGroup), stop: make(chan struct{}), exited: make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	if err := s.load(ctx); err != nil {
		c.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no member answered within %v (are they up, and is the URL's scheme right?): %w", cfg.DialTimeout, err)
		}
		return nil, fmt.Errorf("open etcd store at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(2)
	go s.follow(s.ctx)
	go s.commitLoop()
	return s, nil
}

func lessKV(a, b KeyValue) bool { return a.Key < b.Key }

// load reads every key under the prefix into a fresh mirror.
func (s *Etcd) load(ctx context.Context) error {
	resp, err := s.c.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	t := btree.NewG(32, lessKV)
	for _, kv := range resp.Kvs {
		if k, ok := s.key(kv.Key); ok {
			t.ReplaceOrInsert(fromEtcd(k, kv))
		}
	}
	s.mu.Lock()
	s.kv = t
	s.setRev(resp.Header.Revision)
	s.mu.Unlock()
	return nil
}

// key strips the prefix; false for keys that are not the store's.
func (s *Etcd) key(b []byte) (string, bool) {
	k := string(b)
	if strings.HasPrefix(k, s.internal) || !strings.HasPrefix(k, s.prefix) {
		return "", false
	}
	return k[len(s.prefix):], true
}

func fromEtcd(key string, kv *mvccpb.KeyValue) KeyValue {
	return KeyValue{Key: key, Value: kv.Value, CreateRevision: kv.CreateRevision,
		ModRevision: kv.ModRevision, Version: kv.Version, Lease: LeaseID(kv.Lease)}
}

// mirrorStream puts the mirror's watch on a gRPC stream of its own
// (etcd's client keys streams by a context's metadata): a progress
// request is answered only on the stream it came in on, and only when
// every watch there has caught up, so the mirror must not share its
// stream with the watches the store serves.
func mirrorStream(ctx context.Context) context.Context {
	return clientv3.WithRequireLeader(metadata.AppendToOutgoingContext(ctx, "daoli-watch", "mirror"))
}

// setRev advances the mirror's revision; s.mu is held.
func (s *Etcd) setRev(rev int64) {
	if rev > s.rev {
		s.rev = rev
		close(s.advanced)
		s.advanced = make(chan struct{})
	}
}

// follow keeps the mirror equal to the cluster. etcd's client resumes a
// watch across member failures by itself; a compaction past the mirror's
// revision (a mirror that fell far behind) reloads it.
func (s *Etcd) follow(ctx context.Context) {
	defer s.wg.Done()
	wait := 100 * time.Millisecond // grows while the watch keeps failing (no quorum)
	for ctx.Err() == nil {
		s.mu.RLock()
		from := s.rev + 1
		s.mu.RUnlock()
		wch := s.c.Watch(mirrorStream(ctx), s.prefix, clientv3.WithPrefix(),
			clientv3.WithRev(from), clientv3.WithProgressNotify())
		for resp := range wch {
			if resp.CompactRevision != 0 {
				s.log.Warn("etcd store mirror fell behind compaction; reloading", "compacted", resp.CompactRevision)
				if err := s.load(ctx); err != nil && ctx.Err() == nil {
					s.log.Error("reload etcd store mirror", "error", err)
				}
				break
			}
			if err := resp.Err(); err != nil {
				if wait >= 5*time.Second {
					s.log.Debug("etcd store mirror watch failed again", "error", err)
				} else {
					s.log.Warn("etcd store mirror watch failed; resuming", "error", err, "in", wait)
				}
				break
			}
			wait = 100 * time.Millisecond
			s.mu.Lock()
			for _, ev := range resp.Events {
				k, ok := s.key(ev.Kv.Key)
				if !ok {
					continue
				}
				if ev.Type == clientv3.EventTypeDelete {
					s.kv.Delete(KeyValue{Key: k})
				} else {
					s.kv.ReplaceOrInsert(fromEtcd(k, ev.Kv))
				}
			}
			if n := len(resp.Events); n > 0 {
				s.setRev(resp.Events[n-1].Kv.ModRevision)
			}
			if resp.IsProgressNotify() {
				s.setRev(resp.Header.Revision)
			}
			s.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		sleepCtx(ctx, wait)
		wait = min(2*wait, 5*time.Second)
	}
}

// waitRev waits until the mirror holds revision rev, asking etcd for a
// progress notification when it is idle.
func (s *Etcd) waitRev(ctx context.Context, rev int64) error {
	for {
		s.mu.RLock()
		cur, ch, closed := s.rev, s.advanced, s.closed
		s.mu.RUnlock()
		if closed {
			return ErrClosed
		}
		if cur >= rev {
			return nil
		}
		if err := s.c.RequestProgress(mirrorStream(ctx)); err != nil && ctx.Err() == nil {
			s.log.Debug("request watch progress", "error", err)
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close releases the store. Watch channels are closed.
func (s *Etcd) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.cancel()
	err := s.c.Close()
	s.wg.Wait()
	return err
}

func (s *Etcd) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

// Get reads one key from the cluster (a linearizable read).
func (s *Etcd) Get(ctx context.Context, key string) (KeyValue, bool, int64, error) {
	if s.isClosed() {
		return KeyValue{}, false, 0, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := s.c.Get(ctx, s.prefix+key)
	if err != nil {
		return KeyValue{}, false, 0, fmt.Errorf("get %q: %w", key, s.unreachable(err))
	}
	if len(resp.Kvs) == 0 {
		return KeyValue{}, false, resp.Header.Revision, nil
	}
	return fromEtcd(key, resp.Kvs[0]), true, resp.Header.Revision, nil
}

// List reads every key with the prefix from the cluster at one revision.
func (s *Etcd) List(ctx context.Context, prefix string) ([]KeyValue, int64, error) {
	if s.isClosed() {
		return nil, 0, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := s.c.Get(ctx, s.prefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, s.unreachable(err))
	}
	out := make([]KeyValue, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if k, ok := s.key(kv.Key); ok {
			out = append(out, fromEtcd(k, kv))
		}
	}
	return out, resp.Header.Revision, nil
}

// opTimeout bounds a read of the cluster: without a quorum etcd's
// client retries reads for ever, and a mapper must answer instead.
const opTimeout = 5 * time.Second

// current returns the cluster's revision.
func (s *Etcd) current(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := s.c.Get(ctx, s.fence, clientv3.WithCountOnly())
	if err != nil {
		return 0, s.unreachable(err)
	}
	return resp.Header.Revision, nil
}

// unreachable maps etcd's errors, saying what a timeout means.
func (s *Etcd) unreachable(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no etcd member of %s answered within %v (is a quorum of them up?): %w: %w",
			strings.Join(s.c.Endpoints(), ","), opTimeout, err, ErrUnavailable)
	}
	return etcdErr(err)
}

// Revision returns the cluster's revision and its compaction revision.
// etcd does not report the latter, so it is found by bisection with
// count-only reads: a diagnostic, not for hot paths.
func (s *Etcd) Revision(ctx context.Context) (rev, compacted int64, err error) {
	if s.isClosed() {
		return 0, 0, ErrClosed
	}
	rev, err = s.current(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("revision: %w", err)
	}
	readable := func(r int64) (bool, error) {
		_, err := s.c.Get(ctx, s.fence, clientv3.WithRev(r), clientv3.WithCountOnly(), clientv3.WithSerializable())
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, rpctypes.ErrCompacted):
			return false, nil
		}
		return false, err
	}
	if ok, err := readable(1); err != nil || ok {
		return rev, 0, err
	}
	lo, hi := int64(1), rev // revision lo is compacted, hi readable
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := readable(mid)
		if err != nil {
			return 0, 0, fmt.Errorf("revision: %w", etcdErr(err))
		}
		if ok {
			hi = mid
		} else {
			lo = mid
		}
	}
	return rev, hi, nil
}

// etcdSTM is one transaction function's view: the mirror at one
// revision, under the writes of the functions before it in its group
// (base), under its own writes.
type etcdSTM struct {
	s      *Etcd
	base   map[string]*write // the group's writes so far
	reads  map[string]int64  // key → ModRevision read from the mirror (0: missing)
	lists  []string
	writes map[string]*write
}

// lookup finds key in the writes over the mirror; fromMirror says the
// mirror answered (the read must then be guarded).
func (t *etcdSTM) lookup(key string) (w *write, fromMirror bool) {
	if w, ok := t.writes[key]; ok {
		return w, false
	}
	if w, ok := t.base[key]; ok {
		return w, false
	}
	return nil, true
}

func (t *etcdSTM) Get(key string) ([]byte, bool) {
	if w, fromMirror := t.lookup(key); !fromMirror {
		if w.del {
			return nil, false
		}
		return bytes.Clone(w.value), true
	}
	kv, ok := t.s.kv.Get(KeyValue{Key: key})
	if _, seen := t.reads[key]; !seen {
		t.reads[key] = kv.ModRevision // zero when missing
	}
	if !ok {
		return nil, false
	}
	// A copy: callers may change what they read, and the mirror is shared.
	return bytes.Clone(kv.Value), true
}

func (t *etcdSTM) List(prefix string) []KeyValue {
	t.lists = append(t.lists, prefix)
	var out []KeyValue
	seen := map[string]bool{}
	t.s.kv.AscendGreaterOrEqual(KeyValue{Key: prefix}, func(kv KeyValue) bool {
		if !strings.HasPrefix(kv.Key, prefix) {
			return false
		}
		seen[kv.Key] = true
		if w, fromMirror := t.lookup(kv.Key); !fromMirror {
			if !w.del {
				out = append(out, KeyValue{Key: kv.Key, Value: bytes.Clone(w.value), Lease: w.lease})
			}
			return true
		}
		kv.Value = bytes.Clone(kv.Value)
		out = append(out, kv)
		return true
	})
	added := false
	for _, layer := range []map[string]*write{t.writes, t.base} {
		for k := range layer {
			if seen[k] || !strings.HasPrefix(k, prefix) {
				continue
			}
			seen[k] = true
			if w, _ := t.lookup(k); !w.del {
				out = append(out, KeyValue{Key: k, Value: bytes.Clone(w.value), Lease: w.lease})
				added = true
			}
		}
	}
	if added {
		sortKVs(out)
	}
	return out
}

func (t *etcdSTM) Put(key string, value []byte, lease LeaseID) {
	t.writes[key] = &write{value: bytes.Clone(value), lease: lease}
}

func (t *etcdSTM) Del(key string) {
	t.writes[key] = &write{del: true}
}

// update is one Update waiting for its group's commit.
type update struct {
	ctx  context.Context
	fn   func(STM) error
	rev  int64
	err  error
	done chan struct{}
}

// maxGroup caps how many waiting Updates share one etcd transaction.
const maxGroup = 256

// Update queues fn for the committer, which runs every Update waiting at
// the time, in order, against the mirror (each seeing the writes of
// those before it), and commits them in one etcd transaction guarded by
// what they read (see Etcd): they share its revision. Each transaction
// also writes a marker key of its own, which it requires to be new: when
// a member dies before answering, the marker says whether the commit
// happened, and a retry can never commit the same Updates twice.
func (s *Etcd) Update(ctx context.Context, fn func(STM) error) (int64, error) {
	u := &update{ctx: ctx, fn: fn, done: make(chan struct{})}
	select {
	case s.reqs <- u:
	case <-s.stop:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case <-u.done:
		return u.rev, u.err
	case <-s.exited:
		select {
		case <-u.done: // committed as the store closed
			return u.rev, u.err
		default:
		}
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, fmt.Errorf("update: %w (it may still commit): %w", ctx.Err(), ErrOutcomeUnknown)
	}
}

// commitLoop is the committer: one etcd transaction in flight per store.
func (s *Etcd) commitLoop() {
	defer s.wg.Done()
	defer close(s.exited)
	for {
		var group []*update
		select {
		case u := <-s.reqs:
			group = append(group, u)
		case <-s.stop:
			s.failQueued()
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case u := <-s.reqs:
				group = append(group, u)
			default:
				break more
			}
		}
		s.commit(group)
		for _, u := range group {
			close(u.done)
		}
	}
}

func (s *Etcd) failQueued() {
	for {
		select {
		case u := <-s.reqs:
			u.err = ErrClosed
			close(u.done)
		default:
			return
		}
	}
}

// commit runs a group of Updates and commits them together. A group that
// etcd refuses as too large, or because a lease one of them wrote with is
// gone, is committed one Update at a time.
func (s *Etcd) commit(group []*update) {
	ctx := s.ctx
	fail := func(err error) {
		for _, u := range group {
			if u.err == nil {
				u.err = err
			}
		}
	}
	newMarker := func() string { return s.markers + strconv.FormatUint(s.seq.Add(1), 10) }
	marker := newMarker()
	// Start from the cluster's revision now, not the mirror's: a write
	// acknowledged by another mapper a moment ago must be seen
	// (linearizable, at the cost of one read per group).
	need, err := s.current(ctx)
	if err != nil {
		fail(fmt.Errorf("read the cluster's revision: %w: %w", err, ErrUnavailable))
		return
	}
	conflicts, lost, epochRenewed := 0, 0, false
	for {
		s.mu.RLock()
		need = max(need, s.committed) // read this store's own writes
		s.mu.RUnlock()
		if err := s.waitRev(ctx, need); err != nil {
			fail(fmt.Errorf("catch up with the cluster: %w: %w", err, ErrUnavailable))
			return
		}
		s.mu.RLock()
		rev := s.rev
		base := map[string]*write{}
		reads := map[string]int64{}
		var lists []string
		var ok []*update
		for _, u := range group {
			if err := u.ctx.Err(); err != nil {
				u.err = err // given up on before it ran
				continue
			}
			t := &etcdSTM{s: s, base: base, reads: map[string]int64{}, writes: map[string]*write{}}
			u.err = callSTM(u.fn, t)
			if u.err != nil {
				continue // what it saw was the state at rev: a serializable answer
			}
			for k, w := range t.writes {
				base[k] = w
			}
			for k, m := range t.reads {
				if _, seen := reads[k]; !seen {
					reads[k] = m
				}
			}
			lists = append(lists, t.lists...)
			ok = append(ok, u)
		}
		cmps, ops := s.txn(rev, base, reads, lists)
		s.mu.RUnlock()
		if len(ops) == 0 {
			for _, u := range ok {
				u.rev = rev
			}
			return
		}
		epoch, err := s.epochLease(ctx)
		if err != nil {
			fail(fmt.Errorf("commit: %w: %w", err, ErrUnavailable))
			return
		}
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(marker), "=", 0))
		ops = append(ops, clientv3.OpPut(marker, "", clientv3.WithLease(epoch)))
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(marker)).Commit()
		committed := int64(0)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound) && !epochRenewed:
			// Perhaps the markers' own lease (the process stalled past its
			// TTL): a fresh one, and once more.
			epochRenewed = true
			s.mu.Lock()
			s.epoch = 0
			s.mu.Unlock()
			continue
		case err != nil && len(ok) > 1 && splittable(err):
			// Too much for one transaction together, or one Update's
			// lease is gone: one by one, so that each gets its own answer.
			for _, u := range ok {
				u.err = nil
				s.commit([]*update{u})
			}
			return
		case err != nil && !definite(err) && ctx.Err() == nil:
			// Sent, and no answer: find out, and make sure that a commit
			// still in flight can never land later.
			var done bool
			done, committed, err = s.resolve(ctx, marker)
			if err == nil && !done {
				lost++
				if lost >= 5 {
					err = fmt.Errorf("commit: %d attempts in a row got no answer: %w", lost, ErrOutcomeUnknown)
					break
				}
				marker = newMarker() // the old one is void now
				sleepCtx(ctx, time.Duration(lost)*100*time.Millisecond)
				continue
			}
		case err == nil && resp.Succeeded:
			committed = resp.Header.Revision
		case err == nil:
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && string(kvs[0].Value) != markerVoid {
				committed = kvs[0].ModRevision // cannot happen: the marker is new or void
			} else {
				// Something a function read changed after rev: run the
				// group again on a mirror that has seen the change, after
				// a pause that grows when conflicts persist.
				need = resp.Header.Revision
				conflicts++
				if conflicts > 3 {
					sleepCtx(ctx, time.Duration(min(conflicts, 50))*time.Millisecond)
				}
				continue
			}
		}
		if err != nil {
			err = s.txnErr(err, len(cmps), len(ops))
			for _, u := range ok {
				u.err = err
			}
			return
		}
		s.mu.Lock()
		s.committed = max(s.committed, committed)
		s.mu.Unlock()
		for _, u := range ok {
			u.rev = committed
		}
		return
	}
}

// markerVoid is the value resolve gives a marker whose transaction did
// not land: the transaction's compare on the marker then never holds.
const markerVoid = "void"

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// splittable reports whether a group's commit failed for a reason that
// committing its Updates one by one may not share.
func splittable(err error) bool {
	return errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) ||
		errors.Is(err, rpctypes.ErrLeaseNotFound) || status.Code(err) == codes.ResourceExhausted
}

// txn turns a group's writes, reads and lists at revision rev into an etcd
// transaction: compares guarding every read and list, and the writes.
// Deletions of keys that the mirror does not hold are dropped, as writes
// of nothing; s.mu is held.
func (s *Etcd) txn(rev int64, writes map[string]*write, reads map[string]int64, lists []string) ([]clientv3.Cmp, []clientv3.Op) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	deletes := false
	for k, w := range writes {
		key := s.prefix + k
		switch {
		case !w.del && w.lease != 0:
			ops = append(ops, clientv3.OpPut(key, string(w.value), clientv3.WithLease(clientv3.LeaseID(w.lease))))
		case !w.del:
			ops = append(ops, clientv3.OpPut(key, string(w.value)))
		default:
			kv, ok := s.kv.Get(KeyValue{Key: k})
			if !ok {
				continue
			}
			if _, read := reads[k]; !read {
				// A blind delete still depends on the key being there:
				// deleting what another transaction just deleted would
				// be a write of nothing with a revision of its own.
				reads[k] = kv.ModRevision
			}
			ops = append(ops, clientv3.OpDelete(key))
			deletes = true
		}
	}
	if len(ops) == 0 {
		return nil, nil
	}
	for k, mod := range reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.prefix+k), "=", mod))
	}
	for _, p := range slices.Compact(slices.Sorted(slices.Values(lists))) {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.prefix+p), "<", rev+1).WithPrefix())
	}
	if len(lists) > 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.fence), "<", rev+1))
	}
	if deletes {
		ops = append(ops, clientv3.OpPut(s.fence, ""))
	}
	return cmps, ops
}

// definite reports whether a failed commit certainly did not happen.
func definite(err error) bool {
	switch status.Code(err) {
	case codes.ResourceExhausted, codes.InvalidArgument:
		return true // refused by the client before it was sent
	}
	return errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, rpctypes.ErrTooManyOps) ||
		errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrKeyNotFound) ||
		errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrAuthFailed)
}

// resolve finds out whether the transaction that wrote marker committed,
// and makes sure that it never will if it has not: it writes the marker
// itself, as void, when it is not there, so the transaction's compare on
// it can no longer hold however late the transaction reaches the
// leader. It asks until a member answers, for at most markerTTL/3 (a
// marker outlives its transaction by more).
func (s *Etcd) resolve(ctx context.Context, marker string) (committed bool, rev int64, err error) {
	deadline := time.Now().Add(markerTTL / 3)
	wait := 50 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var resp *clientv3.TxnResponse
		epoch, lerr := s.epochLease(rctx)
		err := lerr
		if lerr == nil {
			resp, err = s.c.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(marker), "=", 0)).
				Then(clientv3.OpPut(marker, markerVoid, clientv3.WithLease(epoch))).
				Else(clientv3.OpGet(marker)).Commit()
		}
		cancel()
		if err == nil {
			if resp.Succeeded {
				return false, 0, nil // voided: it never landed, and now never will
			}
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				if string(kvs[0].Value) == markerVoid {
					return false, 0, nil // voided by an earlier attempt whose answer was lost
				}
				return true, kvs[0].ModRevision, nil
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false, 0, fmt.Errorf("the outcome of a commit is unknown (no etcd member answered within %v: %v): %w", markerTTL/3, err, ErrOutcomeUnknown)
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.mu.Lock()
			s.epoch = 0 // expired: grant another
			s.mu.Unlock()
		}
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

// epochLease returns the lease to write commit markers with, granting a
// new one every markerTTL/3.
func (s *Etcd) epochLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.mu.RLock()
	l, at := s.epoch, s.epochTime
	s.mu.RUnlock()
	if l != 0 && time.Since(at) < markerTTL/3 {
		return l, nil
	}
	resp, err := s.c.Grant(ctx, int64(markerTTL/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant the lease of commit markers: %w", etcdErr(err))
	}
	s.mu.Lock()
	s.epoch, s.epochTime = clientv3.LeaseID(resp.ID), time.Now()
	s.mu.Unlock()
	return clientv3.LeaseID(resp.ID), nil
}

func sortKVs(kvs []KeyValue) {
	slices.SortFunc(kvs, func(a, b KeyValue) int { return strings.Compare(a.Key, b.Key) })
}

func callSTM(fn func(STM) error, t STM) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("transaction panicked: %v", p)
		}
	}()
	return fn(t)
}

func (s *Etcd) txnErr(err error, cmps, ops int) error {
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("commit: %w", ErrLeaseNotFound)
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("commit a transaction of %d reads and %d writes: etcd refused it (raise the members' --max-txn-ops): %w", cmps, ops, err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge), status.Code(err) == codes.ResourceExhausted:
		return fmt.Errorf("commit a transaction of %d writes: etcd refused it as too large (raise the members' --max-request-bytes): %w", ops, err)
	}
	return fmt.Errorf("commit: %w", etcdErr(err))
}

// etcdErr maps etcd's errors to the store's.
func etcdErr(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ErrLeaseNotFound
	case errors.Is(err, rpctypes.ErrCompacted):
		return ErrCompacted
	case errors.Is(err, rpctypes.ErrFutureRev):
		return ErrFutureRevision
	}
	return err
}

// Watch follows keys with the prefix from revision rev with an etcd watch.
// It reads the cluster's revision before it returns (linearizably: the
// member that serves the watch may lag behind the one that acknowledged
// a write), so that rev zero means the revision after the last write
// acknowledged before the call.
func (s *Etcd) Watch(ctx context.Context, prefix string, rev int64) <-chan WatchResponse {
	out := make(chan WatchResponse, 16)
	var cur int64
	var err error
	if s.isClosed() {
		err = ErrClosed
	} else if cur, err = s.current(ctx); err != nil {
		err = fmt.Errorf("watch: %w", err)
	}
	go s.watch(ctx, prefix, rev, cur, err, out)
	return out
}

func (s *Etcd) watch(ctx context.Context, prefix string, rev, cur int64, err error, out chan<- WatchResponse) {
	defer close(out)
	send := func(r WatchResponse) bool {
		select {
		case out <- r:
			return r.Err == nil
		case <-ctx.Done():
			return false
		}
	}
	if err != nil {
		send(WatchResponse{Err: err})
		return
	}
	if rev == 0 {
		rev = cur + 1
	}
	if rev > cur+1 {
		send(WatchResponse{Err: fmt.Errorf("watch from revision %d (current %d): %w", rev, cur, ErrFutureRevision)})
		return
	}
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(rev)}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range s.c.Watch(clientv3.WithRequireLeader(wctx), s.prefix+prefix, opts...) {
		if resp.CompactRevision != 0 {
			send(WatchResponse{Err: fmt.Errorf("watch from revision %d: %w", rev, ErrCompacted), CompactRevision: resp.CompactRevision})
			return
		}
		if err := resp.Err(); err != nil {
			send(WatchResponse{Err: fmt.Errorf("watch: %w", etcdErr(err))})
			return
		}
		var r WatchResponse
		for _, ev := range resp.Events {
			k, ok := s.key(ev.Kv.Key)
			if !ok {
				continue
			}
			e := Event{Type: EventPut, KV: fromEtcd(k, ev.Kv)}
			if ev.Type == clientv3.EventTypeDelete {
				e.Type = EventDelete
				if ev.PrevKv != nil {
					e.PrevValue = ev.PrevKv.Value
				}
			}
			r.Events = append(r.Events, e)
		}
		if len(r.Events) > 0 && !send(r) {
			return
		}
	}
	if ctx.Err() == nil {
		err := ErrClosed
		if !s.isClosed() {
			err = errors.New("watch: etcd ended the stream")
		}
		send(WatchResponse{Err: err})
	}
}

// Compact compacts the cluster's history before rev.
func (s *Etcd) Compact(ctx context.Context, rev int64) error {
	if s.isClosed() {
		return ErrClosed
	}
	if _, err := s.c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("compact to revision %d: %w", rev, etcdErr(err))
	}
	return nil
}

// Grant creates an etcd lease; ttl is rounded up to whole seconds.
func (s *Etcd) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("grant lease: ttl %v is not positive", ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := s.c.Grant(ctx, secs)
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", etcdErr(err))
	}
	return LeaseID(resp.ID), nil
}

// KeepAlive renews a lease once.
func (s *Etcd) KeepAlive(ctx context.Context, id LeaseID) error {
	if _, err := s.c.KeepAliveOnce(ctx, clientv3.LeaseID(id)); err != nil {
		return fmt.Errorf("keep lease %d alive: %w", id, etcdErr(err))
	}
	return nil
}

// Revoke ends a lease; etcd deletes its keys in one revision.
func (s *Etcd) Revoke(ctx context.Context, id LeaseID) error {
	if _, err := s.c.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		return fmt.Errorf("revoke lease %d: %w", id, etcdErr(err))
	}
	return nil
}
