// Package demo is `daoli demo`: a cluster of three servers on one machine,
// built from network namespaces (internal/testbed), with a mapper on the
// fabric and a real agent on every server, that shows the promise with
// measured numbers: fixed identities across servers with only server
// addresses on the wire, replicas sharing one IP:Port, failover when the
// master's container dies, and a live migration under an open TCP
// connection.
//
// Run needs root. It removes everything it created on return, also on
// error and on cancellation, unless Config.Keep asks to leave the world
// running (it then writes a cleanup script).
package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
)

// Config configures Run.
type Config struct {
	// Bin is the daoli binary, run for the mapper, agents and workloads.
	// Required.
	Bin string
	// Out receives the story. Nil means discard.
	Out io.Writer
	// Keep leaves the world running on success, for exploring.
	Keep bool
	// Short does fewer repetitions (for CI).
	Short bool
}

// Result is what the demo measured.
type Result struct {
	// Prefix starts the name of every namespace the demo created; BPFFS
	// is its bpf filesystem mount. Both are gone when Run returns, unless
	// Config.Keep.
	Prefix, BPFFS string

	// Answer is what web said to the client in story 1.
	Answer       string
	RTTP50       time.Duration
	RTTP99       time.Duration
	RoundTrips   int
	Capture      captureResult
	Replicas     map[string]int // answers per replica, story 2
	FailoverGap  time.Duration  // master killed → backup answered, story 3
	MarkedDown   time.Duration  // master killed → registry has it down
	FailedInGap  int
	BackupAnswer string
	MoveTook     time.Duration // the Move call, story 4
	MovePause    time.Duration // longest silence the client saw, story 4
	MoveRequests int
	MoveErrors   int
	ClientPorts  []string // client ports the moved server saw; one = one connection

	// Story 5: the outside world.
	OutsideIP       netip.Addr    // the host outside the cluster
	EgressAnswer    string        // what the outside host said to a container
	IngressAnswers  []string      // the master's answers through each server
	IngressGap      time.Duration // master killed → backup answered the outside host
	IngressBackup   string        // the backup's answer to the outside host
	IngressFailedIn int
}

var (
	subnet = netip.MustParsePrefix("10.1.0.0/24")
	ip     = netip.MustParseAddr
)

// Run builds the world, tells the five stories and removes the world.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	p := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	if os.Geteuid() != 0 {
		return res, errors.New("daoli demo needs root: it creates network namespaces and loads eBPF programs (run it with sudo)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return res, errors.New("daoli demo needs iproute2's ip command (apt-get install iproute2)")
	}
	if cfg.Bin == "" {
		return res, errors.New("demo: no daoli binary")
	}
	dir, err := os.MkdirTemp("", "daoli-demo-")
	if err != nil {
		return res, err
	}
	st := &testbed.Stack{}
	st.Cleanup(func() { os.RemoveAll(dir) })
	d := &world{st: st, bin: cfg.Bin, dir: dir}
	defer func() {
		if r := recover(); r != nil {
			defer func() {
				if r := recover(); r != nil { // not a Fatal: clean up, then go on panicking
					st.Unwind()
					panic(r)
				}
			}()
			err = testbed.Recovered(r)
		}
		if err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
		if cfg.Keep && err == nil {
			d.explain(p)
			return
		}
		st.Unwind()
		if errs := st.Errors(); len(errs) > 0 {
			err = errors.Join(err, fmt.Errorf("cleanup: %s", strings.Join(errs, "; ")))
		}
		p("\nEverything the demo created is removed.")
	}()

	p("daoli demo: three servers on this machine, each a network namespace on one fabric")
	p("bridge, each running a daoli agent; the mapper on the fabric; containers are network")
	p("namespaces attached through the agents.\n")
	d.build(ctx, 3)
	res.Prefix, res.BPFFS = strings.TrimSuffix(d.w.Fabric.Name, "fab"), d.bpffs
	if _, err := d.mc.CreateNetwork(ctx, mapper.NetworkSpec{Name: "blue", Subnet: subnet}); err != nil {
		return res, err
	}
	for i, s := range d.w.Servers {
		p("  %s  ServerIP %s  agent pid %d", d.serverName(i), s.IP, d.procs[i+1].Process.Pid)
	}
	p("  mapper on the fabric at %s; network blue %s", mapperAddr, subnet)
	p("  (plain HTTP without authentication: the fabric is a namespace of this machine that")
	p("  nothing else reaches; a real cluster's mappers require TLS client certificates,")
	p("  docs/security.md)\n")

	steps := []func(context.Context, *world, *Result, Config, func(string, ...any)) error{
		storyIdentity, storyReplicas, storyFailover, storyMigration, storyOutside,
	}
	for _, step := range steps {
		if err := step(ctx, d, &res, cfg, p); err != nil {
			return res, err
		}
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
	return res, nil
}

