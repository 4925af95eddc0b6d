// Package cni is daoli's CNI plugin (spec 1.1: ADD, DEL, CHECK, STATUS,
// GC, VERSION) for Kubernetes runtimes and any other CNI runtime. It
// attaches a pod's network namespace through the local agent exactly as
// `daoli attach` does, and names the address's owner (the pod, or the
// service its replicas declare) so that the mapper gives a restarted or
// rescheduled pod its old address back. docs/kubernetes.md is the user's
// guide.
//
// The plugin keeps no state on the server: an attachment's endpoint name
// is derived from (container ID, interface, network), so DEL, CHECK and GC
// find it again in the registry.
package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/daolinet/daoli/agentapi"
)

// Type is the plugin's type in a network configuration, and its binary's
// name in the runtime's CNI path.
const Type = "daoli-cni"

// timeout bounds one command: the agent's own calls to the mapper time out
// sooner.
const timeout = 60 * time.Second

// Main runs the plugin as the runtime invokes it.
func Main(about string) {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.All, about)
}

func setup(args *skel.CmdArgs) (*Config, *agentapi.Client, context.Context, context.CancelFunc, error) {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	sock, err := c.agentSocket()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	return c, agentapi.NewClient(sock), ctx, cancel, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	c, ag, ctx, cancel, err := setup(args)
	if err != nil {
		return err
	}
	defer cancel()
	id, err := resolveIdentity(c, args.ContainerID, args.IfName, args.Args)
	if err != nil {
		return err
	}
	e, err := ag.Attach(ctx, agentapi.AttachRequest{
		Netns: args.Netns, Ifname: args.IfName, Network: c.Network, IP: id.IP, MAC: id.MAC,
		Name: id.Name, Owner: id.Owner, Ports: id.Ports, Mode: id.Mode, Priority: id.Priority,
	})
	if err != nil {
		var ae *agentapi.Error
		if errors.As(err, &ae) && ae.Status == http.StatusConflict && strings.Contains(ae.Msg, id.Name) {
			return types.NewError(types.ErrInternal, fmt.Sprintf("daoli: container %s already has %s in network %s (endpoint %s): DEL it first",
				args.ContainerID, args.IfName, c.Network, id.Name), "")
		}
		return agentErr("ADD of container "+args.ContainerID, err)
	}
	// The agent checks what it made: a result is only given for an
	// attachment that CHECK would pass.
	att, err := ag.Check(ctx, agentapi.CheckRequest{Endpoint: id.Name, Netns: args.Netns, Ifname: args.IfName})
	if err != nil {
		if _, derr := ag.Detach(context.WithoutCancel(ctx), agentapi.DetachRequest{Endpoint: id.Name}); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back endpoint %d: %w", e.ID, derr))
		}
		return agentErr("ADD of container "+args.ContainerID, err)
	}
	return types.PrintResult(result(c, args, att), c.CNIVersion)
}

// result describes an attachment as CNI does: the host side, the pod's
// interface, its address and default route.
func result(c *Config, args *skel.CmdArgs, att agentapi.Attachment) *types100.Result {
	e, n := att.Endpoint, att.Network
	podIf := 1
	r := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: e.Interface},
			{Name: args.IfName, Mac: e.MAC.String(), Sandbox: args.Netns},
		},
		IPs: []*types100.IPConfig{{
			Interface: &podIf,
			Address:   net.IPNet{IP: e.IP.AsSlice(), Mask: net.CIDRMask(n.Subnet.Bits(), 32)},
			Gateway:   n.Gateway.AsSlice(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: n.Gateway.AsSlice()}},
		DNS:    c.DNS,
	}
	return r
}

func cmdDel(args *skel.CmdArgs) error {
	// Without an agent the endpoint cannot be removed: the error asks the
	// runtime to try again, as kubelet does until DEL succeeds.
	c, ag, ctx, cancel, err := setup(args)
	if err != nil {
		return err
	}
	defer cancel()
	name := endpointName(args.ContainerID, args.IfName, c.Network)
	_, err = ag.Detach(ctx, agentapi.DetachRequest{Endpoint: name})
	var ae *agentapi.Error
	if err != nil && errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return nil // deleted before, or never added: DEL is idempotent
	}
	if err != nil {
		return agentErr("DEL of container "+args.ContainerID, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, ag, ctx, cancel, err := setup(args)
	if err != nil {
		return err
	}
	defer cancel()
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, "daoli: cannot parse prevResult", err.Error())
		}
	}
	name := endpointName(args.ContainerID, args.IfName, c.Network)
	att, err := ag.Check(ctx, agentapi.CheckRequest{Endpoint: name, Netns: args.Netns, Ifname: args.IfName})
	if err != nil {
		return agentErr("CHECK of container "+args.ContainerID, err)
	}
	if c.PrevResult != nil {
		prev, err := types100.NewResultFromResult(c.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "daoli: cannot convert prevResult", err.Error())
		}
		found := false
		for _, ip := range prev.IPs {
			found = found || ip.Address.IP.Equal(att.Endpoint.IP.AsSlice())
		}
		if !found {
			return types.NewError(types.ErrInternal, fmt.Sprintf("daoli: the runtime's result for %s does not hold the endpoint's address %s", args.ContainerID, att.Endpoint.IP), "")
		}
	}
	return nil
}

// cmdGC removes this server's endpoints of the network that the plugin
// made and the runtime no longer lists.
func cmdGC(args *skel.CmdArgs) error {
	c, ag, ctx, cancel, err := setup(args)
	if err != nil {
		return err
	}
	defer cancel()
	valid := map[string]bool{}
	for _, a := range c.ValidAttachments {
		valid[endpointName(a.ContainerID, a.IfName, c.Network)] = true
	}
	eps, err := ag.Endpoints(ctx)
	if err != nil {
		return agentErr("GC", err)
	}
	var errs []error
	for _, e := range eps {
		if e.Network != c.Network || !strings.HasPrefix(e.Name, namePrefix) || valid[e.Name] {
			continue
		}
		if _, err := ag.Detach(ctx, agentapi.DetachRequest{Endpoint: e.Name}); err != nil {
			var ae *agentapi.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
				errs = append(errs, fmt.Errorf("endpoint %s (%s): %w", e.Name, e.IP, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return agentErr("GC", err)
	}
	return nil
}

// cmdStatus fails while the agent, or every mapper it knows, is
// unreachable: the runtime then does not schedule pods here.
func cmdStatus(args *skel.CmdArgs) error {
	_, ag, ctx, cancel, err := setup(args)
	if err != nil {
		return err
	}
	defer cancel()
	if _, err := ag.Ready(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "daoli: "+err.Error(), "")
	}
	return nil
}

// agentErr makes a CNI error of an agent's: "try again later" when the
// agent cannot be reached or the registry is unavailable.
func agentErr(what string, err error) *types.Error {
	code := types.ErrInternal
	var ae *agentapi.Error
	switch {
	case !errors.As(err, &ae):
		code = types.ErrTryAgainLater // no answer from the agent
	case ae.Status == http.StatusServiceUnavailable:
		code = types.ErrTryAgainLater
	case ae.Status == http.StatusBadRequest, ae.Status == http.StatusNotFound && strings.Contains(ae.Msg, "network"):
		code = types.ErrInvalidNetworkConfig
	}
	return types.NewError(code, "daoli: "+what+": "+err.Error(), "")
}
