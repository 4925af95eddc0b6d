package swarmhook

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/daolinet/daoli/mapper"
)

// Endpoint options a container sets with
//
//	docker run --network name=NET,driver-opt=daoli.service=web,driver-opt=daoli.mode=failover ...
//	docker network connect --driver-opt daoli.service=web NET CONTAINER
//
// Docker hands driver options to the network driver's CreateEndpoint, the
// one call that also carries the endpoint's address. Container labels
// reach no plugin call, which is why the declaration is a driver option.
const (
	// OptService declares the service the container serves: containers
	// that declare the same service may hold the same IP in a network.
	OptService = "daoli.service"
	// OptMode is the service's mode: balance (default) or failover.
	OptMode = "daoli.mode"
	// OptPriority is the endpoint's failover priority, 0-65535, higher
	// preferred.
	OptPriority = "daoli.priority"
	// OptPorts adds served ports, "80/tcp,53/udp", to those the container
	// exposes (EXPOSE, --expose, -p).
	OptPorts = "daoli.ports"
	// OptNetwork, a network option (docker network create -o), names the
	// mapper network when it should differ from the Docker network's name,
	// or when the plugin runs without access to the Docker API.
	OptNetwork = "daoli.network"
)

// declaration is what a container declared about its endpoint.
type declaration struct {
	Service  string
	Mode     mapper.Mode
	Priority uint16
	Ports    []mapper.PortSpec
}

// parseDeclaration reads the daoli options and exposed ports of a
// CreateEndpoint request.
func parseDeclaration(opts map[string]any) (declaration, error) {
	var d declaration
	str := func(key string) (string, error) {
		v, ok := opts[key]
		if !ok {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("driver option %s: want a string, got %T", key, v)
		}
		return s, nil
	}
	var err error
	if d.Service, err = str(OptService); err != nil {
		return d, err
	}
	if d.Service != "" {
		if err := validService(d.Service); err != nil {
			return d, err
		}
	}
	mode, err := str(OptMode)
	if err != nil {
		return d, err
	}
	switch mapper.Mode(mode) {
	case "", mapper.Balance, mapper.Failover:
		d.Mode = mapper.Mode(mode)
	default:
		return d, fmt.Errorf("driver option %s=%q: want balance or failover", OptMode, mode)
	}
	prio, err := str(OptPriority)
	if err != nil {
		return d, err
	}
	if prio != "" {
		n, err := strconv.ParseUint(prio, 10, 16)
		if err != nil {
			return d, fmt.Errorf("driver option %s=%q: want a whole number from 0 to 65535", OptPriority, prio)
		}
		d.Priority = uint16(n)
	}
	seen := map[mapper.PortSpec]bool{}
	add := func(p mapper.PortSpec) {
		if !seen[p] {
			seen[p] = true
			d.Ports = append(d.Ports, p)
		}
	}
	if v, ok := opts[optExposedPorts]; ok && v != nil {
		var tps []transportPort
		if err := remarshal(v, &tps); err != nil {
			return d, fmt.Errorf("option %s: %w", optExposedPorts, err)
		}
		for _, tp := range tps {
			switch tp.Proto {
			case 6:
				add(mapper.PortSpec{Port: tp.Port, Protocol: mapper.TCP})
			case 17:
				add(mapper.PortSpec{Port: tp.Port, Protocol: mapper.UDP})
			} // SCTP and others: the dataplane serves TCP and UDP only
		}
	}
	ports, err := str(OptPorts)
	if err != nil {
		return d, err
	}
	for _, s := range strings.Split(ports, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := mapper.ParsePortSpec(s)
		if err != nil {
			return d, fmt.Errorf("driver option %s: %w", OptPorts, err)
		}
		add(p)
	}
	return d, nil
}

// remarshal converts a value decoded into any into a typed one.
func remarshal(v, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// validService accepts what may prefix a mapper endpoint name: letters,
// digits, - and _, first a letter or digit, at most 48 characters.
func validService(s string) error {
	if len(s) > 48 {
		return fmt.Errorf("driver option %s=%q: longer than 48 characters", OptService, s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_')
		if !ok {
			return fmt.Errorf("driver option %s=%q: want letters, digits, and - _ after the first character", OptService, s)
		}
	}
	return nil
}

// The mapper has no field for a Docker service, so the plugin records it
// in the endpoint's name, where every plugin on every server reads it:
// "<service>.<endpoint ID, 12 hex digits>" for a container that declared
// a service, "docker-<endpoint ID>" for one that did not.
const idLen = 12

func endpointName(service, dockerEndpointID string) string {
	id := dockerEndpointID
	if len(id) > idLen {
		id = id[:idLen]
	}
	if service == "" {
		return "docker-" + id
	}
	return service + "." + id
}

// serviceOf returns the service recorded in an endpoint name, or "" for a
// container that declared none and for endpoints not made by the plugin.
func serviceOf(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || len(name)-i-1 != idLen {
		return ""
	}
	for _, c := range name[i+1:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return ""
		}
	}
	return name[:i]
}
