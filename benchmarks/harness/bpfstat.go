package harness

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The map memory figures need what the kernel says of each map: its
// memlock and its entries. The dataplane exports no such statistics, and
// only the dataplane may use the eBPF library (internal/layering), so this
// file reads them with the three bpf(2) commands it needs and the map's
// /proc fdinfo: no program is loaded and no map content is written.

// bpfMap is what the kernel reports of one map.
type bpfMap struct {
	Type, KeySize, ValueSize, MaxEntries, Flags uint32
	Memlock                                     uint64
}

var mapTypes = map[uint32]string{1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash", 10: "lru_percpu_hash"}

func (m bpfMap) typeName() string {
	if n, ok := mapTypes[m.Type]; ok {
		return n
	}
	return fmt.Sprintf("type %d", m.Type)
}

func sysBPF(cmd int, attr unsafe.Pointer, size uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(attr), size)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// openPinned opens the map pinned at path (BPF_OBJ_GET).
func openPinned(path string) (int, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return 0, err
	}
	attr := struct {
		pathname uint64
		fd       uint32
		flags    uint32
	}{pathname: uint64(uintptr(unsafe.Pointer(p)))}
	fd, err := sysBPF(unix.BPF_OBJ_GET, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	runtime.KeepAlive(p)
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	return fd, nil
}

// mapInfo reads the map behind fd from /proc/self/fdinfo.
func mapInfo(fd int) (bpfMap, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return bpfMap{}, err
	}
	defer f.Close()
	var m bpfMap
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 0, 64)
		if err != nil {
			continue
		}
		switch k {
		case "map_type":
			m.Type = uint32(n)
		case "key_size":
			m.KeySize = uint32(n)
		case "value_size":
			m.ValueSize = uint32(n)
		case "max_entries":
			m.MaxEntries = uint32(n)
		case "map_flags":
			m.Flags = uint32(n)
		case "memlock":
			m.Memlock = n
		}
	}
	if m.MaxEntries == 0 {
		return m, fmt.Errorf("fd %d: no map in its fdinfo", fd)
	}
	return m, sc.Err()
}

// mapEntries counts the keys of the map behind fd (BPF_MAP_GET_NEXT_KEY).
// Arrays have all their entries.
func mapEntries(fd int, m bpfMap) (int, error) {
	if m.Type == 2 || m.Type == 6 {
		return int(m.MaxEntries), nil
	}
	key := make([]byte, m.KeySize)
	next := make([]byte, m.KeySize)
	var n int
	for first := true; ; first = false {
		attr := struct {
			fd   uint32
			_    uint32
			key  uint64
			next uint64
		}{fd: uint32(fd), next: uint64(uintptr(unsafe.Pointer(&next[0])))}
		if !first {
			attr.key = uint64(uintptr(unsafe.Pointer(&key[0])))
		}
		_, err := sysBPF(unix.BPF_MAP_GET_NEXT_KEY, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
		runtime.KeepAlive(key)
		runtime.KeepAlive(next)
		if err == unix.ENOENT {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("next key: %w", err)
		}
		n++
		copy(key, next)
	}
}

// mapMemlock creates an empty map shaped like m but with room for
// entries (BPF_MAP_CREATE), reads its memlock and closes it.
func mapMemlock(m bpfMap, entries uint32) (uint64, error) {
	attr := struct {
		typ, key, value, max, flags uint32
	}{m.Type, m.KeySize, m.ValueSize, entries, m.Flags}
	fd, err := sysBPF(unix.BPF_MAP_CREATE, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return 0, fmt.Errorf("create a %s map of %d entries: %w", m.typeName(), entries, err)
	}
	defer unix.Close(fd)
	info, err := mapInfo(fd)
	if err != nil {
		return 0, err
	}
	if info.Memlock == 0 {
		return 0, fmt.Errorf("the kernel reports no memlock for a %s map", m.typeName())
	}
	return info.Memlock, nil
}

// fdinfo reads the numeric fields of fd's /proc/self/fdinfo.
func fdinfo(fd int) (map[string]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 0, 64); ok && err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// linkProg returns the ID of the program behind the link pinned at path.
func linkProg(path string) (uint32, error) {
	fd, err := openPinned(path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	info, err := fdinfo(fd)
	if err != nil {
		return 0, err
	}
	id, ok := info["prog_id"]
	if !ok {
		return 0, fmt.Errorf("%s: no prog_id in its fdinfo", path)
	}
	return uint32(id), nil
}

// progRuntime returns a program's run count and total run time in ns, as
// counted while run-time statistics are enabled.
func progRuntime(id uint32) (runs, ns uint64, err error) {
	attr := struct{ id, next, flags uint32 }{id: id}
	fd, err := sysBPF(unix.BPF_PROG_GET_FD_BY_ID, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return 0, 0, fmt.Errorf("open program %d: %w", id, err)
	}
	defer unix.Close(fd)
	info, err := fdinfo(fd)
	if err != nil {
		return 0, 0, err
	}
	return info["run_cnt"], info["run_time_ns"], nil
}

// enableStats turns on the kernel's run-time statistics of every bpf
// program (BPF_ENABLE_STATS) until the returned function is called. They
// cost every program a few tens of ns per run, so the harness turns them
// on only for its own short measurement of them.
func enableStats() (func(), error) {
	attr := struct{ typ uint32 }{0} // BPF_STATS_RUN_TIME
	fd, err := sysBPF(unix.BPF_ENABLE_STATS, unsafe.Pointer(&attr), unsafe.Sizeof(attr))
	if err != nil {
		return nil, fmt.Errorf("enable bpf run-time statistics: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}
