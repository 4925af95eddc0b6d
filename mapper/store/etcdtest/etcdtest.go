// Package etcdtest starts real etcd clusters for tests: members built
// from the etcd server's Go module (a tool of this module, so the go
// command builds and caches it), listening on loopback ports, keeping
// their data in a temporary directory, and killed by PID when the cluster
// is closed. Members can be killed with SIGKILL and started again on
// their data, to test what a dead member does to daoli.
//
// DAOLI_ETCD, if set, names an etcd binary to use instead (for example
// Debian's /usr/bin/etcd from etcd-server).
package etcdtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Module is the etcd server's package, a tool in go.mod.
const Module = "go.etcd.io/etcd/server/v3"

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// Binary returns the path of an etcd server binary, building it first if
// needed (about half a minute once, then cached by the go command). The
// working directory must be inside this module; BinaryIn names it.
func Binary() (string, error) { return BinaryIn("") }

// BinaryIn is Binary with the go command run in dir, a directory of this
// module ("" means the working directory).
func BinaryIn(dir string) (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv("DAOLI_ETCD"); p != "" {
			binPath = p
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("go", "tool", "-n", Module)
		cmd.Dir = dir
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			binErr = fmt.Errorf("build etcd (go tool -n %s): %v: %s", Module, err, stderr.String())
			return
		}
		binPath = strings.TrimSpace(string(out))
	})
	return binPath, binErr
}

// Options shape a cluster.
type Options struct {
	// TLS serves the client URLs over TLS with a fresh CA; ClientTLS
	// returns a config for clients. Peers always talk in the clear.
	TLS bool
	// Host is the address members listen on. Zero means an address of
	// the cluster's own in 127.0.0.0/8 (see Loopback).
	Host string
	// Exec is put before every member's command line, to run it
	// elsewhere: {"ip", "netns", "exec", NAME} runs it in a network
	// namespace (ip netns exec execs it, so its PID is etcd's).
	Exec []string
	// Dial, if set, makes the connections that check a member's health,
	// for members that the test's own namespace cannot reach.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Binary is the etcd server to run. Zero means Binary().
	Binary string
}

// Cluster is a running etcd cluster.
type Cluster struct {
	Members []*Member
	dir     string
	ca      *x509.Certificate
	caKey   *ecdsa.PrivateKey
	tlsDir  string
	host    string
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Member is one etcd member.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	c         *Cluster
	args      []string
	log       string
	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{}
}

// Start starts an n-member cluster and waits until it has a leader.
func Start(n int, opts Options) (*Cluster, error) {
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = Binary(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "daoli-etcd-")
	if err != nil {
		return nil, err
	}
	host := opts.Host
	if host == "" {
		host = Loopback()
	}
	c := &Cluster{dir: dir, dial: opts.Dial, host: host}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
		if err := c.makeCA(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	// Members run in another namespace (Exec) have its ports to
	// themselves; this process can only ask its own for free ones.
	probe := host
	if len(opts.Exec) > 0 {
		probe = "127.0.0.1"
	}
	ports, err := freePorts(probe, 2*n)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://%s:%d", scheme, host, ports[2*i]),
			PeerURL:   fmt.Sprintf("http://%s:%d", host, ports[2*i+1]),
			c:         c,
		}
		m.log = filepath.Join(dir, m.Name+".log")
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	token := filepath.Base(dir)
	for _, m := range c.Members {
		m.args = append(slices.Clone(opts.Exec), bin,
			"--name", m.Name,
			"--data-dir", filepath.Join(dir, m.Name),
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new", "--initial-cluster-token", token,
			// Fast elections, so that a killed leader costs half a second.
			"--heartbeat-interval", "50", "--election-timeout", "500",
			// daoli's batched registrations are large transactions.
			"--max-txn-ops", "20000", "--max-request-bytes", "33554432",
			"--log-level", "error",
		)
		if opts.TLS {
			cert, key, err := c.issue(m.Name, true)
			if err != nil {
				c.Close()
				return nil, err
			}
			m.args = append(m.args, "--cert-file", cert, "--key-file", key,
				"--trusted-ca-file", filepath.Join(c.tlsDir, "ca.pem"), "--client-cert-auth")
		}
		if err := m.Start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

// Close kills every member and removes the cluster's files.
func (c *Cluster) Close() {
	for _, m := range c.Members {
		m.Kill()
	}
	os.RemoveAll(c.dir)
}

// Logs returns the tail of every member's log, for a failing test.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, m := range c.Members {
		out, _ := os.ReadFile(m.log)
		if len(out) > 4000 {
			out = out[len(out)-4000:]
		}
		fmt.Fprintf(&b, "--- %s\n%s", m.Name, out)
	}
	return b.String()
}

