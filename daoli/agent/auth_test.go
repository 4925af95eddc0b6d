package agent_test

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/daolinet/daoli/daoli/agent"
	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/pkitest"
)

// TestAgentsWithClientCertificates: with the mapper requiring client
// certificates, agents holding their servers' certificates register,
// renew their liveness, attach containers that talk to each other and
// fail over; an agent holding another server's certificate is refused
// and says so.
func TestAgentsWithClientCertificates(t *testing.T) {
	c := buildCluster(t, 2, pkitest.New(t))
	client, _ := c.container("client", 0, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.5")})
	web, _ := c.container("web", 1, agent.AttachRequest{IP: netip.MustParseAddr("10.1.0.9"), Ports: tcpUDP8080})
	serve(t, web, client, "web", "10.1.0.9:8080")
	srv := got(c.mc.Server(context.Background(), c.serverName(1)))(t)
	if srv.Gone {
		t.Errorf("server-1 is gone: its heartbeats were refused")
	}

	// An agent of server-1 holding server-0's certificate.
	cert, key := c.pki.Issue(mapper.RoleServer, c.serverName(0))
	out, err := c.w.Servers[1].Output(bin, "agent", "--uplink", "uplink", "--name", "server-1", "--mapper", c.addr,
		"--bpffs", filepath.Join(c.bpffs, "impostor"), "--run-dir", t.TempDir(),
		"--tls-ca", c.pki.CAFile(), "--tls-cert", cert, "--tls-key", key)
	if err == nil || !strings.Contains(err.Error()+out, "server server-0 may register servers only on its own server, not on server-1") {
		t.Errorf("an agent with another server's certificate: %v %s", err, out)
	}
	// Without a certificate, the mapper answers 401.
	anon := c.pki.Client(c.mc.URL(), "", "")
	_, err = anon.Snapshot(context.Background())
	var ae *mapper.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("a client without a certificate: %v, want 401", err)
	}
}

// TestSocketIsRootOnly: the agent's socket, whoever opens it attaching
// containers with the server's rights, is root's alone.
func TestSocketIsRootOnly(t *testing.T) {
	c := newCluster(t, 1)
	path := agent.SocketPath(c.runDir, c.serverName(0))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || st.Uid != 0 {
		t.Errorf("%s: mode %v, owner %d; want a socket of mode 0600 owned by root", path, fi.Mode(), st.Uid)
	}
}
