package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/google/go-cmp/cmp"
)

// testBinary is the daoli binary, built once by the first test that
// needs it and removed by TestMain.
var testBinary struct {
	once       sync.Once
	dir, path  string
	buildError error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testBinary.dir != "" {
		os.RemoveAll(testBinary.dir)
	}
	os.Exit(code)
}

func buildDaoli(t *testing.T) string {
	t.Helper()
	testBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "daoli-test-")
		if err != nil {
			testBinary.buildError = err
			return
		}
		testBinary.dir = dir
		testBinary.path = filepath.Join(dir, "daoli")
		gobin, err := exec.LookPath("go")
		if err != nil {
			testBinary.buildError = err
			return
		}
		out, err := exec.Command(gobin, "build", "-o", testBinary.path, ".").CombinedOutput()
		if err != nil {
			testBinary.buildError = errors.New(err.Error() + "\n" + string(out))
		}
	})
	if testBinary.buildError != nil {
		t.Fatalf("build daoli: %v", testBinary.buildError)
	}
	return testBinary.path
}

// process is a daoli subprocess.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	done           chan struct{} // closed when it has exited; then err is set
	err            error
}

// startProcess starts bin with args and env added to the environment. It
// is killed by PID when the test ends, whatever happened.
func startProcess(t *testing.T, bin string, env []string, args ...string) *process {
	t.Helper()
	p := &process{stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start daoli %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	return p
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to 15 seconds for the process to exit and returns its
// exit status.
func (p *process) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("daoli %s still running after 15s; stderr:\n%s", strings.Join(p.cmd.Args[1:], " "), p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// mapperProcess is a "daoli mapper" subprocess; its logs are its stderr.
type mapperProcess struct {
	*process
	logs *syncBuffer
}

// startMapperProcess starts "daoli mapper" on addr and db and waits until
// it answers /healthz.
func startMapperProcess(t *testing.T, bin, addr, db string) *mapperProcess {
	t.Helper()
	p := startProcess(t, bin, nil, "mapper", "--listen", addr, "--db", db, "--block-size", "128", "--log-format", "json")
	m := &mapperProcess{process: p, logs: p.stderr}
	hc := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if p.exited() {
			t.Fatalf("mapper exited before it was healthy: %v\n%s", p.err, m.logs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("mapper not healthy at %s after 15s; logs:\n%s", addr, m.logs)
		}
		resp, err := hc.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m
			}
		}
	}
}

// stop sends SIGTERM and wants a clean exit.
func (m *mapperProcess) stop(t *testing.T) {
	t.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signal mapper: %v", err)
	}
	if status := m.wait(t); status != 0 {
		t.Fatalf("mapper exited with status %d after SIGTERM; logs:\n%s", status, m.logs)
	}
}

// logged returns the mapper's JSON log records with the message msg.
func (m *mapperProcess) logged(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(m.logs.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("mapper log line %q is not JSON: %v", line, err)
		}
		if rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// freeAddr returns a 127.0.0.1 address with a port nothing listened on a
// moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cli runs the daoli binary against one mapper.
type cli struct {
	t      *testing.T
	bin    string
	mapper string
}

// run runs daoli with args and returns its output and exit status.
func (c cli) run(args ...string) (stdout, stderr string, status int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), envMapper+"="+c.mapper)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		status = ee.ExitCode()
	case err != nil:
		c.t.Fatalf("run daoli %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), status
}

// ok runs daoli and fails the test unless it succeeds.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, status := c.run(args...)
	if status != 0 {
		c.t.Fatalf("daoli %s: exit status %d\n%s", strings.Join(args, " "), status, errOut)
	}
	return out
}

// json runs daoli with -o json and decodes its output into v.
func (c cli) json(v any, args ...string) string {
	c.t.Helper()
	out := c.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		c.t.Fatalf("daoli %s -o json: decode %q: %v", strings.Join(args, " "), out, err)
	}
	return out
}

