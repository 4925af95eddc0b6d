package demo

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
)

// world is the demo's cluster: a testbed World, a mapper process on the
// fabric, an agent process per server, and the containers.
type world struct {
	st     *testbed.Stack
	bin    string
	dir    string // logs, the registry, sockets
	w      *testbed.World
	bpffs  string
	mc     *mapper.Client
	procs  []*exec.Cmd
	runDir string
}

// mapperIP is where the mapper listens, on the fabric bridge.
const (
	mapperIP   = "192.0.2.250"
	mapperAddr = mapperIP + ":9470"
)

func (d *world) serverName(i int) string { return fmt.Sprintf("server-%d", i) }

// start runs args in namespace ns as a process of its own, its output in
// dir/<log>.log, killed by PID at cleanup. Files, not pipes: with --keep
// the process outlives the demo.
func (d *world) start(ns *testbed.Namespace, log string, args ...string) *exec.Cmd {
	f, err := os.Create(filepath.Join(d.dir, log+".log"))
	if err != nil {
		d.st.Fatalf("create log: %v", err)
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches the demo only
	if err := cmd.Start(); err != nil {
		d.st.Fatalf("start %s: %v", strings.Join(args, " "), err)
	}
	d.procs = append(d.procs, cmd)
	d.st.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// build creates the fabric, the servers, the mapper and the agents.
func (d *world) build(ctx context.Context, servers int) {
	d.w = testbed.Build(d.st, servers)
	d.bpffs = testbed.BPFFS(d.st)
	d.runDir = filepath.Join(d.dir, "run")
	d.w.Fabric.Run("ip", "addr", "add", mapperIP+"/24", "dev", "br0")
	// Plain HTTP on purpose: the fabric is a namespace of this machine
	// that nothing else reaches (the demo says so; docs/security.md).
	d.start(d.w.Fabric, "mapper", d.bin, "mapper", "--listen", mapperAddr, "--insecure", "--db", filepath.Join(d.dir, "registry.db"))
	// The mapper is reachable only on the fabric: dial it from there.
	d.mc = mapper.NewClient(mapperAddr, &http.Client{Transport: &http.Transport{DialContext: d.w.Fabric.DialContext}})
	d.waitFor(ctx, "the mapper", func() error { _, err := d.mc.Networks(ctx); return err })
	for i, s := range d.w.Servers {
		d.start(s.Namespace, d.serverName(i), d.bin, "agent", "--uplink", "uplink", "--name", d.serverName(i),
			"--mapper", mapperAddr, "--bpffs", filepath.Join(d.bpffs, d.serverName(i)), "--run-dir", d.runDir)
	}
	for i := range d.w.Servers {
		cl := d.agent(i)
		d.waitFor(ctx, "the agent of "+d.serverName(i), func() error { _, err := cl.Status(ctx); return err })
	}
}

func (d *world) waitFor(ctx context.Context, what string, f func() error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			panic(testbed.Fatal{Msg: ctx.Err().Error()})
		}
		if time.Now().After(deadline) {
			d.st.Fatalf("%s did not come up: %v (logs in %s)", what, err, d.dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *world) agent(i int) *agent.Client {
	return agent.NewClient(agent.SocketPath(d.runDir, d.serverName(i)))
}

// container is a container: a namespace attached through server's agent,
// optionally running the app server.
type container struct {
	ns   *testbed.Namespace
	ep   mapper.Endpoint
	app  *exec.Cmd
	name string
}

func (d *world) container(ctx context.Context, name string, server int, req agent.AttachRequest, serve bool) *container {
	c := &container{ns: d.w.AddNamespace(name), name: name}
	req.Netns = filepath.Join("/run/netns", c.ns.Name)
	req.Network, req.Name = "blue", name
	e, err := d.agent(server).Attach(ctx, req)
	if err != nil {
		d.st.Fatalf("attach %s on %s: %v", name, d.serverName(server), err)
	}
	c.ep = e
	if serve {
		port := "8080"
		if len(req.Ports) > 0 {
			port = fmt.Sprint(req.Ports[0].Port)
		}
		c.app = d.start(c.ns, name, d.bin, "app", "serve", "--port", port, "--name", name)
	}
	return c
}

// settle waits until every agent has programmed the registry's current
// revision.
func (d *world) settle(ctx context.Context) {
	snap, err := d.mc.Snapshot(ctx)
	if err != nil {
		d.st.Fatalf("snapshot: %v", err)
	}
	for i := range d.w.Servers {
		cl := d.agent(i)
		d.waitFor(ctx, d.serverName(i)+" to apply revision "+fmt.Sprint(snap.Revision), func() error {
			s, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			if s.Applied < snap.Revision {
				return fmt.Errorf("applied %d", s.Applied)
			}
			return nil
		})
	}
}

// cleanupScript writes a script that removes what --keep left running.
func (d *world) cleanupScript() string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Removes what `daoli demo --keep` left running.\n")
	for _, p := range d.procs {
		fmt.Fprintf(&b, "kill %d 2>/dev/null\n", p.Process.Pid)
	}
	b.WriteString("sleep 0.5\n")
	for _, n := range d.w.Namespaces() {
		fmt.Fprintf(&b, "ip netns del %s 2>/dev/null\n", n)
	}
	fmt.Fprintf(&b, "umount %s && rmdir %s\nrm -rf %s\n", d.bpffs, d.bpffs, d.dir)
	path := filepath.Join(os.TempDir(), fmt.Sprintf("daoli-demo-cleanup-%d.sh", os.Getpid()))
	os.WriteFile(path, []byte(b.String()), 0o755)
	return path
}
