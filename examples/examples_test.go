// Package examples holds runnable stories, one per directory, each using
// only the documented CLI. The tests here run them the way a user would.
package examples

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build compiles the daoli command once for all the tests.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "daoli-examples-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "daoli")
		if out, err := exec.Command("go", "build", "-o", buildBin, "../daoli").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build daoli: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

func TestWalkthrough(t *testing.T) {
	out, err := exec.Command("walkthrough/walkthrough.sh", build(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"daoli: create endpoint: ip: 10.2.0.5 is outside the subnet 10.1.0.0/24",
		"daoli: create endpoint: ports[0]: service 10.1.0.5:80/tcp in network blue is balance",
		"Done. Everything this walkthrough started is stopped and removed.",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, text)
		}
	}
	// After the restart the registry holds what was there before it: five
	// endpoints, web-1 where the move put it.
	_, after, ok := strings.Cut(text, "Restart the mapper")
	if !ok {
		t.Fatalf("walkthrough never restarted the mapper:\n%s", text)
	}
	rows := regexp.MustCompile(`(?m)^\d+\s+(web-\d|db-\w+)\s+blue\s+10\.1\.0\.\d+\s.*$`).FindAllString(after, -1)
	if len(rows) != 5 {
		t.Errorf("after the restart endpoint ls shows %d endpoints, want 5:\n%s", len(rows), after)
	}
	if !regexp.MustCompile(`(?m)^1\s+web-1\s.*server-b\s+192\.0\.2\.2:\d+-\d+$`).MatchString(after) {
		t.Errorf("after the restart web-1 is not on server-b:\n%s", after)
	}
}

// world is how a story names what it built: "world: prefix P, bpffs DIR, ...".
var world = regexp.MustCompile(`(?m)^world: prefix (dlex[0-9a-f]{6}), bpffs (\S+),`)

// story runs examples/DIR/run.sh as a user would in CI (SHORT=1) and
// returns its output. It fails the test when the script fails, and when
// the script left a namespace or a bpf mount of its world behind.
func story(t *testing.T, dir string) string {
	t.Helper()
	testbed.RequirePrivileged(t)
	bin := build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(dir, "run.sh"))
	cmd.Env = append(os.Environ(), "SHORT=1", "DAOLI="+bin)
	// On timeout, TERM lets the script's trap clean up; KILL comes later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	start := time.Now()
	err := cmd.Run()
	out := buf.String()
	t.Logf("%s ran %.1fs", dir, time.Since(start).Seconds())

	m := world.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no \"world: prefix ...\" line (err %v):\n%s", dir, err, out)
	}
	prefix, bpffs := m[1], m[2]
	if left := leftovers(t, prefix, bpffs); len(left) > 0 {
		t.Errorf("%s left behind: %s", dir, strings.Join(left, "; "))
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s exited %d:\n%s", dir, ee.ExitCode(), out)
		}
		t.Fatalf("%s: %v:\n%s", dir, err, out)
	}
	if want := "cleanup: stopped "; !strings.Contains(out, want) {
		t.Errorf("%s never said it cleaned up (%q):\n%s", dir, want, out)
	}
	return out
}

// leftovers lists the namespaces named PREFIX-* and the mounts of bpffs
// (or of anything named after prefix) that exist now.
func leftovers(t *testing.T, prefix, bpffs string) []string {
	t.Helper()
	var left []string
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			left = append(left, "namespace "+f[0])
		}
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 2 && (f[1] == bpffs || strings.Contains(f[1], prefix)) {
			left = append(left, "mount "+f[1]+" ("+f[2]+")")
		}
	}
	if _, err := os.Stat(bpffs); err == nil {
		left = append(left, "directory "+bpffs)
	}
	return left
}

// field returns the value of key=value in the first line of out that
// starts with line, or fails.
func field(t *testing.T, out, line, key string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `.*\b` + regexp.QuoteMeta(key) + `=(\S*)`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %q with %s= in the output:\n%s", line, key, out)
	}
	return m[1]
}

func number(t *testing.T, out, line, key string) int {
	t.Helper()
	v := field(t, out, line, key)
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s %s=%q is not a number", line, key, v)
	}
	return n
}

