package harness

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/daolinet/daoli/dataplane"
	"github.com/daolinet/daoli/internal/testbed"
	"golang.org/x/sys/unix"
)

// endpointMaps are the maps whose entries grow with the number of
// endpoints in the cluster (every server holds every endpoint).
var endpointMaps = []string{"endpoints", "wire_blocks", "ident_blocks", "services"}

// memory loads a dataplane (not attached to anything) into a private
// bpffs, applies N synthetic endpoints, and reads every map's memory.
func (r *run) memory() {
	bpffs := testbed.BPFFS(r.t)
	mem := &Memory{Shape: "one IP and one served port (80/tcp) per endpoint, failover mode, 250 endpoints per server, all remote"}
	var perEndpoint map[string]float64 // entries per endpoint, by map
	for _, n := range r.cfg.MemorySizes {
		r.check()
		s := r.applySize(bpffs, n)
		mem.Sizes = append(mem.Sizes, s)
		if s.Error == "" && perEndpoint == nil {
			perEndpoint = map[string]float64{}
			for _, m := range s.Maps {
				if slices.Contains(endpointMaps, m.Name) {
					perEndpoint[m.Name] = float64(m.Entries) / float64(n)
				}
			}
		}
		status := "applied"
		if s.Error != "" {
			status = "does not fit: " + s.Error
		}
		r.printf("map memory, %d endpoints: %s in %.2f s; maps hold %.1f MiB (memlock)", n, status, s.ApplySeconds, float64(s.Memlock)/(1<<20))
	}
	if perEndpoint == nil {
		r.res.Errors = append(r.res.Errors, "memory: no size applied")
		r.res.Memory = mem
		return
	}
	mem.EntriesPerEndpoint = perEndpoint
	// What fits as built: the first endpoint map to fill up.
	s0 := mem.Sizes[0]
	mem.Fits = -1
	for _, m := range s0.Maps {
		if e := perEndpoint[m.Name]; e > 0 {
			fit := int(float64(m.MaxEntries) / e)
			if mem.Fits < 0 || fit < mem.Fits {
				mem.Fits, mem.FitsLimit = fit, fmt.Sprintf("%s (max_entries %d, %.0f per endpoint)", m.Name, m.MaxEntries, e)
			}
		}
	}
	if mem.Fits > 0 && !slices.Contains(r.cfg.MemorySizes, mem.Fits) {
		r.check()
		s := r.applySize(bpffs, mem.Fits)
		mem.FitsVerified = s.Error == ""
		if s.Error != "" {
			r.res.note(fmt.Sprintf("memory: %d endpoints should fit but did not: %s", mem.Fits, s.Error))
		}
		r.printf("the largest cluster that fits as built: %d endpoints, limited by %s (applied: %t)", mem.Fits, mem.FitsLimit, mem.FitsVerified)
	}
	mem.TotalMemlock = s0.Memlock
	for _, m := range s0.Maps {
		if m.Name == "conntrack" {
			mem.ConntrackMaxEntries = m.MaxEntries
			mem.BytesPerFlow = 2 * float64(m.Memlock) / float64(m.MaxEntries) // CT_OUT and CT_REV
		}
		if e := perEndpoint[m.Name]; e > 0 {
			mem.BytesPerEndpointBuilt += e * float64(m.Memlock) / float64(m.MaxEntries)
		}
	}
	r.projection(mem, s0)
	r.balanceServices(bpffs, mem)
	r.res.Memory = mem
}

// balanceServices checks that services in balance mode (the mapper's
// default) with one backend each take no Maglev table: more of them than
// there are tables must apply.
func (r *run) balanceServices(bpffs string, mem *Memory) {
	r.check()
	try := func(n int) error {
		dir := filepath.Join(bpffs, fmt.Sprintf("balance-%d", n))
		dp, err := dataplane.New(dataplane.Config{BPFFSPath: dir})
		if err != nil {
			r.t.Fatalf("memory: load the dataplane: %v", err)
		}
		defer func() {
			dp.Remove()
			dp.Close()
		}()
		s := syntheticState(n)
		for i := range s.Endpoints {
			s.Endpoints[i].Mode = dataplane.Balance
		}
		return dp.Apply(s)
	}
	const tables = 1024 // dataplane's Maglev tables
	n := 2*tables + 1
	if err := try(n); err != nil {
		mem.BalanceServices, mem.BalanceError = 0, fmt.Sprintf("%d single-backend balance services: %v", n, err)
	} else {
		mem.BalanceServices = n
	}
	r.printf("single-backend balance services applied: %d (they take no Maglev table) %s", mem.BalanceServices, mem.BalanceError)
}

