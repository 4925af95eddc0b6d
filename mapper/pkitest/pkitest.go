// Package pkitest makes a registry CA and the certificates it signs in a
// test's temporary directory, for tests of the mapper's client
// certificates.
package pkitest

import (
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
)

// PKI is a CA in a directory, and the certificates it signs there.
type PKI struct {
	t       testing.TB
	dir     string
	ca, key []byte
}

// New makes a CA valid for an hour.
func New(t testing.TB) *PKI {
	t.Helper()
	ca, key, err := mapper.NewCA("test registry", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{t: t, dir: t.TempDir(), ca: ca, key: key}
	p.write("ca.pem", ca)
	return p
}

// CAFile is the CA certificate's file.
func (p *PKI) CAFile() string { return filepath.Join(p.dir, "ca.pem") }

func (p *PKI) write(name string, b []byte) string {
	p.t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// Issue returns the files of a certificate for role/name, valid for
// hosts when role is mapper.RoleMapper.
func (p *PKI) Issue(role mapper.Role, name string, hosts ...string) (cert, key string) {
	p.t.Helper()
	c, k, err := mapper.Issue(p.ca, p.key, mapper.Identity{Role: role, Name: name}, hosts, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write(string(role)+"-"+name+".pem", c), p.write(string(role)+"-"+name+"-key.pem", k)
}

// Serve makes api require client certificates of the CA, and returns l
// wrapped in TLS with a mapper certificate for hosts.
func (p *PKI) Serve(api *mapper.API, l net.Listener, hosts ...string) net.Listener {
	p.t.Helper()
	return tls.NewListener(l, p.ServerTLS(api, hosts...))
}

// ServerTLS makes api require client certificates of the CA, and returns
// the TLS configuration of a mapper certificate for hosts.
func (p *PKI) ServerTLS(api *mapper.API, hosts ...string) *tls.Config {
	p.t.Helper()
	cert, key := p.Issue(mapper.RoleMapper, "mapper", hosts...)
	cfg, err := mapper.ServerTLS(cert, key)
	if err != nil {
		p.t.Fatal(err)
	}
	au, err := mapper.NewAuthenticator(p.CAFile())
	if err != nil {
		p.t.Fatal(err)
	}
	api.RequireClientCerts(au)
	return cfg
}

// Client is a mapper client of url presenting role/name's certificate
// (none when role is empty).
func (p *PKI) Client(url string, role mapper.Role, name string) *mapper.Client {
	p.t.Helper()
	return mapper.NewClient(url, p.HTTPClient(role, name))
}

// HTTPClient is an HTTP client that trusts the CA and presents
// role/name's certificate (none when role is empty).
func (p *PKI) HTTPClient(role mapper.Role, name string) *http.Client {
	p.t.Helper()
	var cert, key string
	if role != "" {
		cert, key = p.Issue(role, name)
	}
	cfg, err := mapper.ClientTLS(p.CAFile(), cert, key)
	if err != nil {
		p.t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}
