package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/google/go-cmp/cmp"
)

// errString is err's message, or "" for nil, so that tables can state
// the exact error a user sees.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// checkFlagError checks that a non-nil err is a *flagError for flag.
func checkFlagError(t *testing.T, err error, flag string) {
	t.Helper()
	if err == nil || flag == "" {
		return
	}
	var fe *flagError
	if !errors.As(err, &fe) {
		t.Fatalf("error %q is %T, want *flagError", err, err)
	}
	if fe.Flag != flag {
		t.Errorf("error names flag %q, want %q", fe.Flag, flag)
	}
}

func TestNetworkCreateFlags(t *testing.T) {
	tests := []struct {
		name     string
		flags    networkCreateFlags
		want     mapper.NetworkSpec
		wantErr  string
		wantFlag string
	}{
		{
			name:  "subnet only",
			flags: networkCreateFlags{subnet: "10.1.0.0/24"},
			want:  mapper.NetworkSpec{Name: "net1", Subnet: netip.MustParsePrefix("10.1.0.0/24")},
		},
		{
			name:  "gateway",
			flags: networkCreateFlags{subnet: "10.1.0.0/24", gateway: "10.1.0.254"},
			want:  mapper.NetworkSpec{Name: "net1", Subnet: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("10.1.0.254")},
		},
		{
			name:     "subnet without length",
			flags:    networkCreateFlags{subnet: "10.1.0.0"},
			wantErr:  `--subnet "10.1.0.0": no '/'; want a CIDR such as 10.1.0.0/24`,
			wantFlag: "subnet",
		},
		{
			name:  "groups",
			flags: networkCreateFlags{subnet: "10.1.0.0/24", groups: "prod, web,,"},
			want:  mapper.NetworkSpec{Name: "net1", Subnet: netip.MustParsePrefix("10.1.0.0/24"), Groups: []string{"prod", "web"}},
		},
		{
			name:     "bad gateway",
			flags:    networkCreateFlags{subnet: "10.1.0.0/24", gateway: "10.1.0"},
			wantErr:  `--gateway "10.1.0": IPv4 address too short; want an IPv4 address such as 10.1.0.5`,
			wantFlag: "gateway",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.spec("net1")
			if errString(err) != tt.wantErr {
				t.Fatalf("error = %q, want %q", errString(err), tt.wantErr)
			}
			checkFlagError(t, err, tt.wantFlag)
			if diff := cmp.Diff(tt.want, got, addrCmp...); diff != "" {
				t.Errorf("spec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// addrCmp compares netip values by value; cmp cannot look inside them.
var addrCmp = []cmp.Option{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func TestServerAddFlags(t *testing.T) {
	tests := []struct {
		name     string
		flags    serverAddFlags
		want     mapper.ServerSpec
		wantErr  string
		wantFlag string
	}{
		{
			name:  "two addresses",
			flags: serverAddFlags{ips: []string{"192.168.0.11", "192.168.1.11"}, mac: "02:00:C0:A8:00:0B", uplink: "eth0"},
			want: mapper.ServerSpec{
				Name: "s1", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.11"), netip.MustParseAddr("192.168.1.11")},
				MAC: mustMAC("02:00:c0:a8:00:0b"), Uplink: "eth0",
			},
		},
		{
			name:     "second address bad",
			flags:    serverAddFlags{ips: []string{"192.168.0.11", "192.168.1"}, mac: "02:00:c0:a8:00:0b"},
			wantErr:  `--ip "192.168.1": IPv4 address too short; want an IPv4 address such as 10.1.0.5`,
			wantFlag: "ip",
		},
		{
			name:     "malformed mac",
			flags:    serverAddFlags{ips: []string{"192.168.0.11"}, mac: "02:00:c0"},
			wantErr:  `--mac "02:00:c0": want six hex bytes such as 02:42:0a:01:00:05`,
			wantFlag: "mac",
		},
		{
			name:     "64-bit mac",
			flags:    serverAddFlags{ips: []string{"192.168.0.11"}, mac: "02:00:c0:a8:00:0b:00:01"},
			wantErr:  `--mac "02:00:c0:a8:00:0b:00:01": want a 48-bit address, got 64 bits`,
			wantFlag: "mac",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.spec("s1")
			if errString(err) != tt.wantErr {
				t.Fatalf("error = %q, want %q", errString(err), tt.wantErr)
			}
			checkFlagError(t, err, tt.wantFlag)
			if diff := cmp.Diff(tt.want, got, addrCmp...); diff != "" {
				t.Errorf("spec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEndpointAddFlags(t *testing.T) {
	base := func(mod func(*endpointAddFlags)) endpointAddFlags {
		f := endpointAddFlags{network: "net1", ip: "10.1.0.5", server: "s1", ports: []string{"80/tcp"}, mode: "balance"}
		mod(&f)
		return f
	}
	tests := []struct {
		name     string
		flags    endpointAddFlags
		want     mapper.EndpointSpec
		wantErr  string
		wantFlag string
	}{
		{
			name: "everything",
			flags: base(func(f *endpointAddFlags) {
				f.name, f.mac, f.iface, f.priority = "web-1", "02-42-0a-01-00-05", "veth1", 7
				f.ports = []string{"80/tcp", "53/UDP", "8080"}
				f.mode = "FailOver"
			}),
			want: mapper.EndpointSpec{
				Name: "web-1", Network: "net1", IP: netip.MustParseAddr("10.1.0.5"), MAC: mustMAC("02:42:0a:01:00:05"),
				Server: "s1", Interface: "veth1",
				Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}, {Port: 53, Protocol: mapper.UDP}, {Port: 8080, Protocol: mapper.TCP}},
				Mode:  mapper.Failover, Priority: 7,
			},
		},
		{
			name:  "no mac, no ports",
			flags: base(func(f *endpointAddFlags) { f.ports = nil }),
			want: mapper.EndpointSpec{
				Network: "net1", IP: netip.MustParseAddr("10.1.0.5"), Server: "s1",
				Ports: []mapper.PortSpec{}, Mode: mapper.Balance,
			},
		},
		{
			name:     "port 0",
			flags:    base(func(f *endpointAddFlags) { f.ports = []string{"80/tcp", "0"} }),
			wantErr:  `--port "0": want a number from 1 to 65535, optionally followed by /tcp or /udp`,
			wantFlag: "port",
		},
		{
			name:     "port too large",
			flags:    base(func(f *endpointAddFlags) { f.ports = []string{"65536/tcp"} }),
			wantErr:  `--port "65536/tcp": want a number from 1 to 65535, optionally followed by /tcp or /udp`,
			wantFlag: "port",
		},
		{
			name:     "unknown protocol",
			flags:    base(func(f *endpointAddFlags) { f.ports = []string{"80/sctp"} }),
			wantErr:  `--port "80/sctp": unknown protocol "sctp", want tcp or udp`,
			wantFlag: "port",
		},
		{
			name:     "bad ip",
			flags:    base(func(f *endpointAddFlags) { f.ip = "10.1.0.x" }),
			wantErr:  `--ip "10.1.0.x": unexpected character (at "x"); want an IPv4 address such as 10.1.0.5`,
			wantFlag: "ip",
		},
		{
			name:     "malformed mac",
			flags:    base(func(f *endpointAddFlags) { f.mac = "zz:zz" }),
			wantErr:  `--mac "zz:zz": want six hex bytes such as 02:42:0a:01:00:05`,
			wantFlag: "mac",
		},
		{
			name:     "unknown mode",
			flags:    base(func(f *endpointAddFlags) { f.mode = "random" }),
			wantErr:  `--mode "random": unknown mode, want balance or failover`,
			wantFlag: "mode",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.spec()
			if errString(err) != tt.wantErr {
				t.Fatalf("error = %q, want %q", errString(err), tt.wantErr)
			}
			checkFlagError(t, err, tt.wantFlag)
			if diff := cmp.Diff(tt.want, got, addrCmp...); diff != "" {
				t.Errorf("spec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMapperFlags(t *testing.T) {
	defaults := func(mod func(*mapperFlags)) mapperFlags {
		f := mapperFlags{
			listen: "127.0.0.1:9470", db: "./daoli.db", blockSize: 0,
			wirePorts: "16384-32767", identityPorts: "32768-60927", logLevel: "info", logFormat: "text",
			limits: mapper.DefaultLimits,
		}
		mod(&f)
		return f
	}
	tests := []struct {
		name     string
		flags    mapperFlags
		want     mapperConfig
		wantErr  string
		wantFlag string
	}{
		{
			name:  "defaults",
			flags: defaults(func(*mapperFlags) {}),
			want: mapperConfig{
				listen: "127.0.0.1:9470", db: "./daoli.db",
				registry: mapper.Config{BlockSize: 0, WirePorts: mapper.DefaultWirePorts, IdentityPorts: mapper.DefaultIdentityPorts},
				level:    slog.LevelInfo, limits: mapper.DefaultLimits,
			},
		},
		{
			name: "everything set",
			flags: defaults(func(f *mapperFlags) {
				f.listen, f.db, f.blockSize, f.insecure = ":0", "/var/lib/daoli/registry.db", 64, true
				f.wirePorts, f.identityPorts, f.logLevel, f.logFormat = "20000-29999", "40000-49999", "DEBUG", "json"
				f.limits = mapper.Limits{}
			}),
			want: mapperConfig{
				listen: ":0", db: "/var/lib/daoli/registry.db",
				registry: mapper.Config{BlockSize: 64, WirePorts: mapper.PortRange{First: 20000, Last: 29999}, IdentityPorts: mapper.PortRange{First: 40000, Last: 49999}},
				level:    slog.LevelDebug, json: true, insecure: true,
			},
		},
		{
			name:     "listen without port",
			flags:    defaults(func(f *mapperFlags) { f.listen = "127.0.0.1" }),
			wantErr:  `--listen "127.0.0.1": address 127.0.0.1: missing port in address; want host:port such as 127.0.0.1:9470`,
			wantFlag: "listen",
		},
		{
			name:     "listen port not a number",
			flags:    defaults(func(f *mapperFlags) { f.listen = "127.0.0.1:http" }),
			wantErr:  `--listen "127.0.0.1:http": port "http" is not a number from 0 to 65535`,
			wantFlag: "listen",
		},
		{
			name:     "no db",
			flags:    defaults(func(f *mapperFlags) { f.db = "" }),
			wantErr:  `--db "": missing; want the path of the registry file`,
			wantFlag: "db",
		},
		{
			name:     "block size not a power of two",
			flags:    defaults(func(f *mapperFlags) { f.blockSize = 100 }),
			wantErr:  `--block-size "100": want a power of two from 8 to 32768`,
			wantFlag: "block-size",
		},
		{
			name:     "block size too small",
			flags:    defaults(func(f *mapperFlags) { f.blockSize = 4 }),
			wantErr:  `--block-size "4": want a power of two from 8 to 32768`,
			wantFlag: "block-size",
		},
		{
			name:     "block size too small",
			flags:    defaults(func(f *mapperFlags) { f.blockSize = 4 }),
			wantErr:  `--block-size "4": want a power of two from 8 to 32768`,
			wantFlag: "block-size",
		},
		{
			name:     "wire ports reversed",
			flags:    defaults(func(f *mapperFlags) { f.wirePorts = "32767-16384" }),
			wantErr:  `--wire-ports "32767-16384": want FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 16384-32767`,
			wantFlag: "wire-ports",
		},
		{
			name:     "identity ports not a range",
			flags:    defaults(func(f *mapperFlags) { f.identityPorts = "32768" }),
			wantErr:  `--identity-ports "32768": want FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 16384-32767`,
			wantFlag: "identity-ports",
		},
		{
			name:     "identity ports start at 0",
			flags:    defaults(func(f *mapperFlags) { f.identityPorts = "0-100" }),
			wantErr:  `--identity-ports "0-100": want FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 16384-32767`,
			wantFlag: "identity-ports",
		},
		{
			name:     "log level",
			flags:    defaults(func(f *mapperFlags) { f.logLevel = "loud" }),
			wantErr:  `--log-level "loud": want debug, info, warn or error`,
			wantFlag: "log-level",
		},
		{
			name:     "log format",
			flags:    defaults(func(f *mapperFlags) { f.logFormat = "xml" }),
			wantErr:  `--log-format "xml": want text or json`,
			wantFlag: "log-format",
		},
		{
			name: "etcd",
			flags: defaults(func(f *mapperFlags) {
				f.etcd, f.etcdPrefix, f.serverTTL = "http://10.0.0.1:2379, http://10.0.0.2:2379", "/a", 3*time.Second
			}),
			want: mapperConfig{
				listen: "127.0.0.1:9470", db: "./daoli.db",
				etcd:     &store.EtcdConfig{Endpoints: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}, Prefix: "/a"},
				registry: mapper.Config{WirePorts: mapper.DefaultWirePorts, IdentityPorts: mapper.DefaultIdentityPorts, ServerTTL: 3 * time.Second},
				level:    slog.LevelInfo, limits: mapper.DefaultLimits,
			},
		},
		{
			name:     "etcd member without a scheme",
			flags:    defaults(func(f *mapperFlags) { f.etcd = "10.0.0.1:2379" }),
			wantErr:  `--etcd "10.0.0.1:2379": "10.0.0.1:2379" is not a member's client URL; want http(s)://host:port, several separated by commas`,
			wantFlag: "etcd",
		},
		{
			name:     "etcd TLS over http",
			flags:    defaults(func(f *mapperFlags) { f.etcd, f.etcdCA = "http://10.0.0.1:2379", "ca.pem" }),
			wantErr:  `--etcd "http://10.0.0.1:2379": http://10.0.0.1:2379 is plain http but TLS files were given; want https:// URLs`,
			wantFlag: "etcd",
		},
		{
			name:     "etcd cert without key",
			flags:    defaults(func(f *mapperFlags) { f.etcd, f.etcdCert = "https://10.0.0.1:2379", "mapper.pem" }),
			wantErr:  `--etcd-cert "mapper.pem": --etcd-cert needs --etcd-key, the certificate's key`,
			wantFlag: "etcd-cert",
		},
		{
			name:     "etcd key without cert, over http",
			flags:    defaults(func(f *mapperFlags) { f.etcd, f.etcdKey = "http://10.0.0.1:2379", "k.pem" }),
			wantErr:  `--etcd-key "k.pem": --etcd-key needs --etcd-cert, the certificate it is the key of`,
			wantFlag: "etcd-key",
		},
		{
			name:     "etcd prefix without a slash",
			flags:    defaults(func(f *mapperFlags) { f.etcd, f.etcdPrefix = "http://10.0.0.1:2379", "cluster-a" }),
			wantErr:  `--etcd-prefix "cluster-a": want a key prefix starting with /, such as /cluster-a`,
			wantFlag: "etcd-prefix",
		},
		{
			name:     "etcd CA missing",
			flags:    defaults(func(f *mapperFlags) { f.etcd, f.etcdCA = "https://10.0.0.1:2379", "/nonexistent/ca.pem" }),
			wantErr:  `--etcd-ca "/nonexistent/ca.pem": open /nonexistent/ca.pem: no such file or directory`,
			wantFlag: "etcd-ca",
		},
		{
			name:     "TLS files without etcd",
			flags:    defaults(func(f *mapperFlags) { f.etcdKey = "k.pem" }),
			wantErr:  `--etcd "": missing; --etcd-ca, --etcd-cert, --etcd-key and --etcd-prefix only apply with --etcd`,
			wantFlag: "etcd",
		},
		{
			name:     "server TTL below a second",
			flags:    defaults(func(f *mapperFlags) { f.serverTTL = 500 * time.Millisecond }),
			wantErr:  `--server-ttl "500ms": want one second or more (leases have a granularity of one second)`,
			wantFlag: "server-ttl",
		},
		{
			name:     "plain HTTP beyond loopback",
			flags:    defaults(func(f *mapperFlags) { f.listen = "10.0.0.1:9470" }),
			wantErr:  `--listen "10.0.0.1:9470": a mapper without TLS serves only on loopback, since anyone who reaches it may rewrite the registry; give --tls-cert, --tls-key and --tls-client-ca (docs/security.md), or --insecure on a network only trusted machines reach`,
			wantFlag: "listen",
		},
		{
			name:     "certificate without key",
			flags:    defaults(func(f *mapperFlags) { f.tlsCert = "m.pem" }),
			wantErr:  `--tls-cert "m.pem": --tls-cert needs --tls-key, the certificate's key`,
			wantFlag: "tls-cert",
		},
		{
			name:     "TLS without client certificates",
			flags:    defaults(func(f *mapperFlags) { f.tlsCert, f.tlsKey = "m.pem", "m-key.pem" }),
			wantErr:  `--tls-client-ca "": missing; a mapper over TLS requires client certificates signed by this CA (daoli ca init makes one)`,
			wantFlag: "tls-client-ca",
		},
		{
			name: "TLS and insecure",
			flags: defaults(func(f *mapperFlags) {
				f.tlsCert, f.tlsKey, f.tlsClientCA, f.insecure = "m.pem", "m-key.pem", "ca.pem", true
			}),
			wantErr:  `--insecure "true": contradicts --tls-cert`,
			wantFlag: "insecure",
		},
		{
			name:     "negative rate",
			flags:    defaults(func(f *mapperFlags) { f.limits.Rate = -1 }),
			wantErr:  `--rate "-1": want requests per second per client, or 0 for no limit`,
			wantFlag: "rate",
		},
		{
			name:     "rate without burst",
			flags:    defaults(func(f *mapperFlags) { f.limits.Burst = 0 }),
			wantErr:  `--burst "0": want 1 or more requests`,
			wantFlag: "burst",
		},
		{
			name:     "negative watches",
			flags:    defaults(func(f *mapperFlags) { f.limits.Watches = -2 }),
			wantErr:  `--max-watches "-2": want watch streams per client, or 0 for no limit`,
			wantFlag: "max-watches",
		},
		{
			name:     "negative list",
			flags:    defaults(func(f *mapperFlags) { f.limits.ListPage = -1 }),
			wantErr:  `--max-list "-1": want items per list response, or 0 for no limit`,
			wantFlag: "max-list",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.flags.config()
			if errString(err) != tt.wantErr {
				t.Fatalf("error = %q, want %q", errString(err), tt.wantErr)
			}
			checkFlagError(t, err, tt.wantFlag)
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(mapperConfig{})); diff != "" {
				t.Errorf("config mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTrimValue(t *testing.T) {
	tests := []struct {
		msg, value, want string
	}{
		{`port "80/sctp": unknown protocol "sctp"`, "80/sctp", `unknown protocol "sctp"`},
		{`ParseAddr("10.1.0.x"): unexpected character`, "10.1.0.x", "unexpected character"},
		{`netip.ParsePrefix("10.1.0.0"): no '/'`, "10.1.0.0", "no '/'"},
		{"want a power of two", "100", "want a power of two"},
		{`the value "x" is mentioned late in this message: so keep it`, "x", `the value "x" is mentioned late in this message: so keep it`},
		{`port "80":`, "80", `port "80":`},
	}
	for _, tt := range tests {
		if got := trimValue(tt.msg, tt.value); got != tt.want {
			t.Errorf("trimValue(%q, %q) = %q, want %q", tt.msg, tt.value, got, tt.want)
		}
	}
}

func TestNewClient(t *testing.T) {
	tests := []struct {
		addr    string
		wantURL string
		wantErr string
	}{
		{addr: "127.0.0.1:9470", wantURL: "http://127.0.0.1:9470"},
		{addr: "http://127.0.0.1:9470/", wantURL: "http://127.0.0.1:9470"},
		{addr: "https://mapper.example:9470", wantURL: "https://mapper.example:9470"},
		{addr: "10.0.0.1:9470, 10.0.0.2:9470", wantURL: "http://10.0.0.1:9470,http://10.0.0.2:9470"},
		{addr: "10.0.0.1:9470,,10.0.0.2:9470", wantErr: `--mapper "10.0.0.1:9470,,10.0.0.2:9470": an empty address between commas`},
		{addr: "10.0.0.1:9470,ftp://x", wantErr: `--mapper "ftp://x": scheme "ftp", want http or https`},
		{addr: "", wantErr: "--mapper: missing; want host:port or a URL such as http://127.0.0.1:9470"},
		{addr: "ftp://mapper.example", wantErr: `--mapper "ftp://mapper.example": scheme "ftp", want http or https`},
		{addr: "http://", wantErr: `--mapper "http://": no host; want host:port such as 127.0.0.1:9470`},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			cl, err := newClient(tt.addr, false)
			if errString(err) != tt.wantErr {
				t.Fatalf("error = %q, want %q", errString(err), tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := strings.Join(cl.URLs(), ","); got != tt.wantURL {
				t.Errorf("URLs() = %q, want %q", got, tt.wantURL)
			}
		})
	}
}

// TestMapperTLSCertIsAMapper: a mapper refuses to serve with a client's
// certificate, saying what it holds and how to make the right one.
func TestMapperTLSCertIsAMapper(t *testing.T) {
	p := pkitest.New(t)
	cert, key := p.Issue(mapper.RoleReader, "dash")
	f := mapperFlags{listen: "127.0.0.1:9470", db: "./daoli.db", wirePorts: "16384-32767", identityPorts: "32768-60927",
		logLevel: "info", logFormat: "text", limits: mapper.DefaultLimits, tlsCert: cert, tlsKey: key, tlsClientCA: p.CAFile()}
	_, err := f.config()
	if want := "the certificate names reader dash, not a mapper"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a reader's certificate as the mapper's: %v, want an error saying %q", err, want)
	}
	checkFlagError(t, err, "tls-cert")
	cert, key = p.Issue(mapper.RoleMapper, "m1", "127.0.0.1")
	f.tlsCert, f.tlsKey = cert, key
	if _, err := f.config(); err != nil {
		t.Errorf("a mapper's certificate: %v", err)
	}
}
