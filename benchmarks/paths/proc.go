package paths

import (
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

// Proc is a process started by Start. It is safe for concurrent use.
type Proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
	once sync.Once
}

// Start runs args inside namespace ns (ip netns exec, which execs the
// command, so the PID is the command's own), pinned to CPU cpu with
// taskset when cpu >= 0, its output to out (nil: discarded). The process
// gets its own process group, so a Ctrl-C reaches only the harness, which
// kills it by its PID at cleanup (Stop).
func Start(t testbed.TB, ns *testbed.Namespace, out io.Writer, cpu int, args ...string) *Proc {
	t.Helper()
	argv := []string{"netns", "exec", ns.Name}
	if cpu >= 0 {
		argv = append(argv, "taskset", "-c", strconv.Itoa(cpu))
	}
	cmd := exec.Command("ip", append(argv, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q in %s: %v", strings.Join(args, " "), ns.Name, err)
	}
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.Stop() })
	return p
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits at most timeout for the process to exit by itself, then
// kills it; it returns how it ended.
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Stop()
		return p.err
	}
}

// Stop kills the process by its PID, if it still runs, and waits for it.
func (p *Proc) Stop() {
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		p.cmd.Process.Signal(os.Kill)
		<-p.done
	})
}
