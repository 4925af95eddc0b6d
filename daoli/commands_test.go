package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/google/go-cmp/cmp"
)

// startTestMapper serves a fresh registry in this process and returns its
// address. Everything is closed when the test ends.
func startTestMapper(t *testing.T) string {
	t.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := mapper.New(mapper.Config{Store: st})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	srv := httptest.NewServer(mapper.NewAPI(reg, nil))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		st.Close()
	})
	return srv.Listener.Addr().String()
}

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daoli runs the command tree in this process with $DAOLI_MAPPER set to
// env, and returns what it printed and its error.
func daoli(ctx context.Context, env string, args ...string) (stdout string, err error) {
	var out, errOut syncBuffer
	getenv := func(k string) string {
		if k == envMapper {
			return env
		}
		return ""
	}
	root := newRootCmd(&out, &errOut, getenv)
	root.SetArgs(args)
	err = root.ExecuteContext(ctx)
	return out.String(), err
}

// mustDaoli is daoli that fails the test on an error.
func mustDaoli(t *testing.T, env string, args ...string) string {
	t.Helper()
	out, err := daoli(t.Context(), env, args...)
	if err != nil {
		t.Fatalf("daoli %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TestUsageErrors checks errors caught before any request: each names
// the command, flag or argument at fault. No mapper runs, so a request
// would fail with a different message.
func TestUsageErrors(t *testing.T) {
	const nowhere = "127.0.0.1:1"
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate" for "daoli"`},
		{[]string{"network", "frobnicate"}, `unknown command "frobnicate" for "daoli network"`},
		{[]string{"network", "create", "--subnet", "10.1.0.0/24"}, "network create: want NAME, got 0 arguments"},
		{[]string{"network", "create", "a", "b", "--subnet", "10.1.0.0/24"}, "network create: want NAME, got 2 arguments"},
		{[]string{"network", "create", "a"}, `required flag(s) "subnet" not set`},
		{[]string{"network", "create", "a", "--subnet", "10.1.0.0/33"}, `--subnet "10.1.0.0/33": prefix length out of range; want a CIDR such as 10.1.0.0/24`},
		{[]string{"network", "rm"}, "network rm: want one or more NAME"},
		{[]string{"network", "ls", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"network", "ls", "--mapper", "ftp://x"}, `--mapper "ftp://x": scheme "ftp", want http or https`},
		{[]string{"network", "ls", "--timeout", "-1s"}, "--timeout -1s: want 0 or more"},
		{[]string{"server", "add", "s1", "--mac", "02:00:00:00:00:01"}, `required flag(s) "ip" not set`},
		{[]string{"server", "add", "s1", "--ip", "192.168.0.1", "--mac", "02:00"}, `--mac "02:00": want six hex bytes such as 02:42:0a:01:00:05`},
		{[]string{"endpoint", "add"}, `required flag(s) "network", "server" not set`},
		{[]string{"endpoint", "add", "--network", "blue", "--server", "s1"}, "--ip: missing; name the address, or an --owner"},
		{[]string{"endpoint", "add", "--network", "n", "--ip", "10.1.0.5", "--server", "s", "--port", "0"}, `--port "0": want a number from 1 to 65535, optionally followed by /tcp or /udp`},
		{[]string{"endpoint", "add", "--network", "n", "--ip", "10.1.0.5", "--server", "s", "--priority", "-1"}, `endpoint add: invalid argument "-1" for "--priority" flag`},
		{[]string{"endpoint", "show"}, "endpoint show: want ID|NAME, got 0 arguments"},
		{[]string{"endpoint", "move", "web-1"}, `required flag(s) "to" not set`},
		{[]string{"endpoint", "down", "a", "b"}, "endpoint down: want ID|NAME, got 2 arguments"},
		{[]string{"watch", "--revision", "-1"}, `--revision "-1": want 0 (the next change) or more`},
		{[]string{"version", "-o", "xml"}, `-o "xml": want table or json`},
		{[]string{"mapper", "--block-size", "100"}, `--block-size "100": want a power of two from 8 to 32768`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := daoli(t.Context(), nowhere, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestMapperAddress checks where client commands look for the mapper:
// --mapper, else $DAOLI_MAPPER, else the default address; and that a
// mapper that is not there gets a hint.
func TestMapperAddress(t *testing.T) {
	addr := startTestMapper(t)
	if out := mustDaoli(t, addr, "network", "ls"); out != "NAME  ID  SUBNET  GATEWAY  EGRESS\n" {
		t.Errorf("network ls via $DAOLI_MAPPER printed %q", out)
	}
	if out := mustDaoli(t, "127.0.0.1:1", "network", "ls", "--mapper", "http://"+addr); out != "NAME  ID  SUBNET  GATEWAY  EGRESS\n" {
		t.Errorf("network ls via --mapper printed %q", out)
	}
	_, err := daoli(t.Context(), "127.0.0.1:1", "network", "ls")
	if want := "(is the mapper running at http://127.0.0.1:1?)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("network ls with no mapper: error = %v, want one containing %q", err, want)
	}
}

// TestJSONOutput checks that -o json prints the API's objects: what
// create prints is what ls and show print, and decodes to the same value.
func TestJSONOutput(t *testing.T) {
	addr := startTestMapper(t)
	var n mapper.Network
	decode(t, mustDaoli(t, addr, "network", "create", "net1", "--subnet", "10.1.0.0/24", "-o", "json"), &n)
	var ns []mapper.Network
	decode(t, mustDaoli(t, addr, "network", "ls", "-o", "json"), &ns)
	if diff := cmp.Diff([]mapper.Network{n}, ns, addrCmp...); diff != "" {
		t.Errorf("network ls -o json (-created +listed):\n%s", diff)
	}
	if n.Gateway.String() != "10.1.0.1" {
		t.Errorf("gateway = %s, want 10.1.0.1 (the subnet's first address)", n.Gateway)
	}

	mustDaoli(t, addr, "server", "add", "s1", "--ip", "192.168.0.11", "--mac", "02:00:c0:a8:00:0b")
	var e mapper.Endpoint
	decode(t, mustDaoli(t, addr, "endpoint", "add", "--network", "net1", "--ip", "10.1.0.5", "--server", "s1",
		"--port", "80/tcp", "--name", "web-1", "-o", "json"), &e)
	var d mapper.EndpointDetail
	decode(t, mustDaoli(t, addr, "endpoint", "show", "web-1", "-o", "json"), &d)
	if diff := cmp.Diff(e, d.Endpoint, addrCmp...); diff != "" {
		t.Errorf("endpoint show -o json (-added +shown):\n%s", diff)
	}
	want := []mapper.SixTuple{{
		ServerMAC: mustMAC("02:00:c0:a8:00:0b"), ServerIP: netip.MustParseAddr("192.168.0.11"), ServerPort: 16384,
		MAC: e.MAC, IP: netip.MustParseAddr("10.1.0.5"), Port: 80, Protocol: mapper.TCP,
	}}
	if diff := cmp.Diff(want, d.SixTuples, addrCmp...); diff != "" {
		t.Errorf("6-tuples (-want +got):\n%s", diff)
	}

	var removed []mapper.Endpoint
	out, err := daoli(t.Context(), addr, "endpoint", "rm", "web-1", "nope", "-o", "json")
	if err == nil || !strings.Contains(err.Error(), "remove endpoint nope: not found") {
		t.Errorf("endpoint rm web-1 nope: error = %v, want remove endpoint nope: not found", err)
	}
	decode(t, out, &removed)
	if diff := cmp.Diff([]mapper.Endpoint{e}, removed, addrCmp...); diff != "" {
		t.Errorf("endpoint rm -o json (-want +got):\n%s", diff)
	}
	if out := mustDaoli(t, addr, "endpoint", "ls", "-o", "json"); out != "[]\n" {
		t.Errorf("endpoint ls -o json with no endpoints printed %q, want []", out)
	}
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

// TestWatch checks that watch prints past changes from --revision, then
// new ones as they happen, and stops cleanly when its context ends.
func TestWatch(t *testing.T) {
	addr := startTestMapper(t)
	mustDaoli(t, addr, "network", "create", "net1", "--subnet", "10.1.0.0/24")

	for _, tt := range []struct {
		format string
		want   []string
	}{
		{"table", []string{
			"2      put    network  net1 id=1 subnet=10.1.0.0/24 gateway=10.1.0.1",
			"3      put    server   s1 ips=192.168.0.11 mac=02:00:c0:a8:00:0b uplink=-",
		}},
		{"json", []string{
			`{"revision":2,"type":"put","kind":"network","network":{"name":"net1","id":1,"subnet":"10.1.0.0/24","gateway":"10.1.0.1"}}`,
			`{"revision":3,"type":"put","kind":"server","server":{"name":"s1","ips":["192.168.0.11"],"mac":"02:00:c0:a8:00:0b","since":"<time>"}}`,
		}},
	} {
		t.Run(tt.format, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var out syncBuffer
			root := newRootCmd(&out, &bytes.Buffer{}, func(k string) string {
				if k == envMapper {
					return addr
				}
				return ""
			})
			root.SetArgs([]string{"watch", "--revision", "1", "-o", tt.format})
			done := make(chan error, 1)
			go func() { done <- root.ExecuteContext(ctx) }()

			waitFor(t, &out, 1)
			// Revision 1 is the registry recording its block size, which
			// watchers do not see. Both subtests see the first one's
			// revision 3: adding an unchanged server again renews its
			// liveness and writes no object.
			mustDaoli(t, addr, "server", "add", "s1", "--ip", "192.168.0.11", "--mac", "02:00:c0:a8:00:0b")
			waitFor(t, &out, 2)
			cancel()
			if err := <-done; err != nil {
				t.Errorf("watch ended with %v, want nil after cancel", err)
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")[:2]
			if tt.format == "json" {
				var c mapper.Change
				decode(t, got[1], &c)
				got[1] = strings.Replace(got[1], c.Server.Since.Format(time.RFC3339Nano), "<time>", 1)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("watch output (-want +got):\n%s", diff)
			}
		})
	}
}

// waitFor waits until out holds n lines.
func waitFor(t *testing.T, out *syncBuffer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if strings.Count(out.String(), "\n") >= n {
			return
		}
	}
	t.Fatalf("waited 10s for %d lines of watch output, have %q", n, out.String())
}

// TestEndpointAddFile: endpoint add -f creates a file's endpoints in one
// transaction; a file with one bad endpoint creates none and names it.
func TestEndpointAddFile(t *testing.T) {
	addr := startTestMapper(t)
	mustDaoli(t, addr, "network", "create", "blue", "--subnet", "10.1.0.0/24")
	mustDaoli(t, addr, "server", "add", "node1", "--ip", "192.0.2.1", "--mac", "52:54:00:00:00:01")
	write := func(body string) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "endpoints.json")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write(`[
  {"network": "blue", "ip": "10.1.0.5", "server": "node1", "name": "web-1", "ports": [{"port": 80, "protocol": "tcp"}]},
  {"network": "blue", "ip": "10.1.0.5", "server": "node1", "name": "web-2", "ports": [{"port": 80, "protocol": "tcp"}]},
  {"network": "blue", "owner": "pod:shop/db-0", "server": "node1"}
]`)
	out := mustDaoli(t, addr, "endpoint", "add", "-f", good)
	if n := strings.Count(out, " blue "); n != 3 || !strings.Contains(out, "web-2") {
		t.Errorf("endpoint add -f: %d endpoints in\n%s\nwant 3", n, out)
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"-f", write(`[{"network": "blue", "ip": "10.1.0.7", "server": "node1"}, {"network": "blue", "ip": "10.1.0.8", "server": "node1", "ports": [{"port": "x"}]}]`)},
			"endpoints[1].ports[0].port: expected a whole number"},
		{[]string{"-f", write(`[{"network": "blue", "ip": "10.1.0.7", "server": "node1"}, {"network": "blue", "ip": "10.1.0.1", "server": "node1"}]`)},
			"endpoints[1].ip: 10.1.0.1 is network blue's gateway"},
		{[]string{"-f", write(`[]`)}, "endpoints: empty"},
		{[]string{"-f", good, "--network", "blue"}, "the endpoints come from the file; leave out --network"},
	} {
		_, err := daoli(t.Context(), addr, append([]string{"endpoint", "add"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("endpoint add %v: %v, want an error saying %q", tc.args, err, tc.says)
		}
	}
	if out := mustDaoli(t, addr, "endpoint", "ls"); strings.Count(out, " blue ") != 3 {
		t.Errorf("after the refused files, endpoints:\n%s\nwant the first 3 alone", out)
	}
}
