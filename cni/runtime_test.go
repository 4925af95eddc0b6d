package cni_test

// The runtime tests run Debian's containerd (1.6, with its CRI plugin) on
// each server of the world, driven by crictl as kubelet drives it: pod
// sandboxes whose network is daoli, from an image built here from the
// static daoli binary (no pulls).
//
//	server-N ns   daoli agent; containerd (nsenter --net: the server's
//	              network, the machine's mounts, so its pods' namespaces
//	              under /run/netns reach the agent), state in the test's
//	              directory, its own socket, runc root and cgroup parent
//	pods          made by containerd; the CNI plugin is daoli-cni, beside
//	              the loopback plugin containerd's CRI always runs
//
// Everything is removed at cleanup, also on failure: pods (so the plugin
// sees every DEL), containerd by its PID, shims it left, mounts under the
// test's directory, cgroups, the network namespaces.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
)

// tools is where scripts/setup.sh kubernetes puts crictl and the CNI
// loopback plugin.
const tools = "../.tools"

// requireRuntime skips (or, with DAOLI_REQUIRE_PRIVILEGED=1, fails) when
// containerd, runc, crictl or the loopback plugin is missing.
func requireRuntime(t *testing.T) {
	t.Helper()
	testbed.RequirePrivileged(t)
	var missing []string
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	for _, f := range []string{"crictl", "cni/loopback"} {
		if _, err := os.Stat(filepath.Join(tools, f)); err != nil {
			missing = append(missing, ".tools/"+f)
		}
	}
	if len(missing) == 0 {
		return
	}
	reason := fmt.Sprintf("needs %s (scripts/setup.sh kubernetes installs them)", strings.Join(missing, ", "))
	if os.Getenv(testbed.RequireEnv) == "1" {
		t.Fatalf("%s, and %s=1 forbids skipping", reason, testbed.RequireEnv)
	}
	t.Skip(reason)
}

const podImage = "daoli.test/daoli:1"

// cri is one server's containerd.
type cri struct {
	t      *testing.T
	e      *env
	server int
	dir    string
	sock   string
	cgroup string
	cmd    *exec.Cmd
	logs   bytes.Buffer

	mu     sync.Mutex
	netnss []string // pod namespaces seen, removed at cleanup if containerd did not
}

