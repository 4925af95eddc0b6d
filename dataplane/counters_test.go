package dataplane

import (
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestEndpointCounters runs from_container on every CPU at once and
// expects exact totals: each CPU adds to its own copy of the counters.
func TestEndpointCounters(t *testing.T) {
	a := loadServer(t, serverA)
	c, err := a.EndpointCounters()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c[idC]; !ok {
		t.Error("no counters for C, a local endpoint")
	}
	if _, ok := c[idS]; ok {
		t.Error("counters for S, which runs on another server")
	}

	// No service on port 81: counted as sent, then dropped unchanged, so
	// every repetition sees the same packet.
	in := flowTo(ipS, 81, 43000).bytes(t)
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	const repeat = 5000
	var wg sync.WaitGroup
	var runs int
	for cpu := range 1024 {
		if !cpus.IsSet(cpu) {
			continue
		}
		runs++
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				t.Errorf("pin to CPU %d: %v", cpu, err)
				return
			}
			if _, err := a.objs.FromContainer.Run(&ebpf.RunOptions{Data: in, Repeat: repeat}); err != nil {
				t.Errorf("run on CPU %d: %v", cpu, err)
			}
		})
	}
	wg.Wait()
	c, err = a.EndpointCounters()
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(runs * repeat)
	if got := c[idC]; got.TxPackets != n || got.TxBytes != n*uint64(len(in)) {
		t.Errorf("C's counters %+v, want %d packets and %d bytes sent", got, n, n*uint64(len(in)))
	}
	if got := drops(t, a)[DropNoService]; got != n {
		t.Errorf("no_service %d, want %d", got, n)
	}
	var perCPU []daoliEpStats
	if err := a.objs.EndpointStats.Lookup(uint32(idC), &perCPU); err != nil {
		t.Fatal(err)
	}
	used := 0
	for _, s := range perCPU {
		if s.TxPackets > 0 {
			used++
		}
	}
	if used != runs {
		t.Errorf("%d CPUs counted, want %d", used, runs)
	}

	// An endpoint that leaves the server loses its counters.
	s := fixture(serverA)
	s.Endpoints[0].Ifindex = 0
	if err := a.Apply(s); err != nil {
		t.Fatal(err)
	}
	if c, _ := a.EndpointCounters(); len(c) != 1 {
		t.Errorf("counters after C left: %v, want only L's", c)
	}
}