// applySize applies n endpoints to a fresh dataplane and measures it.
func (r *run) applySize(bpffs string, n int) MemorySize {
	dir := filepath.Join(bpffs, fmt.Sprintf("mem-%d", n))
	s := MemorySize{Endpoints: n}
	// Maps sized for the cluster, as its agents would be configured
	// (--max-endpoints); the defaults hold 16384.
	dp, err := dataplane.New(dataplane.Config{BPFFSPath: dir, MaxEndpoints: max(n, dataplane.DefaultMaxEndpoints)})
	if err != nil {
		r.t.Fatalf("memory: load the dataplane: %v", err)
	}
	defer func() {
		dp.Remove()
		dp.Close()
	}()
	t0 := time.Now()
	if err := dp.Apply(syntheticState(n)); err != nil {
		s.Error = err.Error()
	}
	s.ApplySeconds = time.Since(t0).Seconds()
	pins, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, pin := range pins {
		if st, err := os.Stat(pin); err != nil || st.IsDir() {
			continue
		}
		fd, err := openPinned(pin)
		if err != nil {
			r.res.note(fmt.Sprintf("memory: %v", err))
			continue
		}
		info, err := mapInfo(fd)
		if err == nil {
			mi := MapMemory{Name: filepath.Base(pin), Type: info.typeName(), MaxEntries: info.MaxEntries, Memlock: info.Memlock, shape: info}
			mi.Entries, err = mapEntries(fd, info)
			s.Memlock += info.Memlock
			s.Maps = append(s.Maps, mi)
		}
		if err != nil {
			r.res.note(fmt.Sprintf("memory: %s: %v", pin, err))
		}
		unix.Close(fd)
	}
	return s
}

// syntheticState is n endpoints of the Memory shape.
func syntheticState(n int) dataplane.State {
	s := dataplane.State{BlockSize: 256}
	const perServer = 250 // of the 255 wire blocks of a locator
	servers := (n + perServer - 1) / perServer
	for k := range servers {
		s.Servers = append(s.Servers, dataplane.Server{IP: netip.AddrFrom4([4]byte{198, 18 + byte(k>>8), byte(k), 1}),
			MAC: net.HardwareAddr{0x02, 0xbe, 0, 0, byte(k >> 8), byte(k)}})
	}
	for i := range n {
		v := i + 2
		s.Endpoints = append(s.Endpoints, dataplane.Endpoint{
			ID:           uint32(i + 1),
			Network:      1,
			IP:           netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(v)}),
			MAC:          net.HardwareAddr{0x02, 0x42, 0, byte(v >> 16), byte(v >> 8), byte(v)},
			Server:       s.Servers[i/perServer].IP,
			WireBase:     uint16(256 * (1 + i%perServer)),
			IdentityBase: 32768,
			Ports:        []dataplane.Port{{Number: 80, Proto: dataplane.TCP}},
		})
	}
	return s
}

// projection creates empty copies of the endpoint maps and of conntrack,
// resized for each size, and reads their memory: what each endpoint and
// each flow would cost once the limits are raised.
func (r *run) projection(mem *Memory, built MemorySize) {
	shape := map[string]bpfMap{}
	for _, m := range built.Maps {
		shape[m.Name] = m.shape
	}
	sizes := slices.Clone(r.cfg.MemorySizes)
	if len(sizes) < 2 {
		sizes = append(sizes, sizes[0]*10)
	}
	for _, n := range sizes {
		var total uint64
		for _, name := range endpointMaps {
			ml, err := mapMemlock(shape[name], uint32(max(1, float64(n)*mem.EntriesPerEndpoint[name])))
			if err != nil {
				r.res.note(fmt.Sprintf("memory projection: %s: %v", name, err))
				return
			}
			total += ml
		}
		mem.Resized = append(mem.Resized, Resized{Endpoints: n, Memlock: total})
	}
	first, last := mem.Resized[0], mem.Resized[len(mem.Resized)-1]
	mem.BytesPerEndpoint = float64(last.Memlock-first.Memlock) / float64(last.Endpoints-first.Endpoints)
	a, err := mapMemlock(shape["conntrack"], 65536)
	if err == nil {
		var b uint64
		b, err = mapMemlock(shape["conntrack"], 262144)
		if err == nil {
			mem.BytesPerFlowResized = 2 * float64(b-a) / float64(262144-65536)
		}
	}
	if err != nil {
		r.res.note(fmt.Sprintf("memory projection: conntrack: %v", err))
	}
	r.printf("map memory per endpoint: %.0f B as built (share of preallocated capacity), %.0f B measured between resized maps; per flow %.0f B (2 conntrack entries)",
		mem.BytesPerEndpointBuilt, mem.BytesPerEndpoint, mem.BytesPerFlow)
}