// startCRI runs a containerd for server i whose CNI network is daoli
// through the server's agent, with the pod image imported.
func (e *env) startCRI(i int, image string) *cri {
	t := e.t
	t.Helper()
	dir, err := os.MkdirTemp("", "daoli-cri-")
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	rand.Read(b[:])
	c := &cri{t: t, e: e, server: i, dir: dir, sock: filepath.Join(dir, "containerd.sock"), cgroup: "/daoli-test-" + hex.EncodeToString(b[:])}
	testbed.RemoveCreatedDirs(t, "/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni")
	t.Cleanup(c.stop)

	bin := filepath.Join(dir, "cni-bin")
	conf := filepath.Join(dir, "net.d")
	for _, d := range []string{bin, conf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The install step an operator runs (docs/kubernetes.md), with the
	// list at containerd 1.6's CNI version, its default.
	if out, err := exec.Command(filepath.Join(e.pluginDir, "daoli-cni"), "install", "--bin-dir", bin, "--conf-dir", conf,
		"--network", "blue", "--agent-socket", e.socket(i), "--ports", "8080/tcp").CombinedOutput(); err != nil {
		t.Fatalf("daoli-cni install: %v\n%s", err, out)
	}
	loopback, _ := filepath.Abs(filepath.Join(tools, "cni/loopback"))
	if err := os.Symlink(loopback, filepath.Join(bin, "loopback")); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[5]q
    conf_dir = %[6]q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = %[7]q
        SystemdCgroup = false
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, podImage, bin, conf, filepath.Join(dir, "runc"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	crictl := fmt.Sprintf("runtime-endpoint: unix://%[1]s\nimage-endpoint: unix://%[1]s\ntimeout: 30\npull-image-on-create: false\ndisable-pull-on-run: true\n", c.sock)
	if err := os.WriteFile(filepath.Join(dir, "crictl.yaml"), []byte(crictl), 0o644); err != nil {
		t.Fatal(err)
	}
	// nsenter execs containerd, so the PID is containerd's.
	c.cmd = exec.Command("nsenter", "--net=/run/netns/"+e.w.Servers[i].Name, "--", "containerd", "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = &syncWriter{w: &c.logs}, &syncWriter{w: &c.logs}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, err := c.crictlOut("info")
		if err == nil && strings.Contains(out, `"NetworkReady"`) && !strings.Contains(out, "cni plugin not initialized") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd of %s not ready: %v\n%s", serverName(i), err, out)
		}
	}
	if out, err := exec.Command("ctr", "--address", c.sock, "-n", "k8s.io", "images", "import", image).CombinedOutput(); err != nil {
		t.Fatalf("import the pod image: %v\n%s", err, out)
	}
	return c
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func (c *cri) crictlOut(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(tools, "crictl"), append([]string{"--config", filepath.Join(c.dir, "crictl.yaml")}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

func (c *cri) crictl(args ...string) string {
	c.t.Helper()
	out, err := c.crictlOut(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// stop removes every pod (the plugin sees each DEL while the agent still
// runs), stops containerd and cleans what it left.
func (c *cri) stop() {
	t := c.t
	if c.cmd != nil && c.cmd.Process != nil {
		if out, err := c.crictlOut("rmp", "-af"); err != nil {
			t.Errorf("remove the pods of %s: %v: %s", serverName(c.server), err, out)
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Errorf("containerd of %s did not stop in 20s; killing it", serverName(c.server))
			c.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("containerd of %s:\n%s", serverName(c.server), tail(c.logs.String(), 80))
		}
	}
	// Shims outlive containerd when a pod could not be removed: they are
	// this test's, named by its socket.
	for _, pid := range processesWith("containerd-shim", c.sock) {
		t.Errorf("a shim of %s outlived its pods: killing PID %d", serverName(c.server), pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	c.mu.Lock()
	for _, ns := range c.netnss {
		if _, err := os.Stat(ns); err == nil {
			syscall.Unmount(ns, syscall.MNT_DETACH)
			os.Remove(ns)
		}
	}
	c.mu.Unlock()
	unmountUnder(c.dir)
	if err := os.RemoveAll(c.dir); err != nil {
		t.Errorf("remove %s: %v", c.dir, err)
	}
	testbed.RemoveCgroups(t, c.cgroup)
}

// processesWith returns the PIDs whose command line holds both words.
func processesWith(a, b string) []int {
	var pids []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if bytes.Contains(cmdline, []byte(a)) && bytes.Contains(cmdline, []byte(b)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			points = append(points, fields[4])
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	for _, p := range points {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// criPod is a pod sandbox run by containerd, with one container.
type criPod struct {
	c         *cri
	id, ctr   string
	ip        netip.Addr
	netns     string
	name, uid string
}

// runPod runs a pod of namespace/name with the annotations and one
// container running the daoli binary with args.
func (c *cri) runPod(namespace, name string, annotations map[string]string, args ...string) *criPod {
	c.t.Helper()
	var u [16]byte
	rand.Read(u[:])
	p := &criPod{c: c, name: name, uid: hex.EncodeToString(u[:])}
	podCfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": namespace, "uid": p.uid, "attempt": 0},
		"hostname":      name,
		"log_directory": filepath.Join(c.dir, "logs", p.uid),
		"annotations":   annotations,
		"linux": map[string]any{"cgroup_parent": c.cgroup,
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 0, "pid": 1, "ipc": 0}}},
	}
	ctrCfg := map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": podImage},
		"command":  []string{"/daoli"},
		"args":     args,
		"log_path": "app.log",
		"linux":    map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 0, "pid": 1, "ipc": 0}}},
	}
	podFile, ctrFile := c.writeJSON(podCfg), c.writeJSON(ctrCfg)
	p.id = c.crictl("runp", podFile)
	var insp struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(c.crictl("inspectp", p.id)), &insp); err != nil {
		c.t.Fatalf("inspectp %s: %v", p.id, err)
	}
	var err error
	if p.ip, err = netip.ParseAddr(insp.Status.Network.IP); err != nil {
		c.t.Fatalf("pod %s/%s has no IP in inspectp: %v", namespace, name, err)
	}
	for _, ns := range insp.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			p.netns = ns.Path
		}
	}
	c.mu.Lock()
	c.netnss = append(c.netnss, p.netns)
	c.mu.Unlock()
	p.ctr = c.crictl("create", p.id, ctrFile, podFile)
	c.crictl("start", p.ctr)
	return p
}

func (c *cri) writeJSON(v any) string {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	f, err := os.CreateTemp(c.dir, "*.json")
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		c.t.Fatal(err)
	}
	return f.Name()
}

// exec runs the daoli binary in the pod's container (CRI ExecSync).
func (p *criPod) exec(args ...string) (string, error) {
	return p.c.crictlOut(append([]string{"exec", "-s", "--timeout", "20", p.ctr, "/daoli"}, args...)...)
}

