package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/daolinet/daoli/mapper"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// AttachRequest attaches a container to a network through this server.
type AttachRequest struct {
	// Netns is the path of the container's network namespace, such as
	// /proc/PID/ns/net or /run/netns/NAME.
	Netns string `json:"netns"`
	// Ifname is the interface inside the container. Zero means eth0.
	Ifname   string            `json:"ifname,omitempty"`
	Network  string            `json:"network"`
	IP       netip.Addr        `json:"ip"`
	MAC      mapper.MAC        `json:"mac,omitzero"`
	Name     string            `json:"name,omitempty"`
	Ports    []mapper.PortSpec `json:"ports,omitempty"`
	Mode     mapper.Mode       `json:"mode,omitempty"`
	Priority uint16            `json:"priority,omitempty"`
}

// MoveRequest re-attaches an endpoint's container to this server: live
// migration when the container's namespace is reachable from here.
type MoveRequest struct {
	Endpoint string `json:"endpoint"` // ID or name
	Netns    string `json:"netns"`
	Ifname   string `json:"ifname,omitempty"`
}

// DetachRequest removes an endpoint attached through this server.
type DetachRequest struct {
	Endpoint string `json:"endpoint"` // ID or name
}

func hostIfname() string {
	var b [4]byte
	rand.Read(b[:])
	return "dl" + hex.EncodeToString(b[:]) // 10 characters, under IFNAMSIZ
}

// startPlumbing picks the host-side name of a new veth and keeps the
// missing-interface check off it until donePlumbing: the registry learns
// of the endpoint before its veth exists.
func (a *Agent) startPlumbing() string {
	name := hostIfname()
	a.mu.Lock()
	a.plumbing[name] = true
	a.mu.Unlock()
	return name
}

func (a *Agent) donePlumbing(name string) {
	a.mu.Lock()
	delete(a.plumbing, name)
	a.mu.Unlock()
}

func openNetns(path string) (netns.NsHandle, error) {
	if path == "" {
		return 0, errors.New("netns: missing; want the path of the container's network namespace")
	}
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	return h, nil
}

// Attach registers an endpoint on this server and plumbs a veth pair into
// the container: its side gets the endpoint's MAC, IP and a default route
// through the network's gateway. On any error nothing is left behind.
func (a *Agent) Attach(ctx context.Context, req AttachRequest) (mapper.Endpoint, error) {
	if req.Ifname == "" {
		req.Ifname = "eth0"
	}
	ns, err := openNetns(req.Netns)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	defer ns.Close()
	n, err := a.mc.Network(ctx, req.Network)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	host := a.startPlumbing()
	defer a.donePlumbing(host)
	e, err := a.mc.CreateEndpoint(ctx, mapper.EndpointSpec{
		Name: req.Name, Network: req.Network, IP: req.IP, MAC: req.MAC, Server: a.cfg.Name,
		Interface: host, Ports: req.Ports, Mode: req.Mode, Priority: req.Priority,
	})
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	if err := a.plumb(ns, host, req.Ifname, e, n, false); err != nil {
		if _, derr := a.mc.DeleteEndpoint(context.WithoutCancel(ctx), e.Ref()); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back endpoint %d: %w", e.ID, derr))
		}
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	a.model.put(e)
	if err := a.reconcile(ctx); err != nil {
		return e, fmt.Errorf("attach: program the dataplane: %w", err)
	}
	a.log.Info("attached", "endpoint", e.Ref(), "id", e.ID, "ip", e.IP, "interface", host)
	return e, nil
}

