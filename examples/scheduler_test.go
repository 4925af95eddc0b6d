package examples

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestScheduler runs examples/scheduler/run.sh: a mapper on loopback and
// the scheduler API driven with curl. It needs no root.
func TestScheduler(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (apt-get install -y curl)")
	}
	bin := build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "scheduler/run.sh")
	cmd.Env = append(os.Environ(), "DAOLI="+bin)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("scheduler/run.sh: %v\n%s", err, text)
	}
	for _, want := range []string{
		"placements: web-1@server-b web-2@server-c web-3@server-a", // spread, the busy server last
		`409 {"code":"conflict","field":"mode"`,
		"placements: web-1@server-b web-2@server-c web-3@server-a web-4@server-b web-5@server-c",
		"placements: web-1@server-a web-2@server-c", // web-1 moved
		`400 {"code":"invalid","field":"replicas"`,
		`409 {"code":"port_space_full","field":"replicas"`,
		`404 {"code":"not_found"`,
		"PASS: placed, scaled, moved and removed web on 10.1.0.5:80",
		"cleanup: stopped the mapper",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	// After the removal only the two endpoints that were not scheduled
	// remain.
	_, after, _ := strings.Cut(text, "== Remove the service")
	if strings.Contains(after, "web-") && strings.Contains(after[strings.Index(after, "$ daoli endpoint ls"):], "web-") {
		t.Errorf("replicas remain after DELETE:\n%s", after)
	}
}