// ask asks addr from inside the pod until name answers.
func (p *criPod) ask(addr, name string) {
	p.c.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, err := p.exec("app", "ask", "--to", addr, "--count", "1", "--timeout", "500ms")
		if err == nil && strings.Contains(out, " ok "+name+" saw") {
			return
		}
		if time.Now().After(deadline) {
			p.c.t.Fatalf("pod %s never reached %s at %s: %v %s", p.name, name, addr, err, out)
		}
	}
}

// remove stops and removes the pod, as kubelet does when it deletes one.
func (p *criPod) remove() {
	p.c.t.Helper()
	p.c.crictl("stopp", p.id)
	p.c.crictl("rmp", p.id)
}

// buildImage writes an OCI image layout holding the daoli binary, which
// `ctr images import` takes: its entrypoint is `daoli app pause`, so it
// serves as the sandbox image, and containers give their own command.
func buildImage(t *testing.T, bin string) string {
	t.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "daoli", Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
	tw.Write(data)
	tw.Close()
	blobs := map[string][]byte{}
	put := func(b []byte) string {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d
	}
	layerDigest := put(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/daoli", "app", "pause"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest := put(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layer.Len()}},
	})
	manifestDigest := put(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": len(manifest),
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": podImage, "org.opencontainers.image.ref.name": podImage},
		}},
	})
	path := filepath.Join(t.TempDir(), "image.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := tar.NewWriter(f)
	file := func(name string, b []byte) {
		out.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		out.Write(b)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", index)
	for d, b := range blobs {
		file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPodsThroughContainerd: pods run by containerd on two servers talk by
// their IPs; a pod removed and run again on the other server gets its IP
// back; and the failover story: the master pod of a service stopped, its
// backup answers on the same IP:port.
func TestPodsThroughContainerd(t *testing.T) {
	requireRuntime(t)
	e := newEnv(t, 2)
	image := buildImage(t, e.bin)
	cris := []*cri{e.startCRI(0, image), e.startCRI(1, image)}

	web := cris[0].runPod("shop", "web-0", nil, "app", "serve", "--port", "8080", "--name", "web-0")
	client := cris[1].runPod("shop", "client", nil, "app", "serve", "--port", "8080", "--name", "client")
	if web.ip == client.ip {
		t.Fatalf("two pods share %s", web.ip)
	}
	client.ask(web.ip.String()+":8080", "web-0")
	web.ask(client.ip.String()+":8080", "client")

	// Removed and run again, on the other server: the same IP.
	before := web.ip
	web.remove()
	web = cris[1].runPod("shop", "web-0", nil, "app", "serve", "--port", "8080", "--name", "web-0")
	if web.ip != before {
		t.Errorf("web-0 run again got %s, want its old %s", web.ip, before)
	}
	client.ask(web.ip.String()+":8080", "web-0")

	// Failover: master and backup of one service on two servers.
	svc := func(prio string) map[string]string {
		return map[string]string{"daoli.io/service": "db", "daoli.io/mode": "failover", "daoli.io/priority": prio}
	}
	master := cris[0].runPod("shop", "db-master", svc("10"), "app", "serve", "--port", "8080", "--name", "master")
	backup := cris[1].runPod("shop", "db-backup", svc("1"), "app", "serve", "--port", "8080", "--name", "backup")
	if master.ip != backup.ip {
		t.Fatalf("master %s and backup %s of one service, want one IP", master.ip, backup.ip)
	}
	addr := master.ip.String() + ":8080"
	client.ask(addr, "master")
	// A client retrying every 20 ms, from inside the client pod.
	ask := exec.Command("nsenter", "--net="+client.netns, "--", e.bin, "app", "ask", "--to", addr,
		"--count", "0", "--interval", "20ms", "--timeout", "20ms")
	out, err := ask.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ask.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ask.Process.Kill(); ask.Wait() })
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	waitLine(t, lines, " ok master saw", 10*time.Second)
	stopped := time.Now()
	master.c.crictl("stopp", master.id)
	var lastMaster, firstBackup int64
	for deadline := time.After(20 * time.Second); firstBackup == 0; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the client ended")
			}
			ts, _ := strconv.ParseInt(strings.Fields(l)[0], 10, 64)
			switch {
			case strings.Contains(l, " ok master saw"):
				lastMaster = ts
			case strings.Contains(l, " ok backup saw"):
				firstBackup = ts
			}
		case <-deadline:
			t.Fatal("the backup never answered after the master pod was stopped")
		}
	}
	t.Logf("master pod stopped (crictl stopp) to the backup's first answer: %d ms; gap between the last master and the first backup answer: %d ms",
		firstBackup-stopped.UnixMilli(), firstBackup-lastMaster)
	master.c.crictl("rmp", master.id)

}

func waitLine(t *testing.T, lines <-chan string, want string, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the client ended before %q", want)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q in %v", want, d)
		}
	}
}
