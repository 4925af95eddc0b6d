package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
	"github.com/spf13/cobra"
)

const (
	// readHeaderTimeout bounds how long a client may take to send its
	// request headers, so idle half-open connections cannot pile up.
	readHeaderTimeout = 10 * time.Second
	// shutdownTimeout bounds the wait for requests in flight on SIGTERM.
	shutdownTimeout = 10 * time.Second
)

// mapperFlags are the flags of "daoli mapper", as typed.
type mapperFlags struct {
	listen        string
	db            string
	etcd          string
	etcdCA        string
	etcdCert      string
	etcdKey       string
	etcdPrefix    string
	serverTTL     time.Duration
	blockSize     uint16
	wirePorts     string
	identityPorts string
	logLevel      string
	logFormat     string
	tlsCert       string
	tlsKey        string
	tlsClientCA   string
	insecure      bool
	limits        mapper.Limits
}

// mapperConfig is mapperFlags parsed and checked.
type mapperConfig struct {
	listen   string
	db       string
	etcd     *store.EtcdConfig // nil: the bbolt file db
	registry mapper.Config     // without Store and Logger
	level    slog.Level
	json     bool
	tls      *tls.Config           // nil: plain HTTP
	auth     *mapper.Authenticator // nil: no client certificates
	insecure bool                  // plain HTTP beyond loopback, on purpose
	limits   mapper.Limits
}

func (f *mapperFlags) config() (mapperConfig, error) {
	cfg := mapperConfig{listen: f.listen, db: f.db}
	_, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return mapperConfig{}, badFlag("listen", f.listen, fmt.Errorf("%w; want host:port such as %s", err, mapper.DefaultAddr))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return mapperConfig{}, badFlagf("listen", f.listen, "port %q is not a number from 0 to 65535", port)
	}
	if err := f.tlsConfig(&cfg); err != nil {
		return mapperConfig{}, err
	}
	switch {
	case f.etcd != "":
		ec, err := f.etcdConfig()
		if err != nil {
			return mapperConfig{}, err
		}
		cfg.etcd = ec
	case f.etcdCA != "" || f.etcdCert != "" || f.etcdKey != "" || f.etcdPrefix != "":
		return mapperConfig{}, badFlagf("etcd", "", "missing; --etcd-ca, --etcd-cert, --etcd-key and --etcd-prefix only apply with --etcd")
	case f.db == "":
		return mapperConfig{}, badFlagf("db", f.db, "missing; want the path of the registry file")
	}
	if f.serverTTL != 0 && f.serverTTL < time.Second {
		return mapperConfig{}, badFlagf("server-ttl", f.serverTTL.String(), "want one second or more (leases have a granularity of one second)")
	}
	cfg.registry.ServerTTL = f.serverTTL
	switch l := f.limits; {
	case l.Rate < 0:
		return mapperConfig{}, badFlagf("rate", strconv.FormatFloat(l.Rate, 'g', -1, 64), "want requests per second per client, or 0 for no limit")
	case l.Rate > 0 && l.Burst < 1:
		return mapperConfig{}, badFlagf("burst", strconv.Itoa(l.Burst), "want 1 or more requests")
	case l.Watches < 0:
		return mapperConfig{}, badFlagf("max-watches", strconv.Itoa(l.Watches), "want watch streams per client, or 0 for no limit")
	case l.ListPage < 0:
		return mapperConfig{}, badFlagf("max-list", strconv.Itoa(l.ListPage), "want items per list response, or 0 for no limit")
	}
	cfg.limits = f.limits
	if b := f.blockSize; b != 0 && (b < 8 || b&(b-1) != 0) {
		return mapperConfig{}, badFlagf("block-size", strconv.Itoa(int(b)), "want a power of two from 8 to 32768")
	}
	cfg.registry.BlockSize = f.blockSize
	if cfg.registry.WirePorts, err = parsePortRangeFlag("wire-ports", f.wirePorts); err != nil {
		return mapperConfig{}, err
	}
	if cfg.registry.IdentityPorts, err = parsePortRangeFlag("identity-ports", f.identityPorts); err != nil {
		return mapperConfig{}, err
	}
	if err := cfg.level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return mapperConfig{}, badFlagf("log-level", f.logLevel, "want debug, info, warn or error")
	}
	switch strings.ToLower(f.logFormat) {
	case "text":
	case "json":
		cfg.json = true
	default:
		return mapperConfig{}, badFlagf("log-format", f.logFormat, "want text or json")
	}
	return cfg, nil
}