var tcp8080 = []mapper.PortSpec{{Port: 8080, Protocol: mapper.TCP}, {Port: 8080, Protocol: mapper.UDP}}

// storyIdentity: a client and a server on different servers talk by their
// own IPs; the fabric carries only server addresses, unencapsulated, at
// full MTU.
func storyIdentity(ctx context.Context, d *world, res *Result, cfg Config, p func(string, ...any)) error {
	p("1. Containers talk by their own IPs; the wire carries only server addresses")
	client := d.container(ctx, "client", 0, agent.AttachRequest{IP: ip("10.1.0.5")}, false)
	web := d.container(ctx, "web", 1, agent.AttachRequest{IP: ip("10.1.0.10"), Ports: tcp8080}, true)
	// One packet per segment, as a NIC without TSO sends them, so the
	// capture sees wire frames rather than offload aggregates.
	for _, c := range []*container{client, web} {
		c.ns.Run("ip", "link", "set", "eth0", "gso_max_segs", "1")
	}
	d.settle(ctx)
	p("   client 10.1.0.5 (on server-0) dials web 10.1.0.10:8080 (on server-1)")

	capt, err := startCapture(d.w.Fabric, "s0", subnet)
	if err != nil {
		return fmt.Errorf("capture on the fabric: %w", err)
	}
	d.st.Cleanup(func() { capt.finish() }) // on every path out
	conn := d.dialRetry(ctx, client, "10.1.0.10:8080")
	defer conn.Close()
	r := bufio.NewReader(conn)
	roundTrip := func(msg string) (string, time.Duration, error) {
		t0 := time.Now()
		conn.SetDeadline(t0.Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
			return "", 0, err
		}
		line, err := r.ReadString('\n')
		return strings.TrimSpace(line), time.Since(t0), err
	}
	answer, _, err := roundTrip("hello")
	if err != nil {
		return fmt.Errorf("ask web: %w", err)
	}
	res.Answer = answer
	p("   web answered %q: it sees the client's own IP", trim(answer, 60))
	n := 1000
	if cfg.Short {
		n = 100
	}
	var rtts []time.Duration
	for i := 0; i < n; i++ {
		_, d, err := roundTrip("ping")
		if err != nil {
			return fmt.Errorf("round trip %d: %w", i, err)
		}
		rtts = append(rtts, d)
	}
	// A big message, to see full-size frames on the wire.
	if _, _, err := roundTrip(strings.Repeat("x", 60000)); err != nil {
		return fmt.Errorf("big round trip: %w", err)
	}
	slices.Sort(rtts)
	res.RoundTrips, res.RTTP50, res.RTTP99 = n, rtts[n/2], rtts[n*99/100]
	p("   %d round trips over one TCP connection: p50 %s, p99 %s", n, ms(res.RTTP50), ms(res.RTTP99))
	c := capt.finish()
	res.Capture = c
	var pairs []string
	for _, pr := range c.Pairs {
		pairs = append(pairs, pr[0].String()+" <-> "+pr[1].String())
	}
	slices.Sort(pairs)
	p("   capture on the fabric (server-0's port): %d frames between %s", c.Frames, strings.Join(pairs, ", "))
	p("   container addresses on the wire: %d; encapsulated frames: %d; largest frame %d bytes: a full 1500-byte IP packet, no tunnel overhead",
		len(c.ContainerAddrs), c.Encapsulated, c.MaxFrame)
	p("")
	return nil
}

