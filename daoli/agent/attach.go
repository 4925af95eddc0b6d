package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/mapper"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The socket's requests are agentapi's, the protocol hooks share.
type (
	AttachRequest = agentapi.AttachRequest
	MoveRequest   = agentapi.MoveRequest
	DetachRequest = agentapi.DetachRequest
)

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

// openNetns opens a container's network namespace, refusing the agent's
// own: plumbing "a container" there would rewire the server itself.
func openNetns(path string) (netns.NsHandle, error) {
	if path == "" {
		return 0, errors.New("netns: missing; want the path of the container's network namespace")
	}
	var target, self unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err == nil && target.Dev == self.Dev && target.Ino == self.Ino {
		return 0, fmt.Errorf("netns %s is the server's own network namespace, not a container's", path)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return 0, fmt.Errorf("netns %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(h), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		h.Close()
		return 0, fmt.Errorf("netns %s is no network namespace here: the agent does not see the runtime's mount of it (run the agent in the runtime's mount namespace, or mount the namespaces' directory with shared propagation: docs/kubernetes.md)", path)
	}
	return h, nil
}

// checkIfname checks a container interface name before anything is
// changed: a bad one found half-way would leave a container without its
// interface.
func checkIfname(name string) error {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/: \t\n") || name == "." || name == ".." {
		return fmt.Errorf("ifname %q: want 1 to 15 characters, without '/', ':' or spaces", name)
	}
	return nil
}

// mapperTimeout bounds a write to the mapper that must not be abandoned
// half-way because the caller gave up: it runs detached from the request.
const mapperTimeout = 10 * time.Second

func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), mapperTimeout)
}

// Attach registers an endpoint on this server and plumbs a veth pair into
// the container: its side gets the endpoint's MAC, IP and a default route
// through the network's gateway. On any error nothing is left behind: no
// veth, no endpoint.
func (a *Agent) Attach(ctx context.Context, req AttachRequest) (mapper.Endpoint, error) {
	if req.Ifname == "" {
		req.Ifname = "eth0"
	}
	if err := checkIfname(req.Ifname); err != nil {
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
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
	mctx, cancel := detached(ctx)
	defer cancel()
	e, err := a.mc.CreateEndpoint(mctx, mapper.EndpointSpec{
		Name: req.Name, Owner: req.Owner, Network: req.Network, IP: req.IP, MAC: req.MAC, Server: a.cfg.Name,
		Interface: host, Ports: req.Ports, Mode: req.Mode, Priority: req.Priority,
		Published: req.Published,
	})
	if err != nil {
		var ae *mapper.APIError
		if !errors.As(err, &ae) {
			// No answer: the create may have committed. Find it by its
			// interface, which only this call knows, and undo it.
			err = errors.Join(err, a.undoCreate(mctx, host))
		}
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	var v *veth
	rollback := func(err error) (mapper.Endpoint, error) {
		if v != nil {
			v.installed = false // delete it even if it was installed
			v.remove()
			v = nil
		}
		if _, derr := a.mc.DeleteEndpoint(mctx, e.Ref()); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back endpoint %d: %w", e.ID, derr))
		}
		a.kick()
		return mapper.Endpoint{}, fmt.Errorf("attach: %w", err)
	}
	if v, err = a.newVeth(ns, host, e, n); err != nil {
		v = nil // newVeth cleaned up after itself
		return rollback(err)
	}
	defer func() {
		if v != nil {
			v.remove()
		}
	}()
	if err := v.install(req.Ifname, n.Gateway, false); err != nil {
		return rollback(err)
	}
	a.model.put(e)
	if err := a.reconcile(ctx); err != nil {
		return rollback(fmt.Errorf("program the dataplane: %w", err))
	}
	a.netns.set(e.ID, req.Netns)
	a.log.Info("attached", "endpoint", e.Ref(), "id", e.ID, "ip", e.IP, "interface", host)
	return e, nil
}

// undoCreate removes the endpoint of this server whose interface is host,
// if the registry has one.
func (a *Agent) undoCreate(ctx context.Context, host string) error {
	eps, err := a.mc.Endpoints(ctx, "", a.cfg.Name)
	if err != nil {
		return fmt.Errorf("look for a half-made endpoint on %s: %w", host, err)
	}
	for _, e := range eps {
		if e.Interface == host {
			if _, err := a.mc.DeleteEndpoint(ctx, e.Ref()); err != nil {
				return fmt.Errorf("remove half-made endpoint %d: %w", e.ID, err)
			}
		}
	}
	return nil
}

// Move takes over an endpoint whose container namespace is reachable from
// this server: it gives the endpoint a wire block here, replaces the
// container's interface by one into this server (same name, MAC, IP and
// route), and programs the dataplane. The container's sockets stay open;
// peers' flows are re-pointed as soon as their agents see the move. If the
// move cannot be completed, the endpoint is moved back.
func (a *Agent) Move(ctx context.Context, req MoveRequest) (mapper.Endpoint, error) {
	if req.Ifname == "" {
		req.Ifname = "eth0"
	}
	if err := checkIfname(req.Ifname); err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
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
	from := d.Endpoint
	if from.Server == a.cfg.Name {
		return mapper.Endpoint{}, fmt.Errorf("move: endpoint %s already runs on %s", req.Endpoint, a.cfg.Name)
	}
	n, err := a.mc.Network(ctx, from.Network)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	host := a.startPlumbing()
	defer a.donePlumbing(host)
	// Make before break, as far as one interface allows: the new veth is
	// ready and this server programmed before the container switches over,
	// so packets peers send to the new location once they learn of the move
	// find their way in.
	v, err := a.newVeth(ns, host, from, n)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	defer v.remove()
	mctx, cancel := detached(ctx)
	defer cancel()
	e, err := a.mc.MoveEndpoint(mctx, req.Endpoint, a.cfg.Name, host)
	if err != nil {
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	moveBack := func(err error) (mapper.Endpoint, error) {
		if _, berr := a.mc.MoveEndpoint(mctx, req.Endpoint, from.Server, from.Interface); berr != nil {
			err = errors.Join(err, fmt.Errorf("move endpoint %s back to %s: %w", req.Endpoint, from.Server, berr))
		}
		a.kick()
		return mapper.Endpoint{}, fmt.Errorf("move: %w", err)
	}
	a.model.put(e)
	if err := a.reconcile(ctx); err != nil {
		return moveBack(fmt.Errorf("program the dataplane: %w", err))
	}
	if err := v.install(req.Ifname, n.Gateway, true); err != nil {
		return moveBack(fmt.Errorf("switch the container over: %w", err))
	}
	a.netns.set(e.ID, req.Netns)
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
	a.netns.set(e.ID, "")
	if l, err := netlink.LinkByName(e.Interface); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return e, fmt.Errorf("detach: delete %s: %w", e.Interface, err)
		}
	}
	a.kick()
	a.log.Info("detached", "endpoint", e.Ref(), "id", e.ID)
	return e, nil
}

