package mapper

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Role is what a client of the mapper may do. docs/security.md says who
// holds which.
type Role string

const (
	// RoleOperator may do everything.
	RoleOperator Role = "operator"
	// RoleServer is an agent, or a hook on its server (the Docker
	// plugin): it may read everything, and write only what belongs to
	// its own server: the server's registration and liveness, endpoints
	// on it, and endpoints it takes over by a move.
	RoleServer Role = "server"
	// RoleReader may list and watch, and write nothing.
	RoleReader Role = "reader"
	// RoleMapper names a mapper's own serving certificate; it is no
	// client role.
	RoleMapper Role = "mapper"
)

// known says whether r is one of the roles above.
func (r Role) known() bool {
	switch r {
	case RoleOperator, RoleServer, RoleReader, RoleMapper:
		return true
	}
	return false
}

// IdentityScheme is the scheme of the URI in a certificate's subject
// alternative names that names its holder: daoli://ROLE/NAME.
const IdentityScheme = "daoli"

// Identity is who a request comes from, as its client certificate says.
type Identity struct {
	Role Role
	Name string
}

func (id Identity) String() string { return string(id.Role) + " " + id.Name }

// URI is the identity's form in a certificate.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: IdentityScheme, Host: string(id.Role), Path: "/" + id.Name}
}

// IdentityOf reads the identity a certificate names: its one daoli://
// URI.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != IdentityScheme {
			continue
		}
		id := Identity{Role: Role(u.Host), Name: strings.TrimPrefix(u.Path, "/")}
		if !id.Role.known() {
			return Identity{}, fmt.Errorf("certificate %q names unknown role %q in %s", cert.Subject.CommonName, u.Host, u)
		}
		if id.Name == "" {
			return Identity{}, fmt.Errorf("certificate %q names no one in %s", cert.Subject.CommonName, u)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Identity{}, fmt.Errorf("certificate %q has no %s:// URI naming its role and name", cert.Subject.CommonName, IdentityScheme)
	default:
		return Identity{}, fmt.Errorf("certificate %q names %d identities; want one", cert.Subject.CommonName, len(found))
	}
}

type ctxIdentity struct{}

// WithIdentity returns ctx carrying the identity a request was made with:
// the registry then permits only what the identity may do. A context
// without one is the mapper's own, or an embedding program's, and may do
// everything.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxIdentity{}, id)
}

func identityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxIdentity{}).(Identity)
	return id, ok
}

// permitServer says whether ctx's identity may write what belongs to
// server.
func permitServer(ctx context.Context, server, what string) error {
	id, ok := identityFrom(ctx)
	if !ok || id.Role == RoleOperator || id.Role == RoleServer && id.Name == server {
		return nil
	}
	if id.Role == RoleServer {
		return fmt.Errorf("%w: %s may %s only on its own server, not on %s", ErrForbidden, id, what, server)
	}
	return fmt.Errorf("%w: %s may not %s", ErrForbidden, id, what)
}

// permitOperator says whether ctx's identity may do what only operators
// may.
func permitOperator(ctx context.Context, what string) error {
	id, ok := identityFrom(ctx)
	if !ok || id.Role == RoleOperator {
		return nil
	}
	return fmt.Errorf("%w: %s may not %s; that takes an operator certificate", ErrForbidden, id, what)
}

// Authenticator checks client certificates against the registry's CA.
type Authenticator struct {
	roots *x509.CertPool
}

// NewAuthenticator trusts the client certificates signed by the CAs in
// the PEM file caFile.
func NewAuthenticator(caFile string) (*Authenticator, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	return &Authenticator{roots: pool}, nil
}

// authenticate returns the identity of a request's verified client
// certificate.
func (au *Authenticator) authenticate(r *http.Request) (Identity, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return Identity{}, fmt.Errorf("%w: no client certificate; the mapper requires one signed by the registry's CA (--tls-cert and --tls-key)", ErrUnauthenticated)
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: au.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return Identity{}, fmt.Errorf("%w: client certificate %q: %v", ErrUnauthenticated, leaf.Subject.CommonName, err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if id.Role == RoleMapper {
		return Identity{}, fmt.Errorf("%w: certificate %q is a mapper's serving certificate, not a client's", ErrUnauthenticated, leaf.Subject.CommonName)
	}
	return id, nil
}

// ServerTLS is the TLS configuration of a mapper serving certFile/keyFile
// that asks every client for a certificate. Which certificates it accepts
// is the Authenticator's decision, so that a request without a valid one
// is answered 401 with the reason, not a failed handshake.
func ServerTLS(certFile, keyFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load the mapper's certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS13}, nil
}

// ClientTLS is the TLS configuration of a client that trusts the mappers
// signed by the CA in caFile and, with certFile and keyFile, presents
// that certificate.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load the client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	case certFile != "" || keyFile != "":
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	return cfg, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}