// storyReplicas: three replicas on three servers share one IP:Port.
func storyReplicas(ctx context.Context, d *world, res *Result, cfg Config, p func(string, ...any)) error {
	p("2. Three replicas on three servers share 10.1.0.20:8080")
	for i, name := range []string{"web-a", "web-b", "web-c"} {
		d.container(ctx, name, i, agent.AttachRequest{IP: ip("10.1.0.20"), Ports: tcp8080, Mode: mapper.Balance}, true)
	}
	client := d.namespaceOf("client")
	d.settle(ctx)
	n := 60
	if cfg.Short {
		n = 30
	}
	d.waitAnswer(ctx, client, "10.1.0.20:8080", "web-")
	lines := d.ask(ctx, client, "--to", "10.1.0.20:8080", "--count", strconv.Itoa(n), "--interval", "1ms")
	res.Replicas = map[string]int{}
	for _, l := range lines {
		if name, ok := answerFrom(l); ok {
			res.Replicas[name]++
		}
	}
	p("   %d new connections from the client: web-a %d, web-b %d, web-c %d (Maglev, the same table on every server)",
		n, res.Replicas["web-a"], res.Replicas["web-b"], res.Replicas["web-c"])
	p("")
	return nil
}

// storyFailover: the master's container dies while a client keeps asking;
// the backup answers on the same IP:Port.
func storyFailover(ctx context.Context, d *world, res *Result, cfg Config, p func(string, ...any)) error {
	p("3. Failover: a master and a backup share 10.1.0.30:8080")
	master := d.container(ctx, "master", 1, agent.AttachRequest{IP: ip("10.1.0.30"), Ports: tcp8080, Mode: mapper.Failover, Priority: 100}, true)
	d.container(ctx, "backup", 2, agent.AttachRequest{IP: ip("10.1.0.30"), Ports: tcp8080, Mode: mapper.Failover, Priority: 10}, true)
	client := d.namespaceOf("client")
	d.settle(ctx)
	d.waitAnswer(ctx, client, "10.1.0.30:8080", "master")
	s := d.stream(ctx, client, "--to", "10.1.0.30:8080", "--proto", "http", "--count", "0", "--interval", "10ms", "--timeout", "100ms")
	s.wait(ctx, d, func(ls []string) bool { return len(ls) >= 20 })
	p("   the client asks over HTTP every 10 ms; the master answers")
	p("   killing the master: its process and its network namespace, as a container dies")
	downAt := d.watchDown(ctx, master.ep.ID)
	killed := time.Now()
	if err := kill(master); err != nil {
		return err
	}
	res.FailoverGap, res.BackupAnswer, res.FailedInGap = failedOver(ctx, d, s, killed, "backup")
	select {
	case at := <-downAt:
		res.MarkedDown = at.Sub(killed)
		p("   the master's agent saw its veth vanish and the registry marked it down %s after the kill", ms(res.MarkedDown))
	case <-time.After(5 * time.Second):
		p("   the registry did not mark the master down within 5 s")
	}
	p("   the backup answered on 10.1.0.30:8080 %s after the kill (%d requests failed in between; a request", ms(res.FailoverGap), res.FailedInGap)
	p("   caught by the kill waits for its 100 ms timeout before the client asks again)")
	p("   the client dialled 10.1.0.30:8080 throughout; nothing in it changed")
	p("")
	return nil
}

