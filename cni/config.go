package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/daolinet/daoli/agentapi"
	"github.com/daolinet/daoli/mapper"
)

// Pod annotations the plugin reads, passed by the runtime in
// runtimeConfig under the capability "io.kubernetes.cri.pod-annotations"
// (containerd and CRI-O pass them when the plugin's configuration asks
// for that capability).
const (
	// AnnotIP is the pod's address; without it the pod gets its owner's
	// address, or a free one that the mapper remembers for the owner.
	AnnotIP = "daoli.io/ip"
	// AnnotService declares the service the pod is a replica of: the
	// pods of one namespace that declare the same service share one IP.
	AnnotService = "daoli.io/service"
	// AnnotMode is the service's mode: balance (default) or failover.
	AnnotMode = "daoli.io/mode"
	// AnnotPriority is the pod's failover priority, 0-65535, higher
	// preferred.
	AnnotPriority = "daoli.io/priority"
	// AnnotPorts lists ports the pod serves, "8080/tcp,53/udp", beside
	// the configuration's ports. daoli delivers only to served ports.
	AnnotPorts = "daoli.io/ports"
)

// Config is the plugin's entry in a network configuration list.
type Config struct {
	types.PluginConf
	// Network is the mapper network; zero means the list's name.
	Network string `json:"network,omitempty"`
	// AgentSocket is the local agent's socket; zero means the one socket
	// in /run/daoli.
	AgentSocket string `json:"agentSocket,omitempty"`
	// Ports every pod of the network serves, beside its annotation's.
	Ports []string `json:"ports,omitempty"`
	// Mode and Priority are defaults for pods that do not annotate them.
	Mode     mapper.Mode `json:"mode,omitempty"`
	Priority uint16      `json:"priority,omitempty"`

	RuntimeConfig struct {
		Annotations map[string]string `json:"io.kubernetes.cri.pod-annotations,omitempty"`
		IPs         []string          `json:"ips,omitempty"`
		MAC         string            `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitzero"`
}

// parseConfig reads the plugin's configuration from stdin's bytes.
func parseConfig(b []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "daoli: cannot parse the network configuration", err.Error())
	}
	if c.Network == "" {
		c.Network = c.Name
	}
	if c.Network == "" {
		return nil, configErr("neither \"network\" nor the list's \"name\" names a daoli network")
	}
	switch c.Mode {
	case "", mapper.Balance, mapper.Failover:
	default:
		return nil, configErr("\"mode\": %q; want balance or failover", c.Mode)
	}
	for i, p := range c.Ports {
		if _, err := mapper.ParsePortSpec(p); err != nil {
			return nil, configErr("\"ports\"[%d]: %v", i, err)
		}
	}
	return &c, nil
}

func configErr(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "daoli: invalid network configuration: "+fmt.Sprintf(format, args...), "")
}

// agentSocket is the configured socket, or the only one in the default
// run directory.
func (c *Config) agentSocket() (string, error) {
	if c.AgentSocket != "" {
		return c.AgentSocket, nil
	}
	socks, _ := filepath.Glob(filepath.Join(agentapi.DefaultRunDir, "*.sock"))
	switch len(socks) {
	case 1:
		return socks[0], nil
	case 0:
		return "", types.NewError(types.ErrTryAgainLater, "daoli: no agent socket in "+agentapi.DefaultRunDir+": is daoli agent running on this server?", "")
	default:
		return "", configErr("%d agent sockets in %s (%s); set \"agentSocket\"", len(socks), agentapi.DefaultRunDir, strings.Join(socks, ", "))
	}
}

// k8sArgs are the CNI_ARGS Kubernetes runtimes set.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the runtime's names
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
}

// identity is what one attachment asks of the mapper.
type identity struct {
	Owner    string
	Name     string // the endpoint's, derived from the attachment
	IP       netip.Addr
	MAC      mapper.MAC
	Ports    []mapper.PortSpec
	Mode     mapper.Mode
	Priority uint16
	Service  string
}

// endpointName names the endpoint of one attachment: the container, its
// interface and the network make it, and DEL, CHECK and GC find it again
// from the same three without any state on the server.
func endpointName(containerID, ifname, network string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifname + "\x00" + network))
	return namePrefix + hex.EncodeToString(h[:10])
}