// Move takes over an endpoint whose container namespace is reachable from
// this server: it gives the endpoint a wire block here, replaces the
// container's interface by one into this server (same name, MAC, IP and
// route), and programs the dataplane. The container's sockets stay open;
// peers' flows are re-pointed as soon as their agents see the move.
func (a *Agent) Move(ctx context.Context, req MoveRequest) (mapper.Endpoint, error) {
	if req.Ifname == "" {
		req.Ifname = "eth0"
	}
	ns, err := openNetns(req.Netns)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	defer ns.Close()
	d, err := a.mc.Endpoint(ctx, req.Endpoint)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	n, err := a.mc.Network(ctx, d.Endpoint.Network)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	host := a.startPlumbing()
	defer a.donePlumbing(host)
	e, err := a.mc.MoveEndpoint(ctx, req.Endpoint, a.cfg.Name, host)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	a.model.put(e)
	if err := a.plumb(ns, host, req.Ifname, e, n, true); err != nil {
		return e, fmt.Errorf("move: the registry has endpoint %s on %s, but plumbing failed: %w", e.Ref(), a.cfg.Name, err)
	}
	if err := a.reconcile(ctx); err != nil {
		return e, fmt.Errorf("move: program the dataplane: %w", err)
	}
	a.log.Info("moved here", "endpoint", e.Ref(), "id", e.ID, "interface", host, "wire_block", e.Wire.String())
	return e, nil
}

// Detach removes an endpoint of this server and its veth pair.
func (a *Agent) Detach(ctx context.Context, req DetachRequest) (mapper.Endpoint, error) {
	d, err := a.mc.Endpoint(ctx, req.Endpoint)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("detach: %w", err)
	}
	if d.Endpoint.Server != a.cfg.Name {
		return mapper.Endpoint{}, fmt.Errorf("detach: endpoint %s runs on %s, not here (%s)", req.Endpoint, d.Endpoint.Server, a.cfg.Name)
	}
	e, err := a.mc.DeleteEndpoint(ctx, req.Endpoint)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("detach: %w", err)
	}
	a.mu.Lock()
	a.reported[e.Interface] = true // its veth goes away on purpose
	a.mu.Unlock()
	if l, err := netlink.LinkByName(e.Interface); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return e, fmt.Errorf("detach: delete %s: %w", e.Interface, err)
		}
	}
	a.kick()
	a.log.Info("detached", "endpoint", e.Ref(), "id", e.ID)
	return e, nil
}

// plumb creates the veth pair host <-> ifname in ns and configures the
// container's side as e. With replace, an existing ifname in ns (the
// interface into the server the endpoint leaves) is deleted first;
// otherwise it is an error. On error, what plumb created is deleted.
func (a *Agent) plumb(ns netns.NsHandle, host, ifname string, e mapper.Endpoint, n mapper.Network, replace bool) (err error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open the container's namespace: %w", err)
	}
	defer h.Close()
	old, lookupErr := h.LinkByName(ifname)
	if lookupErr == nil && !replace {
		return fmt.Errorf("the container already has an interface %s", ifname)
	}
	peer := "dlc" + host[2:]
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: a.uplink.Attrs().MTU}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	defer func() {
		if err != nil {
			if l, lerr := netlink.LinkByName(host); lerr == nil {
				netlink.LinkDel(l)
			}
			if l, lerr := h.LinkByName(peer); lerr == nil {
				h.LinkDel(l)
			}
		}
	}()
	p, err := netlink.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find veth peer %s: %w", peer, err)
	}
	if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
		return fmt.Errorf("move %s into the container: %w", peer, err)
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("find %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	if lookupErr == nil { // replace: the old interface goes, then the new one takes its name
		if err := h.LinkDel(old); err != nil {
			return fmt.Errorf("delete the container's old %s: %w", ifname, err)
		}
	}
	c, err := h.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find %s in the container: %w", peer, err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"rename to " + ifname, func() error { return h.LinkSetName(c, ifname) }},
		{"set MAC " + e.MAC.String(), func() error { return h.LinkSetHardwareAddr(c, e.MAC.HardwareAddr()) }},
		{"add address", func() error {
			return h.AddrAdd(c, &netlink.Addr{IPNet: &net.IPNet{IP: e.IP.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}})
		}},
		{"set up", func() error { return h.LinkSetUp(c) }},
		{"add default route via " + n.Gateway.String(), func() error {
			return h.RouteReplace(&netlink.Route{LinkIndex: c.Attrs().Index, Gw: n.Gateway.AsSlice()})
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("container interface: %s: %w", s.what, err)
		}
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	return nil
}
