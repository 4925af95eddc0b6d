package main

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/google/go-cmp/cmp"
)

// Fixtures: two servers, one network, two endpoints sharing 10.1.0.5:80.
var (
	testS1 = mapper.Server{
		Name: "s1", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.11")},
		MAC: mustMAC("02:00:c0:a8:00:0b"), Uplink: "eth0",
		Since: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
	testS2 = mapper.Server{
		Name: "s2", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.12"), netip.MustParseAddr("192.168.1.12")},
		MAC: mustMAC("02:00:c0:a8:00:0c"), Gone: true,
	}
	testNet = mapper.Network{Name: "net1", ID: 1, Subnet: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("10.1.0.1")}
	testE1  = mapper.Endpoint{
		ID: 1, Name: "web-1", Network: "net1", NetworkID: 1, IP: netip.MustParseAddr("10.1.0.5"),
		MAC: mustMAC("02:42:0a:01:00:05"), Server: "s1", Interface: "veth1",
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}, {Port: 53, Protocol: mapper.UDP}},
		Mode:  mapper.Balance, State: mapper.Active,
		Wire:     mapper.Block{Addr: netip.MustParseAddr("192.168.0.11"), Base: 16384, Size: 256},
		Identity: mapper.Block{Base: 32768, Size: 256},
	}
	testE2 = mapper.Endpoint{
		ID: 2, Network: "net1", NetworkID: 1, IP: netip.MustParseAddr("10.1.0.5"),
		MAC: mustMAC("02:42:0a:01:00:06"), Server: "s2",
		Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}},
		Mode:  mapper.Balance, Priority: 5, State: mapper.Down,
		Wire:     mapper.Block{Addr: netip.MustParseAddr("192.168.0.12"), Base: 16640, Size: 256},
		Identity: mapper.Block{Base: 33024, Size: 256},
	}
)

