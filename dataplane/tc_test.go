package dataplane

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/daolinet/daoli/internal/testbed"
)

// tcFilters returns daoli's tc filters on the clsact ingress of ifindex in
// server s, and fails when a tcx program is attached there too.
func tcFilters(t *testing.T, s *testbed.Server, ifindex int) []*netlink.BpfFilter {
	t.Helper()
	var out []*netlink.BpfFilter
	err := s.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		if len(res.Programs) != 0 {
			t.Errorf("ifindex %d: %d tcx programs in tc mode, want 0", ifindex, len(res.Programs))
		}
		filters, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Handle == tcHandle {
				out = append(out, bf)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestTCFallback runs the dataplane as tc filters (what a kernel without
// tcx gets) and sends real traffic through them; a restarted Dataplane
// adopts a filter by replacing it, and Detach removes it.
func TestTCFallback(t *testing.T) {
	tw := newTrafficWorld(t, Config{ForceTC: true})
	client := tw.containers[1]
	serveTCP(t, tw.containers[2], 8080, "S")
	serveUDP(t, tw.containers[2], 5353, "S")
	serveTCP(t, tw.containers[4], 8081, "L")

	for _, at := range []struct {
		s       *testbed.Server
		ifindex int
		name    string
	}{
		{tw.a, tw.a.UplinkIfindex, "daoli_from_network"},
		{tw.b, tw.b.UplinkIfindex, "daoli_from_network"},
		{tw.a, client.HostIfindex, "daoli_from_container"},
		{tw.b, tw.containers[2].HostIfindex, "daoli_from_container"},
	} {
		f := tcFilters(t, at.s, at.ifindex)
		if len(f) != 1 || f[0].Name != at.name || !f[0].DirectAction {
			t.Errorf("%s ifindex %d: filters %+v, want one direct-action %s", at.s.Name, at.ifindex, f, at.name)
		}
	}

	ask3 := func() {
		t.Helper()
		for _, tc := range []struct {
			network string
			dst     netip.AddrPort
			want    string
		}{
			{"tcp4", netip.AddrPortFrom(trafficS, 8080), "S"},
			{"udp4", netip.AddrPortFrom(trafficS, 5353), "S"},
			{"tcp4", netip.AddrPortFrom(trafficL, 8081), "L"},
		} {
			if name, seen := ask(t, client, tc.network, tc.dst); name != tc.want || seen.Addr() != client.IP {
				t.Errorf("%s %s: answered by %s seeing %s, want %s seeing %s", tc.network, tc.dst, name, seen, tc.want, client.IP)
			}
		}
	}
	ask3()
	if err := ping(client, trafficS, 0x7c7c); err != nil {
		t.Errorf("ping: %v", err)
	}
	if c, err := tw.dpA.EndpointCounters(); err != nil || c[1].TxPackets == 0 {
		t.Errorf("C's counters %+v, %v: the traffic did not pass through the programs", c[1], err)
	}

	// A restarted process adopts the filter: it swaps its program in
	// and traffic goes on.
	d2, err := New(Config{BPFFSPath: tw.dpA.path, ForceTC: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := tw.a.Do(func() error { return d2.AttachEndpoint(client.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	info, err := d2.objs.FromContainer.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	if f := tcFilters(t, tw.a, client.HostIfindex); len(f) != 1 || f[0].Id != int(id) {
		t.Errorf("after a restart: filters %+v, want one running program %d", f, id)
	}
	ask3()

	// A process that can use tcx again takes the interface over: the
	// filter goes, so the program does not run twice.
	d3, err := New(Config{BPFFSPath: tw.dpA.path})
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	var tcx int
	err = tw.a.Do(func() error {
		if err := d3.AttachEndpoint(client.HostIfindex); err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: client.HostIfindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		tcx = len(res.Programs)
		filters, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: client.HostIfindex}}, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return err
		}
		if len(filters) != 0 {
			t.Errorf("after attaching with tcx: tc filters %+v, want none", filters)
		}
		return nil
	})
	if err != nil || tcx != 1 {
		t.Errorf("after attaching with tcx: %d tcx programs (%v), want 1", tcx, err)
	}
	ask3()

	// Detach removes the filter.
	l := tw.containers[4]
	if err := tw.a.Do(func() error { return tw.dpA.Detach(l.HostIfindex) }); err != nil {
		t.Fatal(err)
	}
	if f := tcFilters(t, tw.a, l.HostIfindex); len(f) != 0 {
		t.Errorf("after Detach: filters %+v, want none", f)
	}

	// Remove deletes every filter it attached, from any thread.
	if err := tw.dpB.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, ifindex := range []int{tw.b.UplinkIfindex, tw.containers[2].HostIfindex} {
		if f := tcFilters(t, tw.b, ifindex); len(f) != 0 {
			t.Errorf("after Remove: ifindex %d has filters %+v, want none", ifindex, f)
		}
	}
}
