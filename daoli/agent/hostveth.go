package agent

// This file serves orchestrators that plumb the container themselves, as
// Docker does with a network plugin's interface: Docker moves the
// interface the plugin names into the container, renames it and sets its
// MAC, address and routes. The agent only creates the pair, registers the
// endpoint with the host side as its interface and programs the dataplane.

import (
	"context"
	"errors"
	"fmt"

	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/mapper"
	"github.com/vishvananda/netlink"
)

type (
	HostVethRequest  = agentapi.HostVethRequest
	HostVethResponse = agentapi.HostVethResponse
)

func (a *Agent) hostVethRoute(ctx context.Context, b []byte) (any, error) {
	var req HostVethRequest
	if err := decode(b, &req); err != nil {
		return nil, err
	}
	return a.AttachHostVeth(ctx, req)
}

// AttachHostVeth registers an endpoint whose container interface the
// caller installs, and creates that interface's veth pair. On any error
// nothing is left behind.
func (a *Agent) AttachHostVeth(ctx context.Context, req HostVethRequest) (HostVethResponse, error) {
	host := a.startPlumbing()
	defer a.donePlumbing(host)
	e, err := a.mc.CreateEndpoint(ctx, mapper.EndpointSpec{
		Name: req.Name, Network: req.Network, IP: req.IP, MAC: req.MAC, Server: a.cfg.Name,
		Interface: host, Ports: req.Ports, Mode: req.Mode, Priority: req.Priority, State: req.State,
	})
	if err != nil {
		return HostVethResponse{}, fmt.Errorf("attach host veth: %w", err)
	}
	peer := "dlc" + host[2:]
	if err := a.hostVethPair(host, peer, e.MAC); err != nil {
		if _, derr := a.mc.DeleteEndpoint(context.WithoutCancel(ctx), e.Ref()); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back endpoint %d: %w", e.ID, derr))
		}
		return HostVethResponse{}, fmt.Errorf("attach host veth: %w", err)
	}
	a.model.put(e)
	if err := a.reconcile(ctx); err != nil {
		return HostVethResponse{Endpoint: e, Peer: peer}, fmt.Errorf("attach host veth: program the dataplane: %w", err)
	}
	a.log.Info("attached host veth", "endpoint", e.Ref(), "id", e.ID, "ip", e.IP, "interface", host, "peer", peer)
	return HostVethResponse{Endpoint: e, Peer: peer}, nil
}

// hostVethPair creates host <-> peer in the server's namespace, host up,
// peer down with mac. On error it deletes what it created.
func (a *Agent) hostVethPair(host, peer string, mac mapper.MAC) (err error) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: a.uplink.Attrs().MTU}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	defer func() {
		if err != nil {
			if l, lerr := netlink.LinkByName(host); lerr == nil {
				netlink.LinkDel(l)
			}
		}
	}()
	p, err := netlink.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find veth peer %s: %w", peer, err)
	}
	if err := netlink.LinkSetMTU(p, a.uplink.Attrs().MTU); err != nil {
		return fmt.Errorf("set MTU of %s: %w", peer, err)
	}
	if err := netlink.LinkSetHardwareAddr(p, mac.HardwareAddr()); err != nil {
		return fmt.Errorf("set MAC %s on %s: %w", mac, peer, err)
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("find %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	return nil
}