// tlsConfig checks the serving flags: TLS with client certificates, or
// plain HTTP on loopback (or, with --insecure, anywhere).
func (f *mapperFlags) tlsConfig(cfg *mapperConfig) error {
	switch {
	case f.tlsCert != "" && f.tlsKey == "":
		return badFlagf("tls-cert", f.tlsCert, "--tls-cert needs --tls-key, the certificate's key")
	case f.tlsKey != "" && f.tlsCert == "":
		return badFlagf("tls-key", f.tlsKey, "--tls-key needs --tls-cert, the certificate it is the key of")
	case f.tlsCert != "" && f.tlsClientCA == "":
		return badFlagf("tls-client-ca", "", "missing; a mapper over TLS requires client certificates signed by this CA (daoli ca init makes one)")
	case f.tlsClientCA != "" && f.tlsCert == "":
		return badFlagf("tls-client-ca", f.tlsClientCA, "needs --tls-cert and --tls-key, the mapper's own certificate")
	case f.tlsCert != "" && f.insecure:
		return badFlagf("insecure", "true", "contradicts --tls-cert")
	}
	if f.tlsCert == "" {
		host, _, _ := net.SplitHostPort(f.listen)
		ip, err := netip.ParseAddr(host)
		if !f.insecure && host != "localhost" && (err != nil || !ip.IsLoopback()) {
			return badFlagf("listen", f.listen, "a mapper without TLS serves only on loopback, since anyone who reaches it may rewrite the registry; "+
				"give --tls-cert, --tls-key and --tls-client-ca (docs/security.md), or --insecure on a network only trusted machines reach")
		}
		cfg.insecure = f.insecure
		return nil
	}
	tc, err := mapper.ServerTLS(f.tlsCert, f.tlsKey)
	if err != nil {
		return badFlag("tls-cert", f.tlsCert, err)
	}
	if leaf := tc.Certificates[0].Leaf; leaf != nil {
		id, err := mapper.IdentityOf(leaf)
		if err != nil {
			return badFlag("tls-cert", f.tlsCert, err)
		}
		if id.Role != mapper.RoleMapper {
			return badFlagf("tls-cert", f.tlsCert, "the certificate names %s, not a mapper; make the mapper's with daoli ca issue DIR --role mapper --name NAME --host ADDRESS", id)
		}
	}
	au, err := mapper.NewAuthenticator(f.tlsClientCA)
	if err != nil {
		return badFlag("tls-client-ca", f.tlsClientCA, err)
	}
	cfg.tls, cfg.auth = tc, au
	return nil
}