func mustMAC(s string) mapper.MAC {
	m, err := mapper.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// lines joins its arguments into text with a final newline, so that
// expected tables read as tables in the source.
func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

func TestTables(t *testing.T) {
	reached := mapper.Network{Name: "shop", ID: 4, Subnet: netip.MustParsePrefix("10.3.0.0/24"), Gateway: netip.MustParseAddr("10.3.0.1"),
		Egress: mapper.Egress{Deny: true}, Connected: []string{"net1"}, Groups: []string{"prod"},
		Exports: []mapper.Export{{IP: netip.MustParseAddr("10.3.0.5"), Port: 5432, Protocol: mapper.TCP, To: []string{"net2", "net3"}}}}
	e1, e2 := testE1, testE2
	e2.Published = []mapper.PublishedPort{{HostPort: 8080, Port: 80, Protocol: mapper.TCP}}
	tests := []struct {
		name  string
		write func(io.Writer) error
		want  string
	}{
		{
			name:  "networks",
			write: func(w io.Writer) error { return writeNetworks(w, []mapper.Network{testNet}) },
			want: lines(
				"NAME  ID  SUBNET       GATEWAY   EGRESS",
				"net1  1   10.1.0.0/24  10.1.0.1  allow",
			),
		},
		{
			name:  "no networks",
			write: func(w io.Writer) error { return writeNetworks(w, nil) },
			want:  lines("NAME  ID  SUBNET  GATEWAY  EGRESS"),
		},
		{
			name:  "servers: empty cells print as -, times in UTC to the second",
			write: func(w io.Writer) error { return writeServers(w, []mapper.Server{testS1, testS2}) },
			want: lines(
				"NAME  SERVER IPS                 SERVER MAC         UPLINK  STATE  SINCE",
				"s1    192.168.0.11               02:00:c0:a8:00:0b  eth0    alive  2026-01-02T03:04:05Z",
				"s2    192.168.0.12,192.168.1.12  02:00:c0:a8:00:0c  -       gone   -",
			),
		},
		{
			name:  "endpoints",
			write: func(w io.Writer) error { return writeEndpoints(w, []mapper.Endpoint{e1, e2}) },
			want: lines(
				"ID  NAME   NETWORK  IP        MAC                PORTS          MODE     PRIORITY  STATE   SERVER  WIRE BLOCK",
				"1   web-1  net1     10.1.0.5  02:42:0a:01:00:05  80/tcp,53/udp  balance  0         active  s1      192.168.0.11:16384-16639",
				"2   -      net1     10.1.0.5  02:42:0a:01:00:06  80/tcp         balance  5         down    s2      192.168.0.12:16640-16895",
			),
		},
		{
			name: "endpoint detail",
			write: func(w io.Writer) error {
				return writeEndpointDetail(w, mapper.EndpointDetail{Endpoint: e1, SixTuples: e1.SixTuples(&testS1)})
			},
			want: lines(
				"ID:              1",
				"Name:            web-1",
				"Network:         net1 (id 1)",
				"IP:              10.1.0.5",
				"MAC:             02:42:0a:01:00:05",
				"Ports:           80/tcp,53/udp",
				"Published:       -",
				"Mode:            balance",
				"Priority:        0",
				"State:           active",
				"Server:          s1",
				"Interface:       veth1",
				"Wire block:      192.168.0.11:16384-16639",
				"Identity block:  32768-33023",
				"",
				"SERVER MAC         SERVER IP     SERVER PORT  MAC                IP        PORT  PROTO",
				"02:00:c0:a8:00:0b  192.168.0.11  16384        02:42:0a:01:00:05  10.1.0.5  80    tcp",
				"02:00:c0:a8:00:0b  192.168.0.11  16385        02:42:0a:01:00:05  10.1.0.5  53    udp",
			),
		},
		{
			name: "services are grouped: a service's columns only on its first backend",
			write: func(w io.Writer) error {
				return writeServices(w, mapper.Services([]mapper.Server{testS1, testS2}, []mapper.Endpoint{e1, e2}))
			},
			want: lines(
				"NETWORK  SERVICE          MODE     PUBLISHED  BACKEND  SERVER  PRIORITY  STATE   6-TUPLE",
				"net1     10.1.0.5:53/udp  balance  -          web-1    s1      0         active  (02:00:c0:a8:00:0b, 192.168.0.11, 16385; 02:42:0a:01:00:05, 10.1.0.5, 53)/udp",
				"net1     10.1.0.5:80/tcp  balance  8080       web-1    s1      0         active  (02:00:c0:a8:00:0b, 192.168.0.11, 16384; 02:42:0a:01:00:05, 10.1.0.5, 80)/tcp",
				"                                              2        s2      5         down    (02:00:c0:a8:00:0c, 192.168.0.12, 16640; 02:42:0a:01:00:06, 10.1.0.5, 80)/tcp",
			),
		},
		{
			name: "changes, one line each",
			write: func(w io.Writer) error {
				for _, c := range []mapper.Change{
					{Revision: 1, Type: "put", Kind: mapper.KindNetwork, Network: &testNet},
					{Revision: 1, Type: "put", Kind: mapper.KindNetwork, Network: &reached},
					{Revision: 2, Type: "put", Kind: mapper.KindServer, Server: &testS2},
					{Revision: 12, Type: "delete", Kind: mapper.KindEndpoint, Endpoint: &e2},
				} {
					if err := writeChange(w, c); err != nil {
						return err
					}
				}
				return nil
			},
			want: lines(
				"1      put    network  net1 id=1 subnet=10.1.0.0/24 gateway=10.1.0.1",
				"1      put    network  shop id=4 subnet=10.3.0.0/24 gateway=10.3.0.1 egress=deny connected=net1 groups=prod export=10.3.0.5:5432/tcp>net2,net3",
				"2      put    server   s2 ips=192.168.0.12,192.168.1.12 mac=02:00:c0:a8:00:0c uplink=- gone",
				"12     delete endpoint 2 id=2 network=net1 ip=10.1.0.5 mac=02:42:0a:01:00:06 ports=80/tcp mode=balance priority=5 state=down server=s2 wire=192.168.0.12:16640-16895",
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tt.write(&b); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("output mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOutputPrint(t *testing.T) {
	tests := []struct {
		format string
		want   string
	}{
		{"table", "table\n"},
		{"json", "{\n  \"name\": \"net1\",\n  \"id\": 1,\n  \"subnet\": \"10.1.0.0/24\",\n  \"gateway\": \"10.1.0.1\"\n}\n"},
		{"JSON", "{\n  \"name\": \"net1\",\n  \"id\": 1,\n  \"subnet\": \"10.1.0.0/24\",\n  \"gateway\": \"10.1.0.1\"\n}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var b bytes.Buffer
			out, err := newOutput(&b, tt.format)
			if err != nil {
				t.Fatal(err)
			}
			err = out.print(testNet, func(w io.Writer) error {
				_, err := io.WriteString(w, "table\n")
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("output mismatch (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := newOutput(io.Discard, "yaml"); err == nil || err.Error() != `-o "yaml": want table or json` {
		t.Errorf(`newOutput("yaml") = %v, want -o "yaml": want table or json`, err)
	}
}
