// Package examples holds runnable stories, one per directory, each using
// only the documented CLI. The tests here run them the way a user would.
package examples

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// build compiles the daoli command once per test.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "daoli")
	if out, err := exec.Command("go", "build", "-o", bin, "../daoli").CombinedOutput(); err != nil {
		t.Fatalf("build daoli: %v\n%s", err, out)
	}
	return bin
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