// etcdConfig parses --etcd and its TLS flags.
func (f *mapperFlags) etcdConfig() (*store.EtcdConfig, error) {
	ec := &store.EtcdConfig{Prefix: f.etcdPrefix}
	if f.etcdPrefix != "" && !strings.HasPrefix(f.etcdPrefix, "/") {
		return nil, badFlagf("etcd-prefix", f.etcdPrefix, "want a key prefix starting with /, such as /cluster-a")
	}
	switch {
	case f.etcdCert != "" && f.etcdKey == "":
		return nil, badFlagf("etcd-cert", f.etcdCert, "--etcd-cert needs --etcd-key, the certificate's key")
	case f.etcdKey != "" && f.etcdCert == "":
		return nil, badFlagf("etcd-key", f.etcdKey, "--etcd-key needs --etcd-cert, the certificate it is the key of")
	}
	for _, e := range strings.Split(f.etcd, ",") {
		e = strings.TrimSpace(e)
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, badFlagf("etcd", f.etcd, "%q is not a member's client URL; want http(s)://host:port, several separated by commas", e)
		}
		if u.Scheme == "http" && (f.etcdCert != "" || f.etcdCA != "") {
			return nil, badFlagf("etcd", f.etcd, "%s is plain http but TLS files were given; want https:// URLs", e)
		}
		ec.Endpoints = append(ec.Endpoints, e)
	}
	if f.etcdCA == "" && f.etcdCert == "" && !strings.Contains(f.etcd, "https://") {
		return ec, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.etcdCA != "" {
		pem, err := os.ReadFile(f.etcdCA)
		if err != nil {
			return nil, badFlag("etcd-ca", f.etcdCA, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, badFlagf("etcd-ca", f.etcdCA, "holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	if f.etcdCert != "" {
		pair, err := tls.LoadX509KeyPair(f.etcdCert, f.etcdKey)
		if err != nil {
			return nil, badFlag("etcd-cert", f.etcdCert, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	ec.TLS = tc
	return ec, nil
}

func newMapperCmd(a *app) *cobra.Command {
	f := mapperFlags{
		listen:        mapper.DefaultAddr,
		db:            "./daoli.db",
		blockSize:     0, // the registry's own, or mapper.DefaultBlockSize for a new one
		wirePorts:     mapper.DefaultWirePorts.String(),
		identityPorts: mapper.DefaultIdentityPorts.String(),
		logLevel:      "info",
		logFormat:     "text",
	}
	cmd := &cobra.Command{
		Use:   "mapper [--listen ADDR] [--db PATH] [flags]",
		Short: "Run the mapper: the registry of networks, servers, endpoints and their 6-tuples",
		Long: `Run the mapper: the registry of networks, servers and endpoints, their
6-tuples and port blocks, served over HTTP/JSON (with a watch stream) for
agents and the daoli CLI. It runs until SIGINT or SIGTERM, then finishes
the requests in flight, ends watch streams and closes the registry.

The --db file IS the registry: one bbolt file holding every network,
server and endpoint and the change log. Back it up; never let two mappers
use it (the second waits for the lock, then fails).

With --etcd the registry lives in an etcd cluster instead and the mapper
holds no state: run several, on several machines, and give agents, the
CLI and the Docker plugin all their addresses (--mapper a,b,c). Each one
serves the whole API and watch stream; when one dies its clients move to
another and resume their watch where they were. See docs/ha.md.

Servers prove they are alive by renewing a lease (agents heartbeat every
second); a server that stops for --server-ttl is marked gone, and every
other server treats its endpoints as down.

Wire blocks are slices of each server's port space: keep --wire-ports out
of the servers' ephemeral port range (net.ipv4.ip_local_port_range) or
reserve it (net.ipv4.ip_local_reserved_ports); agents reserve it on their
server and refuse to start while a local socket sits inside it. Identity
blocks are what peers see as client ports. --block-size is fixed when the
registry is created: every dataplane masks ports with it.`,
		Example: `  daoli mapper --listen 127.0.0.1:9470 --db /var/lib/daoli/registry.db
  daoli mapper --listen 10.0.0.1:9470 --etcd https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379 \
      --etcd-ca /etc/daoli/etcd-ca.pem --etcd-cert /etc/daoli/mapper.pem --etcd-key /etc/daoli/mapper-key.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config()
			if err != nil {
				return err
			}
			return runMapper(cmd.Context(), cfg, a.stderr)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", f.listen, "address to serve the API on, host:port")
	fl.StringVar(&f.db, "db", f.db, "the registry file (bbolt); created if missing; unused with --etcd")
	fl.StringVar(&f.etcd, "etcd", "", "keep the registry in etcd: members' client URLs, separated by commas")
	fl.StringVar(&f.etcdCA, "etcd-ca", "", "CA certificate (PEM) that signed the etcd members' certificates")
	fl.StringVar(&f.etcdCert, "etcd-cert", "", "client certificate (PEM) to present to etcd, with --etcd-key")
	fl.StringVar(&f.etcdKey, "etcd-key", "", "key (PEM) of --etcd-cert")
	fl.StringVar(&f.etcdPrefix, "etcd-prefix", "", "prefix of every key, to keep several registries in one etcd cluster")
	fl.DurationVar(&f.serverTTL, "server-ttl", 0, "a server that renews no lease for this long is marked gone (0: 5s)")
	fl.Uint16Var(&f.blockSize, "block-size", f.blockSize, "ports in each wire and identity block: a power of two from 8 to 32768, fixed when the registry is created (0: the registry's, or 256 for a new one)")
	fl.StringVar(&f.wirePorts, "wire-ports", f.wirePorts, "range of each server address's ports given out as wire blocks, FIRST-LAST")
	fl.StringVar(&f.identityPorts, "identity-ports", f.identityPorts, "range identity blocks (the client ports peers see) come from, FIRST-LAST")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve over TLS with this certificate (PEM; daoli ca issue --role mapper makes it)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "key (PEM) of --tls-cert")
	fl.StringVar(&f.tlsClientCA, "tls-client-ca", "", "CA (PEM) whose client certificates the mapper accepts; their roles say what each may do (docs/security.md)")
	fl.BoolVar(&f.insecure, "insecure", false, "serve plain HTTP, with no authentication, on an address beyond loopback")
	fl.Float64Var(&f.limits.Rate, "rate", mapper.DefaultLimits.Rate, "requests per second a client (a certificate, or an address) may make on average; 0: no limit")
	fl.IntVar(&f.limits.Burst, "burst", mapper.DefaultLimits.Burst, "requests a client may make at once, above --rate")
	fl.IntVar(&f.limits.Watches, "max-watches", mapper.DefaultLimits.Watches, "watch streams a client may hold open at once; 0: no limit")
	fl.IntVar(&f.limits.ListPage, "max-list", mapper.DefaultLimits.ListPage, "items in one list response; longer lists come in pages; 0: no limit")
	fl.StringVar(&f.logLevel, "log-level", f.logLevel, "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", f.logFormat, "text or json (logs go to stderr)")
	return cmd
}

// runMapper serves the registry until ctx ends, then shuts down: it stops
// accepting, ends watch streams, waits for requests in flight and closes
// the store. Logs go to logw.
func runMapper(ctx context.Context, cfg mapperConfig, logw io.Writer) error {
	opts := &slog.HandlerOptions{Level: cfg.level}
	var h slog.Handler = slog.NewTextHandler(logw, opts)
	if cfg.json {
		h = slog.NewJSONHandler(logw, opts)
	}
	log := slog.New(h)

	var err error
	var st store.Store
	where := cfg.db
	if cfg.etcd != nil {
		ec := *cfg.etcd
		ec.Logger = log
		where = "etcd " + strings.Join(ec.Endpoints, ",")
		if ec.Prefix != "" {
			where += " prefix " + ec.Prefix
		}
		st, err = store.OpenEtcd(ec)
	} else {
		st, err = store.OpenBolt(store.BoltConfig{Path: cfg.db, Logger: log})
	}
	if err != nil {
		return fmt.Errorf("open registry: %w", err)
	}
	rc := cfg.registry
	rc.Store, rc.Logger = st, log
	reg, err := mapper.New(rc)
	if err != nil {
		st.Close()
		return fmt.Errorf("%w (check --block-size, --wire-ports and --identity-ports)", err)
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		st.Close()
		return fmt.Errorf("listen: %w", err)
	}
	api := mapper.NewAPI(reg, log)
	api.SetLimits(cfg.limits)
	defer api.Close()
	security := "plain HTTP on loopback"
	switch {
	case cfg.tls != nil:
		ln = tls.NewListener(ln, cfg.tls)
		api.RequireClientCerts(cfg.auth)
		security = "TLS, client certificates required"
	case cfg.insecure:
		security = "plain HTTP, no authentication (--insecure)"
		log.Warn("serving without TLS or authentication: anyone who reaches " + cfg.listen + " may rewrite the registry")
	}
	srv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: readHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(h, slog.LevelWarn),
	}
	wire, identity := reg.Capacity()
	lctx, stopLiveness := context.WithCancel(context.WithoutCancel(ctx))
	livenessDone := make(chan struct{})
	go func() { defer close(livenessDone); reg.RunLiveness(lctx) }()
	log.Info("mapper listening", "addr", ln.Addr().String(), "security", security, "registry", where,
		"rate", cfg.limits.Rate, "burst", cfg.limits.Burst, "max_watches", cfg.limits.Watches, "max_list", cfg.limits.ListPage,
		"block_size", reg.BlockSize(), "wire_ports", rc.WirePorts.String(), "identity_ports", rc.IdentityPorts.String(),
		"endpoints_per_server_ip", wire, "endpoints_per_ip", identity)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("mapper stopping", "reason", context.Cause(ctx).Error())
	case serveErr = <-served:
		serveErr = fmt.Errorf("serve: %w", serveErr)
	}

	api.Close() // watches never finish on their own; Shutdown waits for them
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	var shutErr error
	if err := srv.Shutdown(sctx); err != nil {
		shutErr = fmt.Errorf("shut down http server: %w", err)
	}
	stopLiveness()
	<-livenessDone
	var closeErr error
	if err := st.Close(); err != nil {
		closeErr = fmt.Errorf("close registry %s: %w", where, err)
	}
	err = errors.Join(serveErr, shutErr, closeErr)
	if err == nil {
		log.Info("mapper stopped")
	}
	return err
}