// kill kills a container as it dies: its process and its network
// namespace.
func kill(c *container) error {
	c.app.Process.Kill()
	c.app.Wait()
	if out, err := exec.Command("ip", "netns", "del", c.ns.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("delete %s's namespace: %v: %s", c.name, err, out)
	}
	return nil
}

// failedOver waits until stream s gets an answer from backup, stops it and
// returns how long after killed the first came, what it said, and how
// many requests failed in between.
func failedOver(ctx context.Context, d *world, s *stream, killed time.Time, backup string) (gap time.Duration, answer string, failed int) {
	s.wait(ctx, d, func(ls []string) bool {
		return len(ls) > 0 && strings.Contains(ls[len(ls)-1], " ok "+backup+" saw")
	})
	for _, l := range s.stop() {
		at, ok, a := parseLine(l)
		if at.Before(killed.Truncate(time.Millisecond)) {
			continue
		}
		if !ok {
			failed++
			continue
		}
		if strings.HasPrefix(a, backup+" saw") {
			return at.Sub(killed), a, failed
		}
	}
	return 0, "", failed
}

// watchDown reports when endpoint id is marked down in the registry.
func (d *world) watchDown(ctx context.Context, id uint32) <-chan time.Time {
	at := make(chan time.Time, 1)
	snap, err := d.mc.Snapshot(ctx)
	if err != nil {
		d.st.Fatalf("snapshot: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	d.st.Cleanup(cancel)
	go func() {
		defer cancel()
		for resp := range d.mc.Watch(wctx, snap.Revision+1) {
			for _, c := range resp.Changes {
				if c.Endpoint != nil && c.Endpoint.ID == id && c.Endpoint.State == mapper.Down {
					at <- time.Now()
					return
				}
			}
			if resp.Err != nil {
				return
			}
		}
	}()
	return at
}

// storyMigration: a container moves to another server while a TCP
// connection to it stays open.
func storyMigration(ctx context.Context, d *world, res *Result, cfg Config, p func(string, ...any)) error {
	p("4. Live migration: db 10.1.0.40:8080 moves from server-1 to server-2 under an open TCP connection")
	db := d.container(ctx, "db", 1, agent.AttachRequest{IP: ip("10.1.0.40"), Ports: tcp8080}, true)
	client := d.namespaceOf("client")
	d.settle(ctx)
	d.waitAnswer(ctx, client, "10.1.0.40:8080", "db")
	s := d.stream(ctx, client, "--to", "10.1.0.40:8080", "--keep", "--count", "0", "--interval", "10ms", "--timeout", "5s")
	s.wait(ctx, d, func(ls []string) bool { return len(ls) >= 20 })
	t0 := time.Now()
	moved, err := d.agent(2).Move(ctx, agent.MoveRequest{Endpoint: "db", Netns: "/run/netns/" + db.ns.Name})
	if err != nil {
		return fmt.Errorf("move db: %w", err)
	}
	res.MoveTook = time.Since(t0)
	n := len(s.snapshot())
	s.wait(ctx, d, func(ls []string) bool { return len(ls) >= n+30 })
	lines := s.stop()
	var prev time.Time
	for _, l := range lines {
		at, ok, answer := parseLine(l)
		res.MoveRequests++
		if !ok {
			res.MoveErrors++
			continue
		}
		if !prev.IsZero() {
			res.MovePause = max(res.MovePause, at.Sub(prev)-10*time.Millisecond)
		}
		prev = at
		if _, rest, found := strings.Cut(answer, "saw 10.1.0.5:"); found {
			port, _, _ := strings.Cut(rest, ":")
			if len(res.ClientPorts) == 0 || res.ClientPorts[len(res.ClientPorts)-1] != port {
				res.ClientPorts = append(res.ClientPorts, port)
			}
		}
	}
	p("   moved: the registry and the plumbing took %s; db is now on %s, wire block %s", ms(res.MoveTook), moved.Server, moved.Wire)
	p("   %d requests on one connection, %d failed; the longest pause the client saw: %s", res.MoveRequests, res.MoveErrors, ms(res.MovePause))
	if len(res.ClientPorts) == 1 {
		p("   the server saw the same client 10.1.0.5:%s before and after: the connection survived", res.ClientPorts[0])
	} else {
		p("   the server saw client ports %v: the connection did NOT survive", res.ClientPorts)
	}
	return nil
}

// storyOutside: a container reaches a host outside the cluster from its
// server's address; the outside host reaches a published service through
// any server, the service sees the host's own address, and when the
// master dies the backup answers on the same ServerIP:port.
func storyOutside(ctx context.Context, d *world, res *Result, cfg Config, p func(string, ...any)) error {
	p("\n5. The outside world: a host outside the cluster, behind a router")
	out := d.w.AddOutside(0)
	res.OutsideIP = out.IP
	d.start(out.Namespace, "outside", d.bin, "app", "serve", "--port", "8080", "--name", "outside")
	client := d.namespaceOf("client")
	outside := &namespaceRef{name: out.Name}
	to := netip.AddrPortFrom(out.IP, 8080).String()
	d.waitAnswer(ctx, client, to, "outside")
	res.EgressAnswer = strings.TrimSpace(d.ask(ctx, client, "--to", to, "--count", "1")[0])
	if _, a, ok := strings.Cut(res.EgressAnswer, " ok "); ok {
		res.EgressAnswer = a
	}
	p("   the client container asks %s: %q (its server's address, not 10.1.0.5)", to, res.EgressAnswer)

	pub := []mapper.PublishedPort{{HostPort: 8080, Port: 8080, Protocol: mapper.TCP}}
	master := d.container(ctx, "shop-master", 1, agent.AttachRequest{IP: ip("10.1.0.50"), Ports: tcp8080, Mode: mapper.Failover, Priority: 100, Published: pub}, true)
	d.container(ctx, "shop-backup", 2, agent.AttachRequest{IP: ip("10.1.0.50"), Ports: tcp8080, Mode: mapper.Failover, Priority: 10, Published: pub}, true)
	d.settle(ctx)
	p("   shop 10.1.0.50:8080 (master on server-1, backup on server-2) publishes 8080 on every server")
	for i, s := range d.w.Servers {
		addr := netip.AddrPortFrom(s.IP, 8080).String()
		d.waitAnswer(ctx, outside, addr, "shop-master")
		a := strings.TrimSpace(d.ask(ctx, outside, "--to", addr, "--proto", "http", "--count", "1")[0])
		if _, rest, ok := strings.Cut(a, " ok "); ok {
			a = rest
		}
		res.IngressAnswers = append(res.IngressAnswers, a)
		p("   outside -> %s:8080 (%s): %q", s.IP, d.serverName(i), a)
	}
	entry := netip.AddrPortFrom(d.w.Servers[0].IP, 8080).String()
	s := d.stream(ctx, outside, "--to", entry, "--proto", "http", "--count", "0", "--interval", "10ms", "--timeout", "100ms")
	s.wait(ctx, d, func(ls []string) bool { return len(ls) >= 20 })
	p("   the outside host asks %s every 10 ms; killing the master", entry)
	killed := time.Now()
	if err := kill(master); err != nil {
		return err
	}
	res.IngressGap, res.IngressBackup, res.IngressFailedIn = failedOver(ctx, d, s, killed, "shop-backup")
	p("   the backup answered the outside host on %s %s after the kill (%d requests failed in between): %q",
		entry, ms(res.IngressGap), res.IngressFailedIn, res.IngressBackup)
	p("   the outside host dialled %s throughout, and both saw its own address %s", entry, out.IP)
	return nil
}

func (d *world) namespaceOf(role string) *namespaceRef {
	for _, n := range d.w.Namespaces() {
		if strings.HasSuffix(n, "-"+role) {
			return &namespaceRef{name: n}
		}
	}
	d.st.Fatalf("no namespace %s", role)
	return nil
}

// dialRetry connects from inside the client container, waiting for the
// server to listen.
func (d *world) dialRetry(ctx context.Context, c *container, addr string) net.Conn {
	var conn net.Conn
	d.waitFor(ctx, addr, func() error {
		var err error
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		conn, err = c.ns.DialContext(dctx, "tcp", addr)
		return err
	})
	return conn
}

// waitAnswer waits until a client in ns gets an answer whose sender
// starts with from.
func (d *world) waitAnswer(ctx context.Context, ns *namespaceRef, addr, from string) {
	d.waitFor(ctx, addr, func() error {
		lines := d.ask(ctx, ns, "--to", addr, "--count", "1", "--timeout", "200ms")
		if name, ok := answerFrom(lines[0]); ok && strings.HasPrefix(name, from) {
			return nil
		}
		return fmt.Errorf("answer %q", lines[0])
	})
}

// namespaceRef names a namespace for running the app client in.
type namespaceRef struct{ name string }

func (d *world) ask(ctx context.Context, ns *namespaceRef, args ...string) []string {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name, d.bin, "app", "ask"}, args...)...)
	outb, err := cmd.Output()
	if err != nil {
		d.st.Fatalf("ask %v: %v", args, err)
	}
	return strings.Split(strings.TrimSpace(string(outb)), "\n")
}

