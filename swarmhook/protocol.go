package swarmhook

// The JSON of Docker's legacy plugin protocol, as libnetwork's remote
// network driver (drivers/remote/api) and remote IPAM (ipams/remote/api)
// speak it: every call is a POST to /<Kind>.<Method> with a JSON body.
// The types are our own, so that only the wire format ties us to Docker.

// Plugin kinds a plugin implements, in Plugin.Activate's answer.
const (
	kindNetwork = "NetworkDriver"
	kindIPAM    = "IpamDriver"
)

// pluginContentType is what Docker's plugin client sends and accepts.
const pluginContentType = "application/vnd.docker.plugins.v1.2+json"

type activateResponse struct {
	Implements []string
}

// errorResponse is how both protocols report a failure: the network
// driver reads Err, the IPAM Error; both accept the other field.
type errorResponse struct {
	Err   string
	Error string
}

// ---- network driver ----

type capabilitiesResponse struct {
	Scope             string
	ConnectivityScope string
}

// ipamData is one address pool of a network as the IPAM handed it out.
type ipamData struct {
	AddressSpace string
	Pool         string            // CIDR
	Gateway      string            // CIDR: address/prefix length
	AuxAddresses map[string]string `json:",omitempty"`
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct {
	NetworkID string
}

type endpointInterface struct {
	Address     string `json:",omitempty"` // CIDR
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	// Interface holds only what the request lacked: Docker refuses an
	// answer that changes an address or MAC it chose.
	Interface *endpointInterface `json:",omitempty"`
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type endpointInfoResponse struct {
	Value map[string]any
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type joinResponse struct {
	InterfaceName         interfaceName
	Gateway               string `json:",omitempty"`
	DisableGatewayService bool
}

type externalConnectivityRequest struct {
	NetworkID  string
	EndpointID string
	Options    map[string]any
}

// ---- IPAM ----

type ipamCapabilitiesResponse struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

type addressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string // CIDR
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}

// Option keys Docker puts into requests.
const (
	// optRequestAddressType marks an IPAM request for a network's gateway.
	optRequestAddressType = "RequestAddressType"
	gatewayAddressType    = "com.docker.network.gateway"
	// optGeneric holds a network's driver options (docker network create -o).
	optGeneric = "com.docker.network.generic"
	// optExposedPorts lists the ports an endpoint's container exposes.
	optExposedPorts = "com.docker.network.endpoint.exposedports"
	// optPortMap lists its published ports (-p).
	optPortMap = "com.docker.network.portmap"
)

// transportPort is libnetwork's types.TransportPort: Proto 6 is TCP, 17 UDP.
type transportPort struct {
	Proto int
	Port  uint16
}

// portBinding is libnetwork's types.PortBinding.
type portBinding struct {
	Proto       int
	IP          string
	Port        uint16
	HostIP      string
	HostPort    uint16
	HostPortEnd uint16
}
