package harness

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// ebpfCost measures how long daoli's programs run per packet: one UDP run
// over the daoli path with the kernel's bpf run-time statistics on, read
// for the programs behind the cluster's pinned tcx links. The statistics
// slow every program a little, so no other figure is taken meanwhile.
func (r *run) ebpfCost() {
	p, c := r.daoli, r.cluster
	if p == nil {
		return
	}
	progs := map[uint32]string{}
	for i, s := range c.World.Servers {
		pins, _ := filepath.Glob(filepath.Join(c.BPFFS, c.ServerName(i), "links", "*"))
		for _, pin := range pins {
			id, err := linkProg(pin)
			if err != nil {
				r.res.note(fmt.Sprintf("ebpf cost: %v", err))
				continue
			}
			name := "from_container"
			if filepath.Base(pin) == strconv.Itoa(s.UplinkIfindex) {
				name = "from_network"
			}
			progs[id] = name
		}
	}
	if len(progs) == 0 {
		r.res.note("ebpf cost: no pinned tcx link (the dataplane fell back to tc filters?)")
		return
	}
	read := func() map[string][2]uint64 {
		out := map[string][2]uint64{}
		for id, name := range progs {
			runs, ns, err := progRuntime(id)
			if err != nil {
				r.res.note(fmt.Sprintf("ebpf cost: %v", err))
				continue
			}
			v := out[name]
			out[name] = [2]uint64{v[0] + runs, v[1] + ns}
		}
		return out
	}
	disable, err := enableStats()
	if err != nil {
		r.res.note(fmt.Sprintf("ebpf cost: %v", err))
		return
	}
	before := read()
	pps, packets, err := r.udp(p)
	after := read()
	disable()
	if err != nil {
		r.res.Errors = append(r.res.Errors, fmt.Sprintf("ebpf cost: %v", err))
		return
	}
	e := &EBPFCost{Packets: packets, PPS: pps}
	for _, name := range []string{"from_container", "from_network"} {
		runs, ns := after[name][0]-before[name][0], after[name][1]-before[name][1]
		if runs == 0 {
			continue
		}
		e.Programs = append(e.Programs, ProgramCost{Name: name, Runs: runs, NsPerRun: float64(ns) / float64(runs),
			RunsPerPacket: float64(runs) / float64(packets)})
		e.NsPerPacket += float64(ns) / float64(packets)
	}
	r.res.EBPF = e
	r.printf("daoli's eBPF per packet (UDP, %d packets): %.0f ns in all, %s", packets, e.NsPerPacket, e.programs())
}

func (e *EBPFCost) programs() string {
	var s string
	for i, p := range e.Programs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %.0f ns per run (%.2f runs per packet)", p.Name, p.NsPerRun, p.RunsPerPacket)
	}
	return s
}