// WaitHealthy waits until every running member reports a leader.
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		for !m.healthy() {
			if time.Now().After(deadline) {
				return fmt.Errorf("etcd member %s at %s not healthy after %v:\n%s", m.Name, m.ClientURL, timeout, c.Logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func (m *Member) healthy() bool {
	hc, err := m.httpClient()
	if err != nil {
		return false
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(m.ClientURL + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(b.String(), `"health":"true"`)
}

// Leader returns the member that leads the cluster now, asking the
// running members through etcd's HTTP gateway.
func (c *Cluster) Leader() (*Member, error) {
	ids := map[string]*Member{}
	var leader string
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		if err := m.post("/v3/maintenance/status", &st); err != nil {
			return nil, fmt.Errorf("status of etcd member %s: %w", m.Name, err)
		}
		ids[st.Header.MemberID] = m
		if st.Leader != "" && st.Leader != "0" {
			leader = st.Leader
		}
	}
	if m := ids[leader]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("no running etcd member leads (leader %q)", leader)
}

func (m *Member) httpClient() (*http.Client, error) {
	tr := &http.Transport{DialContext: m.c.dial}
	if m.c.ca != nil {
		cfg, err := m.c.ClientTLS()
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = cfg
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: tr}, nil
}

func (m *Member) post(path string, out any) error {
	hc, err := m.httpClient()
	if err != nil {
		return err
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post(m.ClientURL+path, "application/json", strings.NewReader("{}"))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Start starts the member (again) on its data directory.
func (m *Member) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("etcd member %s is running", m.Name)
	}
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.args[0], m.args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, and killed if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	m.cmd = cmd
	m.exited = make(chan struct{})
	go func(exited chan struct{}) {
		cmd.Wait()
		logf.Close()
		close(exited)
	}(m.exited)
	return nil
}

// Running reports whether the member's process is running.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Kill kills the member with SIGKILL, as a crash would, and waits for it.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// ---- TLS ----

func (c *Cluster) makeCA() error {
	c.tlsDir = filepath.Join(c.dir, "tls")
	if err := os.MkdirAll(c.tlsDir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	c.ca, _ = x509.ParseCertificate(der)
	c.caKey = key
	return writePEM(filepath.Join(c.tlsDir, "ca.pem"), "CERTIFICATE", der)
}

var serial atomic.Int64

// issue writes a certificate and key signed by the cluster's CA and
// returns their paths. A server certificate names 127.0.0.1.
func (c *Cluster) issue(name string, server bool) (cert, key string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1 + serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	if server {
		tmpl.IPAddresses = []net.IP{net.ParseIP(c.host)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &k.PublicKey, c.caKey)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", err
	}
	cert = filepath.Join(c.tlsDir, name+".pem")
	key = filepath.Join(c.tlsDir, name+"-key.pem")
	if err := writePEM(cert, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return cert, key, writePEM(key, "EC PRIVATE KEY", kder)
}

// ClientFiles issues a client certificate and returns the paths of the
// CA, the certificate and its key, as a user passes them to daoli.
func (c *Cluster) ClientFiles(name string) (ca, cert, key string, err error) {
	if c.ca == nil {
		return "", "", "", errors.New("etcdtest: the cluster does not use TLS")
	}
	cert, key, err = c.issue(name, false)
	return filepath.Join(c.tlsDir, "ca.pem"), cert, key, err
}

// ClientTLS returns a client configuration trusting the cluster's CA,
// with a fresh client certificate.
func (c *Cluster) ClientTLS() (*tls.Config, error) {
	ca, cert, key, err := c.ClientFiles("client")
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// Loopback returns a random address in 127.0.0.0/8 other than 127.0.0.1.
// A test that restarts a listener on the port it had before needs a
// port nobody else can take in the meantime: on 127.0.0.1 any other
// test's "listen on port 0" may be handed it, on an address of its own
// only a wildcard listener could collide.
func Loopback() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("127.%d.%d.%d", 2+b[0]%250, b[1], 1+b[2]%254)
}

func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
