package demo_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/daolinet/daoli/daoli/demo"
	"github.com/daolinet/daoli/internal/testbed"
)

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "daoli")
	if out, err := exec.Command("go", "build", "-o", bin, "../").CombinedOutput(); err != nil {
		t.Fatalf("build daoli: %v\n%s", err, out)
	}
	return bin
}

func namespaces(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	ns := map[string]bool{}
	for l := range strings.Lines(string(out)) {
		if f := strings.Fields(l); len(f) > 0 {
			ns[f[0]] = true
		}
	}
	return ns
}

// TestDemoKeepsThePromise runs the demo as a user would and checks what it
// measured: the promise, not timings.
func TestDemoKeepsThePromise(t *testing.T) {
	testbed.RequirePrivileged(t)
	bin := build(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := demo.Run(ctx, demo.Config{Bin: bin, Out: &out, Short: true})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}

	// 1. The server sees the client's own IP; the wire carries only
	// server addresses, unencapsulated, in full-size frames.
	if !strings.HasPrefix(res.Answer, "web saw 10.1.0.5:") {
		t.Errorf("web answered %q, want it to have seen 10.1.0.5", res.Answer)
	}
	c := res.Capture
	if c.Frames == 0 || len(c.ContainerAddrs) != 0 || c.Encapsulated != 0 || c.MaxFrame != 1514 {
		t.Errorf("fabric capture: %d frames, container addresses %v, %d encapsulated, largest %d; want frames, none, none, 1514",
			c.Frames, c.ContainerAddrs, c.Encapsulated, c.MaxFrame)
	}
	for _, p := range c.Pairs {
		if !testbed.Subnets[0].Contains(p[0]) || !testbed.Subnets[0].Contains(p[1]) {
			t.Errorf("the fabric carried %s <-> %s, not only server addresses", p[0], p[1])
		}
	}
	// 2. Every replica took flows.
	for _, r := range []string{"web-a", "web-b", "web-c"} {
		if res.Replicas[r] == 0 {
			t.Errorf("replica %s answered no connection: %v", r, res.Replicas)
		}
	}
	// 3. The backup answered on the same IP:Port once the master died.
	if !strings.HasPrefix(res.BackupAnswer, "backup saw 10.1.0.5:") || res.FailoverGap <= 0 || res.MarkedDown <= 0 {
		t.Errorf("failover: backup answer %q after %s (marked down after %s)", res.BackupAnswer, res.FailoverGap, res.MarkedDown)
	}
	// 4. The connection survived the move.
	if res.MoveErrors != 0 || len(res.ClientPorts) != 1 || res.MoveRequests < 30 {
		t.Errorf("migration: %d of %d requests failed, client ports seen %v; want none failed on one connection",
			res.MoveErrors, res.MoveRequests, res.ClientPorts)
	}
	// 5. The outside host saw the server's address; it reached the
	// master through every server, then the backup, seen by its own
	// address.
	if want := "outside saw " + testbed.Subnets[0].Addr().Next().String() + ":"; !strings.HasPrefix(res.EgressAnswer, want) {
		t.Errorf("egress: the outside host answered %q, want %q...", res.EgressAnswer, want)
	}
	saw := " saw " + res.OutsideIP.String() + ":"
	if len(res.IngressAnswers) != 3 {
		t.Errorf("ingress: %d answers, want one through each of 3 servers", len(res.IngressAnswers))
	}
	for i, a := range res.IngressAnswers {
		if !strings.HasPrefix(a, "shop-master"+saw) {
			t.Errorf("ingress through server %d: %q, want the master seeing %s", i, a, res.OutsideIP)
		}
	}
	if !strings.HasPrefix(res.IngressBackup, "shop-backup"+saw) || res.IngressGap <= 0 {
		t.Errorf("ingress failover: backup answer %q after %s", res.IngressBackup, res.IngressGap)
	}
	for _, heading := range []string{"1. ", "2. ", "3. ", "4. ", "5. ", "Everything the demo created is removed."} {
		if !strings.Contains(out.String(), "\n"+heading) {
			t.Errorf("the story lacks %q", heading)
		}
	}
	t.Logf("round trip p50 %s p99 %s; failover: down after %s, backup after %s; move pause %s",
		res.RTTP50, res.RTTP99, res.MarkedDown, res.FailoverGap, res.MovePause)

	if left := leftovers(t, res); len(left) > 0 {
		t.Errorf("the demo left %v", left)
	}
}

// TestDemoRefusesWithoutRoot runs the demo as nobody.
func TestDemoRefusesWithoutRoot(t *testing.T) {
	testbed.RequirePrivileged(t)
	bin := build(t)
	os.Chmod(filepath.Dir(bin), 0o755)
	cmd := exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "demo")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "daoli demo needs root") {
		t.Errorf("demo as nobody: %v, %q; want a refusal saying it needs root", err, out)
	}
}

// leftovers lists what of a demo's is still there: its namespaces and its
// bpffs mount.
func leftovers(t *testing.T, res demo.Result) []string {
	t.Helper()
	if res.Prefix == "" {
		return nil // it never built anything
	}
	var left []string
	for n := range namespaces(t) {
		if strings.HasPrefix(n, res.Prefix) {
			left = append(left, "namespace "+n)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for l := range strings.Lines(string(mounts)) {
		if f := strings.Fields(l); len(f) > 1 && f[1] == res.BPFFS {
			left = append(left, "mount "+f[1])
		}
	}
	return left
}

// TestDemoCleansUpWhenInterrupted cancels the demo in the middle, as
// Ctrl-C does.
func TestDemoCleansUpWhenInterrupted(t *testing.T) {
	testbed.RequirePrivileged(t)
	bin := build(t)
	out := &syncWriter{w: &bytes.Buffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for !strings.Contains(out.String(), "2. Three replicas") {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	res, err := demo.Run(ctx, demo.Config{Bin: bin, Out: out, Short: true})
	if err == nil {
		t.Fatal("an interrupted demo returned no error")
	}
	if res.Prefix == "" {
		t.Fatal("the demo was interrupted before it built its world; the test proves nothing")
	}
	if left := leftovers(t, res); len(left) > 0 {
		t.Errorf("an interrupted demo left %v", left)
	}
}

// TestDemoKeep leaves the world running, checks it still answers, then
// runs the cleanup script the demo printed.
func TestDemoKeep(t *testing.T) {
	testbed.RequirePrivileged(t)
	bin := build(t)
	var out bytes.Buffer
	res, err := demo.Run(context.Background(), demo.Config{Bin: bin, Out: &out, Short: true, Keep: true})
	_, script, found := strings.Cut(out.String(), "Remove everything with:\n  sh ")
	script = strings.TrimSpace(script)
	if found {
		t.Cleanup(func() { exec.Command("sh", script).Run() })
	}
	if err != nil || !found {
		t.Fatalf("demo --keep: %v; printed no cleanup script:\n%s", err, out.String())
	}
	client := res.Prefix + "client"
	ask, err := exec.Command("ip", "netns", "exec", client, bin, "app", "ask", "--to", "10.1.0.20:8080").CombinedOutput()
	if err != nil || !strings.Contains(string(ask), " ok web-") {
		t.Errorf("after the demo returned, a replica did not answer: %v %s", err, ask)
	}
	if out, err := exec.Command("sh", script).CombinedOutput(); err != nil {
		t.Errorf("cleanup script: %v\n%s", err, out)
	}
	if left := leftovers(t, res); len(left) > 0 {
		t.Errorf("the cleanup script left %v", left)
	}
}

// syncWriter lets the test read the story while the demo writes it.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
