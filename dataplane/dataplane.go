package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultBPFFSPath is where a Dataplane pins its maps and links when
// Config.BPFFSPath is empty.
const DefaultBPFFSPath = "/sys/fs/bpf/daoli"

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrNotPermitted is returned by New and the Attach methods when the
	// process may not load or attach eBPF programs (it needs root, or
	// CAP_BPF and CAP_NET_ADMIN).
	ErrNotPermitted = errors.New("not permitted")
	// ErrNoBPFFS is returned by New when Config.BPFFSPath is not on a
	// mounted bpf filesystem.
	ErrNoBPFFS = errors.New("no bpf filesystem")
	// ErrInvalidState is returned by Apply when the desired State is
	// inconsistent; the wrapping message names the field.
	ErrInvalidState = errors.New("invalid state")
)

// Config configures a Dataplane. The zero value is usable.
type Config struct {
	// BPFFSPath is the directory on a bpf filesystem that holds this
	// server's pinned maps and links. Zero means DefaultBPFFSPath. Two
	// Dataplanes (two servers in one testbed) need two paths.
	BPFFSPath string
	// Logger receives lifecycle events, never per-packet ones. Nil means
	// discard.
	Logger *slog.Logger
	// ForceTC attaches the programs as tc filters (a clsact qdisc and a
	// direct-action bpf filter) even where tcx works. False means tcx,
	// falling back to tc filters when the kernel lacks tcx (before Linux
	// 6.6).
	ForceTC bool
	// MaxEndpoints is how many endpoints of the whole cluster the maps
	// hold: every server holds every endpoint. The services map holds
	// four times as many entries, the wire and identity block maps as
	// many. Zero means DefaultMaxEndpoints. Maps pinned with other sizes
	// cannot be adopted: remove them (BPFFSPath) to resize.
	MaxEndpoints int
	// MaxFlows is how many flows whose client runs on this server
	// conntrack holds (two entries each; a flow from outside to a
	// published port counts on the server dialled); the oldest are
	// evicted beyond it. The ingress map holds as many entries as
	// conntrack, for ingress flows whose backend runs here. Zero means
	// DefaultMaxFlows.
	MaxFlows int
	// MaxFlowsPerEndpoint is how many of those flows one local endpoint
	// may hold, so that no container can evict the others' flows by
	// opening its own: beyond it, a new flow is refused (DropFlowLimit;
	// a TCP client gets a reset, a UDP one a port unreachable). The
	// programs count new flows; AccountFlows counts what conntrack holds.
	// Zero means MaxFlows/8; a negative value means no limit.
	MaxFlowsPerEndpoint int
}

// Defaults of Config.
const (
	DefaultMaxEndpoints = 16384
	DefaultMaxFlows     = 32768
)

// Dataplane is one server's loaded programs and pinned maps. Create it with
// New; its methods are safe for concurrent use.
type Dataplane struct {
	path string
	log  *slog.Logger

	mu     sync.Mutex
	flowMu sync.Mutex // AccountFlows
	objs   daoliObjects
	// useTC is set by Config.ForceTC or when tcx turned out missing.
	useTC bool
	// tc holds the interfaces this process attached tc filters to, with
	// the network namespace each lives in.
	tc map[int]netns.NsHandle
	// unbalanced counts the balance services the last Apply could give
	// no Maglev table.
	unbalanced   atomic.Int64
	maxEndpoints int
	flowLimit    uint32 // Config.MaxFlowsPerEndpoint; 0: none
	// writes counts the map entries Apply wrote or deleted.
	writes atomic.Uint64
	// mirror holds, per map Apply owns, a map[K]V of what the last Apply
	// wrote to it; nil (or a map missing) means read the map.
	mirror map[*ebpf.Map]any
}

// Writes returns how many map entries Apply has written or deleted since
// the Dataplane was opened: zero growth across an Apply means it found
// everything already right.
func (d *Dataplane) Writes() uint64 { return d.writes.Load() }

// MaxEndpoints returns how many endpoints the maps hold (Config).
func (d *Dataplane) MaxEndpoints() int {
	if d.maxEndpoints == 0 {
		return int(d.objs.Endpoints.MaxEntries()) // a Dataplane built around loaded objects
	}
	return d.maxEndpoints
}

// Unbalanced returns how many balance services the last Apply could give
// no Maglev table (every table taken): their new flows all go to one
// backend until a table frees. It should be 0.
func (d *Dataplane) Unbalanced() int { return int(d.unbalanced.Load()) }