// veth is a new pair: the host side up in the server's namespace, the
// peer in the container under a temporary name, configured with the
// endpoint's MAC and address but not yet the container's interface.
type veth struct {
	h          *netlink.Handle // the container's namespace
	host, peer string
	installed  bool
}

// newVeth creates the pair host <-> peer and prepares the peer as e in
// network n. On error it leaves nothing behind.
func (a *Agent) newVeth(ns netns.NsHandle, host string, e mapper.Endpoint, n mapper.Network) (v *veth, err error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open the container's namespace: %w", err)
	}
	v = &veth{h: h, host: host, peer: "dlc" + host[2:]}
	defer func() {
		if err != nil {
			v.remove()
		}
	}()
	pair := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: a.uplink.Attrs().MTU}, PeerName: v.peer}
	if err := netlink.LinkAdd(pair); err != nil {
		return v, fmt.Errorf("create veth %s: %w", host, err)
	}
	p, err := netlink.LinkByName(v.peer)
	if err != nil {
		return v, fmt.Errorf("find veth peer %s: %w", v.peer, err)
	}
	if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
		return v, fmt.Errorf("move %s into the container: %w", v.peer, err)
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return v, fmt.Errorf("find %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return v, fmt.Errorf("set %s up: %w", host, err)
	}
	c, err := h.LinkByName(v.peer)
	if err != nil {
		return v, fmt.Errorf("find %s in the container: %w", v.peer, err)
	}
	if err := h.LinkSetHardwareAddr(c, e.MAC.HardwareAddr()); err != nil {
		return v, fmt.Errorf("container interface: set MAC %s: %w", e.MAC, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: e.IP.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}}
	if err := h.AddrAdd(c, addr); err != nil {
		return v, fmt.Errorf("container interface: add address %s: %w", addr.IPNet, err)
	}
	return v, nil
}

// install makes the peer the container's interface ifname: with replace,
// the interface of that name the container has (its way into the server
// it leaves) is deleted first, so the container is without a way out
// only for a rename, an up and a route; without replace, an existing
// ifname is an error.
func (v *veth) install(ifname string, gateway netip.Addr, replace bool) error {
	old, lookupErr := v.h.LinkByName(ifname)
	if lookupErr == nil {
		if !replace {
			return fmt.Errorf("the container already has an interface %s", ifname)
		}
		if err := v.h.LinkDel(old); err != nil {
			return fmt.Errorf("delete the container's old %s: %w", ifname, err)
		}
	}
	c, err := v.h.LinkByName(v.peer)
	if err != nil {
		return fmt.Errorf("find %s in the container: %w", v.peer, err)
	}
	if err := v.h.LinkSetName(c, ifname); err != nil {
		return fmt.Errorf("container interface: rename %s to %s: %w", v.peer, ifname, err)
	}
	if err := v.h.LinkSetUp(c); err != nil {
		return fmt.Errorf("container interface: set %s up: %w", ifname, err)
	}
	if err := v.h.RouteReplace(&netlink.Route{LinkIndex: c.Attrs().Index, Gw: gateway.AsSlice()}); err != nil {
		return fmt.Errorf("container interface: default route via %s: %w", gateway, err)
	}
	if lo, err := v.h.LinkByName("lo"); err == nil {
		v.h.LinkSetUp(lo)
	}
	v.installed = true
	return nil
}

// remove deletes the pair (unless installed) and closes the handle.
func (v *veth) remove() {
	if !v.installed {
		if l, err := netlink.LinkByName(v.host); err == nil {
			netlink.LinkDel(l)
		}
		if l, err := v.h.LinkByName(v.peer); err == nil {
			v.h.LinkDel(l)
		}
	}
	v.h.Close()
}
