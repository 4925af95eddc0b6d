package examples

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

// TestDockerFailover runs examples/docker-failover/run.sh in its short
// form: two dockerds on two servers, master and backup on one IP:Port,
// docker kill the master. It needs root and Debian's docker.io; it skips
// without them, and fails with DAOLI_REQUIRE_PRIVILEGED=1.
func TestDockerFailover(t *testing.T) {
	testbed.RequirePrivileged(t)
	for _, b := range []string{"dockerd", "unshare", "nsenter"} {
		if _, err := exec.LookPath(b); err != nil {
			reason := fmt.Sprintf("needs %s (scripts/setup.sh docker installs Debian's docker.io)", b)
			if os.Getenv(testbed.RequireEnv) == "1" {
				t.Fatalf("%s, and %s=1 forbids skipping", reason, testbed.RequireEnv)
			}
			t.Skip(reason)
		}
	}
	// The containers' image is FROM scratch: the binary must be static.
	bin := filepath.Join(t.TempDir(), "daoli")
	build := exec.Command("go", "build", "-o", bin, "../daoli")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build a static daoli: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "docker-failover/run.sh")
	cmd.Env = append(os.Environ(), "SHORT=1", "DAOLI="+bin)
	// On timeout, TERM lets the script's trap stop dockerd and clean up.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 40 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	out := buf.String()
	t.Logf("docker-failover ran %.1fs", time.Since(start).Seconds())

	m := regexp.MustCompile(`(?m)^world: prefix (dlex[0-9a-f]{6}),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no \"world: prefix ...\" line (err %v):\n%s", err, out)
	}
	if left := dockerLeftovers(m[1]); len(left) > 0 {
		t.Errorf("docker-failover left behind: %s", strings.Join(left, "; "))
	}
	if err != nil {
		t.Fatalf("docker-failover/run.sh: %v\n%s", err, out)
	}
	for _, want := range []string{
		"PASS: the backup answered on the same IP:Port 10.1.0.9:8080",
		"UDP: one socket all along, one flow: it carried on at the backup.",
		"The clients dialled only 10.1.0.9:8080",
		"cleanup: stopped ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The backup, on the other server, answered on the same IP:Port, soon.
	for _, p := range []string{"tcp", "udp"} {
		line := regexp.MustCompile(`(?m)^docker-failover ` + p + ` gap_ms=(-?\d+) after_kill_ms=(-?\d+) unanswered=(\d+) backup_answers=(\d+)$`).FindStringSubmatch(out)
		if line == nil {
			t.Errorf("no measured line for %s:\n%s", p, out)
			continue
		}
		gap, _ := strconv.Atoi(line[1])
		answers, _ := strconv.Atoi(line[4])
		if gap <= 0 || gap > 5000 || answers == 0 {
			t.Errorf("%s: gap %d ms with %d answers from the backup; want a positive gap under 5 s and answers", p, gap, answers)
		}
		t.Logf("%s: the backup answered %d ms after the master's last answer (%s ms after docker kill)", p, gap, line[2])
	}
	if !regexp.MustCompile(`(?m)^(tcp|udp):   backup's first: \d+ ok backup saw 10\.1\.0\.[56]:`).MatchString(out) {
		t.Errorf("no answer from the backup seeing the client's own address:\n%s", out)
	}
}

// dockerLeftovers lists what a run with prefix left: namespaces, mounts,
// plugin sockets, cgroups, dockerd or containerd processes of its
// directories.
func dockerLeftovers(prefix string) []string {
	var left []string
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
				left = append(left, "namespace "+f[0])
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil && strings.Contains(string(b), prefix) {
		left = append(left, "a mount of "+prefix)
	}
	socks, _ := filepath.Glob("/run/docker/plugins/daoli-" + prefix + "-*.sock")
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/" + prefix + "-*")
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + prefix + "-*")
	left = append(left, socks...)
	left = append(left, cgroups...)
	left = append(left, v1...)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("/tmp/"+prefix)) {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
		}
	}
	return left
}