// fails runs daoli and wants exit status 1 and an error on stderr that
// contains want.
func (c cli) fails(want string, args ...string) {
	c.t.Helper()
	out, errOut, status := c.run(args...)
	if status != 1 {
		c.t.Errorf("daoli %s: exit status %d, want 1 (stdout %q)", strings.Join(args, " "), status, out)
	}
	if !strings.HasPrefix(errOut, "daoli: ") || !strings.Contains(errOut, want) {
		c.t.Errorf("daoli %s: stderr %q, want \"daoli: ...%s...\"", strings.Join(args, " "), errOut, want)
	}
}

// tupleRow is a row of the 6-tuple table of "endpoint show".
type tupleRow struct {
	ServerMAC, ServerIP, ServerPort, MAC, IP, Port, Proto string
}

// showTuples runs "endpoint show" and parses its 6-tuple table.
func (c cli) showTuples(ref string) []tupleRow {
	c.t.Helper()
	out := c.ok("endpoint", "show", ref)
	_, table, found := strings.Cut(out, "\nSERVER MAC ")
	if !found {
		c.t.Fatalf("endpoint show %s: no 6-tuple table in\n%s", ref, out)
	}
	var rows []tupleRow
	for _, line := range strings.Split(strings.TrimSpace(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 7 {
			c.t.Fatalf("endpoint show %s: 6-tuple row %q has %d columns, want 7", ref, line, len(f))
		}
		rows = append(rows, tupleRow{f[0], f[1], f[2], f[3], f[4], f[5], f[6]})
	}
	return rows
}

// TestCLI drives the daoli binary against a "daoli mapper" subprocess:
// three endpoints share 10.1.0.5:80 on two servers, bad input is refused
// with a message naming the problem and changes nothing, a move changes
// only the server half of the 6-tuples, and everything survives a
// restart of the mapper on the same registry file.
func TestCLI(t *testing.T) {
	bin := buildDaoli(t)
	addr, db := freeAddr(t), filepath.Join(t.TempDir(), "registry.db")
	m := startMapperProcess(t, bin, addr, db)
	if recs := m.logged(t, "mapper listening"); len(recs) != 1 || recs[0]["addr"] != addr || recs[0]["block_size"] != 128.0 {
		t.Errorf(`"mapper listening" log records = %v, want one with addr %s and block_size 128`, recs, addr)
	}
	c := cli{t: t, bin: bin, mapper: addr}

	c.ok("network", "create", "net1", "--subnet", "10.1.0.0/24")
	c.ok("server", "add", "s1", "--ip", "192.168.0.11", "--mac", "02:00:c0:a8:00:0b", "--uplink", "eth0")
	c.ok("server", "add", "s2", "--ip", "192.168.0.12", "--mac", "02:00:c0:a8:00:0c")
	for _, ep := range []struct{ name, server, mac string }{
		{"web-1", "s1", "02:42:0a:01:00:05"},
		{"web-2", "s2", "02:42:0a:01:00:06"},
		{"web-3", "s1", "02:42:0a:01:00:07"},
	} {
		c.ok("endpoint", "add", "--network", "net1", "--ip", "10.1.0.5", "--mac", ep.mac, "--name", ep.name,
			"--server", ep.server, "--interface", "veth-"+ep.name, "--port", "80/tcp", "--mode", "balance")
	}

	// Each endpoint's 6-tuple: the server half is its server and the
	// first port of its wire block (blocks of 128 from 16384); the
	// identity half is the shared 10.1.0.5:80.
	wantTuples := map[string]tupleRow{
		"web-1": {"02:00:c0:a8:00:0b", "192.168.0.11", "16384", "02:42:0a:01:00:05", "10.1.0.5", "80", "tcp"},
		"web-2": {"02:00:c0:a8:00:0c", "192.168.0.12", "16384", "02:42:0a:01:00:06", "10.1.0.5", "80", "tcp"},
		"web-3": {"02:00:c0:a8:00:0b", "192.168.0.11", "16512", "02:42:0a:01:00:07", "10.1.0.5", "80", "tcp"},
	}
	for ref, want := range wantTuples {
		if diff := cmp.Diff([]tupleRow{want}, c.showTuples(ref)); diff != "" {
			t.Errorf("endpoint show %s: 6-tuples (-want +got):\n%s", ref, diff)
		}
	}

	// One service, three backends, in the table and in JSON.
	table := c.ok("service", "ls")
	rows := strings.Split(strings.TrimSpace(table), "\n")
	if len(rows) != 4 || !strings.HasPrefix(rows[1], "net1 ") || !strings.Contains(rows[1], " 10.1.0.5:80/tcp ") ||
		strings.HasPrefix(rows[2], "net1") || strings.HasPrefix(rows[3], "net1") {
		t.Errorf("service ls: want a header, one service row for 10.1.0.5:80/tcp and two more backend rows, got\n%s", table)
	}
	var svcs []mapper.Service
	c.json(&svcs, "service", "ls")
	wantKey := mapper.ServiceKey{Network: "net1", IP: netip.MustParseAddr("10.1.0.5"), Port: 80, Protocol: mapper.TCP}
	if len(svcs) != 1 || svcs[0].ServiceKey != wantKey || svcs[0].Mode != mapper.Balance || len(svcs[0].Backends) != 3 {
		t.Fatalf("service ls -o json = %+v, want one balance service %s with 3 backends", svcs, wantKey)
	}

	// Bad input: exit status 1, a message naming the problem, and
	// nothing written.
	var before []mapper.Endpoint
	beforeJSON := c.json(&before, "endpoint", "ls")
	add := func(extra ...string) []string {
		args := []string{"endpoint", "add", "--network", "net1", "--ip", "10.1.0.5", "--server", "s2", "--port", "80/tcp"}
		return append(args, extra...)
	}
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"ip outside the subnet", add("--ip", "10.2.0.5"), "10.2.0.5 is outside the subnet 10.1.0.0/24"},
		{"port 0", add("--port", "0"), `--port "0": want a number from 1 to 65535`},
		{"unknown protocol", add("--port", "80/sctp"), `--port "80/sctp": unknown protocol "sctp", want tcp or udp`},
		{"unknown network", add("--network", "nope"), `network "nope" does not exist`},
		{"unknown server", add("--server", "s9"), `server "s9" does not exist`},
		{"malformed mac", add("--mac", "02:42:0a:01:00"), `--mac "02:42:0a:01:00": want six hex bytes`},
		{"mac taken", add("--mac", "02:42:0a:01:00:05"), "02:42:0a:01:00:05 is already used by endpoint 1 in network net1"},
		{"name taken", add("--name", "web-1"), `endpoint "web-1" already exists`},
		{"failover joins a balance service", add("--mode", "failover"), "service 10.1.0.5:80/tcp in network net1 is balance (endpoints [1 2 3]); this endpoint asks for failover"},
		{"unknown endpoint", []string{"endpoint", "show", "web-9"}, "endpoint web-9: not found"},
		{"move to an unknown server", []string{"endpoint", "move", "web-1", "--to", "s9"}, `server "s9" does not exist`},
		{"network in use", []string{"network", "rm", "net1"}, "remove network net1: in use"},
		{"server in use", []string{"server", "rm", "s1"}, "remove server s1: in use"},
		{"egress not a CIDR", []string{"network", "create", "net9", "--subnet", "10.9.0.0/24", "--egress", "everywhere"},
			`--egress: egress "everywhere": "everywhere" is not a CIDR; want allow, deny, or CIDRs`},
		{"egress with host bits", []string{"network", "update", "net1", "--egress", "203.0.113.9/24"}, "did you mean 203.0.113.0/24"},
		{"update of an unknown network", []string{"network", "update", "nope", "--egress", "deny"}, "update network nope: not found"},
		{"update without a change", []string{"network", "update", "net1"}, "nothing to change; give --egress"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := c
			c.t = t
			c.fails(tt.want, tt.args...)
		})
	}
	if after := c.ok("endpoint", "ls", "-o", "json"); after != beforeJSON {
		t.Errorf("refused requests changed the endpoints:\n%s", cmp.Diff(beforeJSON, after))
	}

	// Moving web-3 to s2 changes the server half of its 6-tuple only,
	// and nothing of the other endpoints.
	var was, moved mapper.EndpointDetail
	c.json(&was, "endpoint", "show", "web-3")
	c.json(&moved, "endpoint", "move", "web-3", "--to", "s2", "--interface", "veth-web-3b")
	wantMoved := was
	wantMoved.Endpoint.Server, wantMoved.Endpoint.Interface = "s2", "veth-web-3b"
	wantMoved.Endpoint.Wire = mapper.Block{Addr: netip.MustParseAddr("192.168.0.12"), Base: 16512, Size: 128}
	wantMoved.SixTuples = slices.Clone(was.SixTuples)
	wantMoved.SixTuples[0].ServerMAC = mustMAC("02:00:c0:a8:00:0c")
	wantMoved.SixTuples[0].ServerIP = netip.MustParseAddr("192.168.0.12")
	wantMoved.SixTuples[0].ServerPort = 16512
	if diff := cmp.Diff(wantMoved, moved, addrCmp...); diff != "" {
		t.Errorf("endpoint move web-3 --to s2 (-want +got):\n%s", diff)
	}
	wantTuples["web-3"] = tupleRow{"02:00:c0:a8:00:0c", "192.168.0.12", "16512", "02:42:0a:01:00:07", "10.1.0.5", "80", "tcp"}
	for ref, want := range wantTuples {
		if diff := cmp.Diff([]tupleRow{want}, c.showTuples(ref)); diff != "" {
			t.Errorf("after the move, endpoint show %s: 6-tuples (-want +got):\n%s", ref, diff)
		}
	}

	// A backend marked down stays a backend, listed after the active ones.
	c.ok("endpoint", "down", "web-1")
	c.json(&svcs, "service", "ls")
	var order []string
	for _, b := range svcs[0].Backends {
		order = append(order, b.Name+"="+string(b.State))
	}
	if diff := cmp.Diff([]string{"web-2=active", "web-3=active", "web-1=down"}, order); diff != "" {
		t.Errorf("backends after endpoint down web-1 (-want +got):\n%s", diff)
	}

	// A watch from revision 1 has seen every change: the 8 above. When the
	// mapper stops, the stream ends (a watch must not hold up the
	// shutdown) and the watcher is told where to resume.
	watcher := startProcess(t, bin, []string{envMapper + "=" + addr}, "watch", "--revision", "1", "-o", "json")
	var changes []mapper.Change
	for deadline := time.Now().Add(15 * time.Second); len(changes) < 8; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) || watcher.exited() {
			t.Fatalf("watch printed %q, want 8 changes; stderr: %s", watcher.stdout, watcher.stderr)
		}
		changes = changes[:0]
		for line := range strings.Lines(watcher.stdout.String()) {
			var c mapper.Change
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				t.Fatalf("watch printed %q: %v", line, err)
			}
			changes = append(changes, c)
		}
	}
	var seen []string
	for _, c := range changes {
		seen = append(seen, fmt.Sprintf("%d %s %s", c.Revision, c.Type, c.Kind))
	}
	wantSeen := []string{
		// Revision 1 is the registry's own: it records its block size.
		"2 put network", "3 put server", "4 put server", "5 put endpoint", "6 put endpoint",
		"7 put endpoint", "8 put endpoint", "9 put endpoint",
	}
	if diff := cmp.Diff(wantSeen, seen); diff != "" {
		t.Errorf("watch --revision 1 (-want +got):\n%s", diff)
	}
	if last := changes[len(changes)-1]; last.Endpoint == nil || last.Endpoint.Name != "web-1" || last.Endpoint.State != mapper.Down {
		t.Errorf("last change = %+v, want web-1 down", last)
	}

	// Restart on the same file: everything is still there, the same.
	lists := [][]string{
		{"network", "ls"}, {"server", "ls"}, {"endpoint", "ls"}, {"service", "ls"},
		{"endpoint", "show", "web-1"}, {"endpoint", "show", "web-3"},
	}
	saved := map[string]string{}
	for _, args := range lists {
		saved[strings.Join(args, " ")] = c.ok(append(args, "-o", "json")...)
	}
	m.stop(t)
	if len(m.logged(t, "mapper stopped")) != 1 {
		t.Errorf("mapper did not log a clean stop:\n%s", m.logs)
	}
	if status, want := watcher.wait(t), "(resume with --revision 10)"; status != 1 || !strings.Contains(watcher.stderr.String(), want) {
		t.Errorf("watch ended with status %d and %q, want status 1 and a message containing %q", status, watcher.stderr, want)
	}
	c.fails("is the mapper running at http://"+addr, "network", "ls")

	m = startMapperProcess(t, bin, addr, db)
	for _, args := range lists {
		key := strings.Join(args, " ")
		if got := c.ok(append(args, "-o", "json")...); got != saved[key] {
			t.Errorf("%s changed across a restart (-before +after):\n%s", key, cmp.Diff(saved[key], got))
		}
	}
	// IDs are never reused, and the block web-3 left on s1 is free again.
	var e4 mapper.Endpoint
	c.json(&e4, "endpoint", "add", "--network", "net1", "--ip", "10.1.0.6", "--server", "s1", "--port", "53/udp")
	if e4.ID != 4 || e4.Wire.Base != 16512 {
		t.Errorf("endpoint added after the restart has ID %d and wire block %s, want ID 4 and block 192.168.0.11:16512-16639", e4.ID, e4.Wire)
	}

	// Egress: a setting of the network, changed in place.
	if out := c.ok("network", "update", "net1", "--egress", "203.0.113.0/24,198.51.100.0/24"); !strings.Contains(out, "203.0.113.0/24,198.51.100.0/24") {
		t.Errorf("network update printed %q, want the new egress", out)
	}
	if out := c.ok("network", "create", "net2", "--subnet", "10.2.0.0/24", "--egress", "deny"); !strings.Contains(out, " deny") {
		t.Errorf("network create --egress deny printed %q", out)
	}
	var n1 mapper.Network
	c.json(&n1, "network", "update", "net1", "--egress", "allow")
	if !n1.Egress.IsZero() {
		t.Errorf("egress after --egress allow: %+v, want the zero value", n1.Egress)
	}

	// Claims: an owner gets a free address, keeps it after its endpoint
	// is removed, and loses it when forgotten.
	var owned mapper.Endpoint
	c.json(&owned, "endpoint", "add", "--network", "net1", "--owner", "pod:shop/db-0", "--server", "s1", "--port", "5432")
	c.ok("endpoint", "rm", fmt.Sprint(owned.ID))
	if out := c.ok("network", "claims", "net1"); !strings.Contains(out, "pod:shop/db-0") || !strings.Contains(out, owned.IP.String()) {
		t.Errorf("network claims printed %q, want pod:shop/db-0 at %s", out, owned.IP)
	}
	c.fails("claimed by pod:shop/db-0", "endpoint", "add", "--network", "net1", "--ip", owned.IP.String(), "--server", "s1")
	c.fails("--ip: missing", "endpoint", "add", "--network", "net1", "--server", "s1")
	if out := c.ok("network", "forget", "net1", "pod:shop/db-0"); !strings.Contains(out, "forgot pod:shop/db-0") {
		t.Errorf("network forget printed %q", out)
	}
	c.fails("has no claim", "network", "forget", "net1", "pod:shop/db-0")
	m.stop(t)
}
