package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AttachUplink attaches from_network to the tcx ingress of the server's
// uplink, the interface that carries its ServerIP, and makes it the
// interface wire packets leave through. ifindex is in the network namespace
// of the calling thread.
func (d *Dataplane) AttachUplink(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.attach(ifindex, d.objs.FromNetwork); err != nil {
		return fmt.Errorf("attach uplink %d: %w", ifindex, err)
	}
	err := d.updateSettings(func(s *daoliServerSettings) { s.UplinkIfindex = uint32(ifindex) })
	if err != nil {
		return fmt.Errorf("attach uplink %d: %w", ifindex, err)
	}
	d.log.Info("uplink attached", "ifindex", ifindex)
	return nil
}

// AttachEndpoint attaches from_container to the tcx ingress of an endpoint's
// host-side veth. Until Apply registers an endpoint with this ifindex, every
// packet from it is dropped.
func (d *Dataplane) AttachEndpoint(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.attach(ifindex, d.objs.FromContainer); err != nil {
		return fmt.Errorf("attach endpoint %d: %w", ifindex, err)
	}
	d.log.Info("endpoint attached", "ifindex", ifindex)
	return nil
}

// Detach removes daoli's program from the interface. Detaching an interface
// that has none is not an error. A tc filter is removed in the network
// namespace it was attached in, or, when this process did not attach it, in
// the namespace of the calling thread.
func (d *Dataplane) Detach(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := unpinLink(d.linkPin(ifindex)); err != nil {
		return fmt.Errorf("detach %d: %w", ifindex, err)
	}
	if err := d.detachTC(ifindex); err != nil {
		return fmt.Errorf("detach %d: %w", ifindex, err)
	}
	return d.updateSettings(func(s *daoliServerSettings) {
		if s.UplinkIfindex == uint32(ifindex) {
			s.UplinkIfindex = 0
		}
	})
}

func (d *Dataplane) linkPin(ifindex int) string {
	return filepath.Join(d.path, "links", strconv.Itoa(ifindex))
}

// attach adopts the link pinned for ifindex when it still points at that
// interface, swapping in prog atomically, and creates and pins one
// otherwise. Without tcx it attaches a tc filter instead.
func (d *Dataplane) attach(ifindex int, prog *ebpf.Program) error {
	if ifindex <= 0 {
		return fmt.Errorf("ifindex %d: must be positive", ifindex)
	}
	if d.useTC {
		return d.attachTC(ifindex, prog)
	}
	pin := d.linkPin(ifindex)
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		info, ierr := l.Info()
		if ierr == nil && info.Type == link.TCXType && info.TCX() != nil &&
			info.TCX().Ifindex == uint32(ifindex) && ebpf.AttachType(info.TCX().AttachType) == ebpf.AttachTCXIngress {
			uerr := l.Update(prog)
			l.Close()
			if uerr != nil {
				return fmt.Errorf("update pinned link: %w", uerr)
			}
			return nil
		}
		// The interface went away and its index was reused: start over.
		l.Unpin()
		l.Close()
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("load pinned link: %w", err)
	}
	l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if errors.Is(err, ebpf.ErrNotSupported) {
		d.log.Info("tcx not supported, falling back to tc clsact", "ifindex", ifindex)
		d.useTC = true
		return d.attachTC(ifindex, prog)
	}
	if err != nil {
		return fmt.Errorf("attach tcx: %w", permissionHint(err))
	}
	// A tc filter from an earlier run would run the program twice.
	if err := d.detachTC(ifindex); err != nil {
		l.Close()
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	return nil
}

// The tc filter daoli attaches in tc mode: one per interface, on clsact
// ingress, found again by its priority, handle and name.
const (
	tcPriority   = 1
	tcHandle     = 0xda
	tcNamePrefix = "daoli_"
)

// attachTC attaches prog as a direct-action bpf filter on the clsact
// ingress of ifindex, in the network namespace of the calling thread. A
// filter attached earlier, by this process or another, is replaced
// atomically: that is tc's adoption. The filter lives on the device, not in
// bpffs: it outlives the process like a pinned link does.
func (d *Dataplane) attachTC(ifindex int, prog *ebpf.Program) error {
	// A tcx link from an earlier run would run the program twice.
	if err := unpinLink(d.linkPin(ifindex)); err != nil {
		return err
	}
	ns, err := netns.Get()
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		ns.Close()
		return fmt.Errorf("add clsact qdisc: %w", permissionHint(err))
	}
	info, err := prog.Info()
	if err != nil {
		ns.Close()
		return fmt.Errorf("read program info: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: tcHandle, Priority: tcPriority, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: tcNamePrefix + info.Name, DirectAction: true,
	}
	if err := h.FilterReplace(filter); err != nil {
		ns.Close()
		return fmt.Errorf("attach tc filter: %w", permissionHint(err))
	}
	if old, ok := d.tc[ifindex]; ok {
		old.Close()
	}
	d.tc[ifindex] = ns
	return nil
}

// detachTC deletes daoli's tc filter from ifindex, if there is one: in the
// network namespace this process attached it in, or else in the calling
// thread's.
func (d *Dataplane) detachTC(ifindex int) error {
	ns, known := d.tc[ifindex]
	if !known {
		var err error
		if ns, err = netns.Get(); err != nil {
			return fmt.Errorf("open network namespace: %w", err)
		}
	}
	delete(d.tc, ifindex)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	filters, err := h.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		// No device or no clsact: nothing of ours is attached.
		if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("list tc filters: %w", err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Handle != tcHandle || bf.Priority != tcPriority || !strings.HasPrefix(bf.Name, tcNamePrefix) {
			continue
		}
		if err := h.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete tc filter: %w", err)
		}
	}
	return nil
}

func unpinLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link: %w", err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link: %w", err)
	}
	return nil
}

func (d *Dataplane) updateSettings(f func(*daoliServerSettings)) error {
	var s daoliServerSettings
	if err := d.objs.Settings.Lookup(uint32(0), &s); err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	old := s
	f(&s)
	if s == old {
		return nil
	}
	if err := d.objs.Settings.Update(uint32(0), &s, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	d.writes.Add(1)
	return nil
}

// updateGateway writes the gateway block's base (0: no ingress).
func (d *Dataplane) updateGateway(base uint16) error {
	var old daoliGatewaySettings
	if err := d.objs.Gateway.Lookup(uint32(0), &old); err == nil && old.Base == base {
		return nil
	}
	v := daoliGatewaySettings{Base: base}
	if err := d.objs.Gateway.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write gateway settings: %w", err)
	}
	d.writes.Add(1)
	return nil
}