// stream is an app client running until stopped, its lines collected.
type stream struct {
	mu    sync.Mutex
	lines []string
	cmd   *exec.Cmd
	done  chan struct{}
}

func (d *world) stream(ctx context.Context, ns *namespaceRef, args ...string) *stream {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, d.bin, "app", "ask"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		d.st.Fatalf("stream: %v", err)
	}
	if err := cmd.Start(); err != nil {
		d.st.Fatalf("stream: %v", err)
	}
	s := &stream{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
	}()
	d.st.Cleanup(func() { s.stop() })
	return s
}

func (s *stream) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// wait polls until cond holds for the lines so far.
func (s *stream) wait(ctx context.Context, d *world, cond func([]string) bool) {
	d.waitFor(ctx, "the client's answers", func() error {
		if cond(s.snapshot()) {
			return nil
		}
		return errors.New("not yet")
	})
}

func (s *stream) stop() []string {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		<-s.done
		s.cmd.Wait()
	}
	return s.snapshot()
}

// parseLine splits "<unix-ms> ok|err <rest>".
func parseLine(l string) (at time.Time, ok bool, rest string) {
	f := strings.SplitN(l, " ", 3)
	if len(f) < 3 {
		return time.Time{}, false, l
	}
	msec, _ := strconv.ParseInt(f[0], 10, 64)
	return time.UnixMilli(msec), f[1] == "ok", f[2]
}

// answerFrom returns who answered a line: "NAME saw ...".
func answerFrom(l string) (string, bool) {
	_, ok, rest := parseLine(l)
	name, _, found := strings.Cut(rest, " saw ")
	return name, ok && found
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64) + " ms"
}

func trim(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// explain tells a user how to explore the world --keep left running.
func (d *world) explain(p func(string, ...any)) {
	script := d.cleanupScript()
	fab := d.w.Fabric.Name
	p("\nThe world is still running (--keep). Explore it:")
	p("  ip netns exec %s %s service ls --mapper %s", fab, d.bin, mapperAddr)
	p("  ip netns exec %s %s endpoint ls --mapper %s", fab, d.bin, mapperAddr)
	p("  %s status --server server-0 --run-dir %s", d.bin, d.runDir)
	p("  ip netns exec %s %s app ask --to 10.1.0.20:8080 --count 5", d.namespaceOf("client").name, d.bin)
	p("  ip netns list | grep %s", strings.TrimSuffix(fab, "-fab"))
	p("Logs are in %s. Remove everything with:\n  sh %s", d.dir, script)
}
