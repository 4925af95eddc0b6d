package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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
// that has none is not an error.
func (d *Dataplane) Detach(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := unpinLink(d.linkPin(ifindex)); err != nil {
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
// otherwise.
func (d *Dataplane) attach(ifindex int, prog *ebpf.Program) error {
	if ifindex <= 0 {
		return fmt.Errorf("ifindex %d: must be positive", ifindex)
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
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("attach tcx: %w: %w (needs Linux 6.6 or newer)", ErrNoTCX, err)
		}
		return fmt.Errorf("attach tcx: %w", permissionHint(err))
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link: %w", err)
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
	f(&s)
	if err := d.objs.Settings.Update(uint32(0), &s, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}