func mustContain(t *testing.T, out string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestFailover: the master dies, the backup answers on the same IP:Port,
// over TCP (the client reconnects) and UDP (the same socket carries on).
func TestFailover(t *testing.T) {
	out := story(t, "failover")
	mustContain(t, out,
		"PASS: the backup answered on the same IP:Port 10.1.0.9:8080",
		"marked it down",
		"UDP: one socket all along, one flow: it carried on at the backup.",
	)
	for _, p := range []string{"tcp", "udp"} {
		gap := number(t, out, "failover "+p, "gap_ms")
		if gap <= 0 || gap > 5000 {
			t.Errorf("%s: failover gap %d ms, want a positive gap under 5 s", p, gap)
		}
		t.Logf("%s: the backup answered %d ms after the master's last answer", p, gap)
	}
	// The master is down in the registry, the backup active.
	if !regexp.MustCompile(`(?m)^1\s+master\s.*failover\s+100\s+down\s+server-2\s`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^2\s+backup\s.*failover\s+10\s+active\s+server-3\s`).MatchString(out) {
		t.Errorf("endpoint ls does not show master down and backup active:\n%s", out)
	}
}

// TestHAFailover: with the registry on three etcd members and two
// mappers, the etcd leader and a mapper are killed, then the master: the
// backup answers on the same IP:Port.
func TestHAFailover(t *testing.T) {
	out := story(t, "ha-failover")
	mustContain(t, out,
		"PASS: with the etcd leader and a mapper dead, the backup answered on the same IP:Port 10.1.0.9:8080",
		"marked the master down through the mapper that was left",
	)
	for _, p := range []string{"tcp", "udp"} {
		gap := number(t, out, "ha-failover "+p, "gap_ms")
		if gap <= 0 || gap > 20000 {
			t.Errorf("%s: failover gap %d ms, want a positive gap under 20 s", p, gap)
		}
		t.Logf("%s: the backup answered %d ms after the master's last answer", p, gap)
	}
	if !regexp.MustCompile(`(?m)^1\s+master\s.*failover\s+100\s+down\s+server-2\s`).MatchString(out) {
		t.Errorf("endpoint ls does not show the master down:\n%s", out)
	}
}

// TestScaleOut: three replicas share the flows, a fourth joins and takes
// some, one marked down takes none.
func TestScaleOut(t *testing.T) {
	out := story(t, "scale-out")
	mustContain(t, out, "PASS: all replicas answered on 10.1.0.10:8080")
	rounds := map[string][]string{
		"three": {"web-1", "web-2", "web-3"},
		"four":  {"web-1", "web-2", "web-3", "web-4"},
		"down":  {"web-1", "web-3", "web-4"},
	}
	for round, replicas := range rounds {
		line := "scale-out round=" + round
		if n := number(t, out, line, "errors"); n != 0 {
			t.Errorf("round %s: %d requests unanswered", round, n)
		}
		for _, r := range replicas {
			if n := number(t, out, line, r); n == 0 {
				t.Errorf("round %s: %s answered no connection", round, r)
			}
		}
	}
	if n := number(t, out, "scale-out round=down", "web-2"); n != 0 {
		t.Errorf("web-2 is down but answered %d new connections", n)
	}
	if !regexp.MustCompile(`(?m)^\s+web-2\s+server-3\s+0\s+down\s`).MatchString(out) {
		t.Errorf("service ls does not show web-2 down:\n%s", out)
	}
}

// TestLiveMigration: one TCP connection, every 10 ms, across a move; no
// request fails, one client port all along.
func TestLiveMigration(t *testing.T) {
	out := story(t, "live-migration")
	mustContain(t, out, "PASS: one TCP connection carried on across the move")
	if n := number(t, out, "live-migration", "errors"); n != 0 {
		t.Errorf("%d requests failed across the move", n)
	}
	if ports := field(t, out, "live-migration", "ports"); strings.Contains(ports, ",") || ports == "" {
		t.Errorf("the server saw client ports %q, want one", ports)
	}
	pause := number(t, out, "live-migration", "pause_ms")
	if pause > 5000 {
		t.Errorf("the longest pause was %d ms", pause)
	}
	t.Logf("longest pause across the move: %d ms over %d requests", pause, number(t, out, "live-migration", "requests"))
	if !regexp.MustCompile(`(?m)^Server:\s+server-3$`).MatchString(out) {
		t.Errorf("endpoint show does not put web on server-3:\n%s", out)
	}
}

// TestVirtualServer: one IP, three services, three servers.
func TestVirtualServer(t *testing.T) {
	out := story(t, "virtual-server")
	mustContain(t, out, "PASS: one IP 10.1.0.100, three services answered from three servers")
	for _, want := range []struct{ port, name, server string }{
		{"80/http", "web", "server-1"},
		{"8080/tcp", "api", "server-2"},
		{"6379/udp", "cache", "server-3"},
	} {
		line := "virtual-server port=" + want.port
		if got := field(t, out, line, "answered_by"); got != want.name {
			t.Errorf("%s answered by %q, want %q", want.port, got, want.name)
		}
		if got := field(t, out, line, "server"); got != want.server {
			t.Errorf("%s answered from %q, want %q", want.port, got, want.server)
		}
		if n := number(t, out, line, "answers"); n == 0 {
			t.Errorf("%s: no answers", want.port)
		}
	}
	if !strings.Contains(out, "err dial tcp 10.1.0.100:5432") {
		t.Errorf("a port nothing serves was not refused:\n%s", out)
	}
}
