package agent

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/daolinet/daoli/agentapi"
	"github.com/vishvananda/netlink"
)

// Check verifies that an endpoint of this server is whole: registered here
// with its interface, its veth up with the dataplane attached, and inside
// the container an interface with the endpoint's MAC and address and a
// default route through the network's gateway. The error names the first
// part that is missing.
func (a *Agent) Check(ctx context.Context, req agentapi.CheckRequest) (agentapi.Attachment, error) {
	if req.Ifname == "" {
		req.Ifname = "eth0"
	}
	if err := checkIfname(req.Ifname); err != nil {
		return agentapi.Attachment{}, fmt.Errorf("check: %w", err)
	}
	d, err := a.mc.Endpoint(ctx, req.Endpoint)
	if err != nil {
		return agentapi.Attachment{}, fmt.Errorf("check: %w", err)
	}
	e := d.Endpoint
	if e.Server != a.cfg.Name {
		return agentapi.Attachment{}, fmt.Errorf("check: endpoint %s runs on %s, not here (%s)", req.Endpoint, e.Server, a.cfg.Name)
	}
	n, err := a.mc.Network(ctx, e.Network)
	if err != nil {
		return agentapi.Attachment{}, fmt.Errorf("check: %w", err)
	}
	out := agentapi.Attachment{Endpoint: e, Network: n}
	if e.Interface == "" {
		return out, fmt.Errorf("check: endpoint %s has no interface in the registry", req.Endpoint)
	}
	host, err := netlink.LinkByName(e.Interface)
	if err != nil {
		return out, fmt.Errorf("check: endpoint %s: its veth %s is missing on %s: %w", req.Endpoint, e.Interface, a.cfg.Name, err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return out, fmt.Errorf("check: endpoint %s: its veth %s is down", req.Endpoint, e.Interface)
	}
	a.mu.Lock()
	attached := a.attached[host.Attrs().Index]
	a.mu.Unlock()
	if !attached {
		return out, fmt.Errorf("check: endpoint %s: the dataplane is not attached to %s", req.Endpoint, e.Interface)
	}
	ns, err := openNetns(req.Netns)
	if err != nil {
		return out, fmt.Errorf("check: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return out, fmt.Errorf("check: open the container's namespace: %w", err)
	}
	defer h.Close()
	c, err := h.LinkByName(req.Ifname)
	if err != nil {
		return out, fmt.Errorf("check: the container has no interface %s: %w", req.Ifname, err)
	}
	if got := c.Attrs().HardwareAddr.String(); got != e.MAC.HardwareAddr().String() {
		return out, fmt.Errorf("check: the container's %s has MAC %s, want the endpoint's %s", req.Ifname, got, e.MAC)
	}
	if c.Attrs().Flags&net.FlagUp == 0 {
		return out, fmt.Errorf("check: the container's %s is down", req.Ifname)
	}
	addrs, err := h.AddrList(c, netlink.FAMILY_V4)
	if err != nil {
		return out, fmt.Errorf("check: addresses of the container's %s: %w", req.Ifname, err)
	}
	want := &net.IPNet{IP: e.IP.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)}
	found := false
	for _, ad := range addrs {
		found = found || ad.IPNet.String() == want.String()
	}
	if !found {
		return out, fmt.Errorf("check: the container's %s lacks address %s", req.Ifname, want)
	}
	routes, err := h.RouteList(c, netlink.FAMILY_V4)
	if err != nil {
		return out, fmt.Errorf("check: routes of the container's %s: %w", req.Ifname, err)
	}
	found = false
	for _, r := range routes {
		isDefault := r.Dst == nil || r.Dst.String() == "0.0.0.0/0"
		found = found || isDefault && r.Gw.Equal(n.Gateway.AsSlice())
	}
	if !found {
		return out, fmt.Errorf("check: the container has no default route via %s on %s", n.Gateway, req.Ifname)
	}
	return out, nil
}

// readyTimeout bounds how long GET /v1/ready waits for the mapper.
const readyTimeout = 3 * time.Second

// Ready answers when this agent serves and one of its mappers answers.
func (a *Agent) Ready(ctx context.Context) (agentapi.Ready, error) {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if _, err := a.mc.Allocation(ctx); err != nil {
		return agentapi.Ready{}, &notReady{fmt.Errorf("agent %s: no mapper answers: %w", a.cfg.Name, err)}
	}
	return agentapi.Ready{Server: a.cfg.Name, Mapper: a.mc.URL()}, nil
}

// notReady is answered with 503.
type notReady struct{ error }

func (e *notReady) Unwrap() error { return e.error }