// namePrefix marks the endpoints the plugin made, for GC.
const namePrefix = "cni-"

// resolveIdentity reads the attachment's identity from the configuration,
// CNI_ARGS and the pod's annotations. Annotations are the pod author's
// and are checked as hostile input: a bad one fails the ADD and names
// itself.
func resolveIdentity(c *Config, containerID, ifname, cniArgs string) (identity, error) {
	id := identity{Name: endpointName(containerID, ifname, c.Network), Mode: c.Mode, Priority: c.Priority}
	var ka k8sArgs
	if err := types.LoadArgs(cniArgs, &ka); err != nil {
		return id, types.NewError(types.ErrInvalidEnvironmentVariables, "daoli: cannot parse CNI_ARGS", err.Error())
	}
	ns, pod := string(ka.K8S_POD_NAMESPACE), string(ka.K8S_POD_NAME)
	seen := map[mapper.PortSpec]bool{}
	addPorts := func(what string, specs []string) error {
		for _, s := range specs {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			p, err := mapper.ParsePortSpec(s)
			if err != nil {
				return annotErr(what, "%v", err)
			}
			if !seen[p] {
				seen[p] = true
				id.Ports = append(id.Ports, p)
			}
		}
		return nil
	}
	if err := addPorts("ports", c.Ports); err != nil {
		return id, err
	}
	a := c.RuntimeConfig.Annotations
	if v, ok := a[AnnotService]; ok {
		if err := validService(v); err != nil {
			return id, annotErr(AnnotService, "%v", err)
		}
		id.Service = v
	}
	if v, ok := a[AnnotMode]; ok {
		switch mapper.Mode(v) {
		case mapper.Balance, mapper.Failover:
			id.Mode = mapper.Mode(v)
		default:
			return id, annotErr(AnnotMode, "%q: want balance or failover", v)
		}
	}
	if v, ok := a[AnnotPriority]; ok {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return id, annotErr(AnnotPriority, "%q: want a whole number from 0 to 65535", v)
		}
		id.Priority = uint16(n)
	}
	if v, ok := a[AnnotPorts]; ok {
		if err := addPorts(AnnotPorts, strings.Split(v, ",")); err != nil {
			return id, err
		}
	}
	ipText := a[AnnotIP]
	what := AnnotIP
	if ipText == "" && len(c.RuntimeConfig.IPs) > 0 {
		ipText, what = c.RuntimeConfig.IPs[0], "runtimeConfig.ips"
		if len(c.RuntimeConfig.IPs) > 1 {
			return id, annotErr(what, "%d addresses; an attachment has one", len(c.RuntimeConfig.IPs))
		}
	}
	if ipText != "" {
		addr, err := netip.ParseAddr(ipText)
		if err != nil {
			// The "ips" capability carries CIDRs.
			p, perr := netip.ParsePrefix(ipText)
			if perr != nil {
				return id, annotErr(what, "%q is not an IPv4 address", ipText)
			}
			addr = p.Addr()
		}
		if !addr.Is4() {
			return id, annotErr(what, "%q is not an IPv4 address", ipText)
		}
		id.IP = addr
	}
	if m := c.RuntimeConfig.MAC; m != "" {
		hw, err := net.ParseMAC(m)
		if err != nil || len(hw) != 6 {
			return id, annotErr("runtimeConfig.mac", "%q is not a MAC address", m)
		}
		copy(id.MAC[:], hw)
	}
	// The owner keeps the address. A service is the namespace's: a pod
	// may join only the replicas of its own namespace.
	switch {
	case id.Service != "" && ns != "":
		id.Owner = "service:" + ns + "/" + id.Service
	case id.Service != "":
		id.Owner = "service:" + id.Service
	case ns != "" && pod != "":
		id.Owner = "pod:" + ns + "/" + pod
	default:
		id.Owner = "container:" + containerID
	}
	return id, nil
}

func annotErr(what, format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "daoli: "+what+": "+fmt.Sprintf(format, args...), "")
}

// validService accepts letters, digits, - and _, first a letter or digit,
// at most 48 characters: the same services Docker's plugin accepts.
func validService(s string) error {
	if s == "" || len(s) > 48 {
		return fmt.Errorf("%q: want 1 to 48 characters", s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("%q: want letters, digits, and - _ after the first character", s)
		}
	}
	return nil
}