// New loads the programs and maps, adopting maps already pinned under
// cfg.BPFFSPath so that a restarted process keeps every flow. It creates the
// directory when needed.
func New(cfg Config) (*Dataplane, error) {
	d := &Dataplane{path: cfg.BPFFSPath, log: cfg.Logger, useTC: cfg.ForceTC, tc: map[int]netns.NsHandle{}}
	if d.path == "" {
		d.path = DefaultBPFFSPath
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if err := checkBPFFS(d.path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(d.path, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", permissionHint(err))
	}
	spec, err := loadDaoli()
	if err != nil {
		return nil, fmt.Errorf("load dataplane spec: %w", err)
	}
	if cfg.MaxEndpoints == 0 {
		cfg.MaxEndpoints = DefaultMaxEndpoints
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxEndpoints < 1 || cfg.MaxEndpoints > 1<<22 || cfg.MaxFlows < 1 || cfg.MaxFlows > 1<<24 {
		return nil, fmt.Errorf("new dataplane: %d endpoints and %d flows: want 1 to %d endpoints and 1 to %d flows", cfg.MaxEndpoints, cfg.MaxFlows, 1<<22, 1<<24)
	}
	d.maxEndpoints = cfg.MaxEndpoints
	switch {
	case cfg.MaxFlowsPerEndpoint == 0:
		d.flowLimit = uint32(max(cfg.MaxFlows/8, 1))
	case cfg.MaxFlowsPerEndpoint > 0:
		d.flowLimit = uint32(min(cfg.MaxFlowsPerEndpoint, cfg.MaxFlows))
	}
	for name, n := range map[string]int{
		"endpoints": cfg.MaxEndpoints, "wire_blocks": cfg.MaxEndpoints, "ident_blocks": cfg.MaxEndpoints,
		"flow_quota": cfg.MaxEndpoints, "flow_counts": cfg.MaxEndpoints,
		"services": 4 * cfg.MaxEndpoints, "conntrack": 2 * cfg.MaxFlows, "offset_cursor": cfg.MaxFlows,
		"ingress": 2 * cfg.MaxFlows,
	} {
		spec.Maps[name].MaxEntries = uint32(n)
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.path}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		var verr *ebpf.VerifierError
		switch {
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("load dataplane: %w (maps pinned under %s have an old layout; remove them to reset)", err, d.path)
		case errors.As(err, &verr):
			return nil, fmt.Errorf("load dataplane: %+v", verr)
		}
		return nil, fmt.Errorf("load dataplane: %w", permissionHint(err))
	}
	if err := d.objs.FlowLimit.Update(uint32(0), d.flowLimit, ebpf.UpdateAny); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load dataplane: set the flow limit: %w", err)
	}
	d.log.Info("dataplane loaded", "path", d.path, "flows_per_endpoint", d.flowLimit)
	return d, nil
}

// Close releases the process's handles. Pinned maps and links stay, so
// traffic keeps flowing and the next New adopts them.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ifindex, ns := range d.tc {
		ns.Close()
		delete(d.tc, ifindex)
	}
	return d.objs.Close()
}

// Remove detaches every link pinned by this Dataplane, unpins its maps and
// removes its directory: traffic of its endpoints stops. Close must still
// be called.
func (d *Dataplane) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for ifindex := range d.tc {
		if err := d.detachTC(ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	links, _ := filepath.Glob(filepath.Join(d.path, "links", "*"))
	for _, pin := range links {
		if err := unpinLink(pin); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range d.maps() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map: %w", err))
		}
	}
	if err := os.RemoveAll(d.path); err != nil {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

func (d *Dataplane) maps() []*ebpf.Map {
	m := &d.objs.daoliMaps
	return []*ebpf.Map{m.Conntrack, m.Drops, m.Egress, m.EndpointByIfindex, m.EndpointStats,
		m.Endpoints, m.IdentBlocks, m.Maglev, m.OffsetCursor, m.Exports, m.FlowCounts, m.FlowLimit, m.FlowQuota, m.Outside, m.Policies, m.Services, m.Settings, m.WireBlocks}
}

// checkBPFFS reports whether path (or its closest existing parent) lies on a
// bpf filesystem.
func checkBPFFS(path string) error {
	dir := path
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return fmt.Errorf("check %s: %w (mount one with: mount -t bpf bpf /sys/fs/bpf)", path, ErrNoBPFFS)
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("check %s: %w", path, err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("check %s: %w", path, ErrNoBPFFS)
		}
		dir = parent
	}
}

func permissionHint(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: %w (run as root, or with CAP_BPF and CAP_NET_ADMIN)", ErrNotPermitted, err)
	}
	return err
}
