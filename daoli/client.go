package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envMapper names the environment variable that sets --mapper's default.
const envMapper = "DAOLI_MAPPER"

// Environment variables that set the client's TLS flags' defaults.
const (
	envTLSCA   = "DAOLI_TLS_CA"
	envTLSCert = "DAOLI_TLS_CERT"
	envTLSKey  = "DAOLI_TLS_KEY"
)

// clientFlags are the flags of every command that talks to a mapper.
type clientFlags struct {
	mapper                 string
	output                 string
	timeout                time.Duration
	tlsCA, tlsCert, tlsKey string
}

// addClientFlags adds --mapper, -o and --timeout to cmd and its
// subcommands.
func (a *app) addClientFlags(cmd *cobra.Command) {
	def := a.getenv(envMapper)
	if def == "" {
		def = mapper.DefaultAddr
	}
	f := cmd.PersistentFlags()
	f.StringVar(&a.client.mapper, "mapper", def, "mapper address, host:port or URL, or several separated by commas; $"+envMapper+" sets the default")
	a.addTLSFlags(f)
	a.addOutputFlag(cmd)
	f.DurationVar(&a.client.timeout, "timeout", 30*time.Second, "give up on the mapper after this long (0: never; watch ignores it)")
}

// addOutputFlag adds -o to cmd and its subcommands.
func (a *app) addOutputFlag(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVarP(&a.client.output, "output", "o", string(formatTable), "output format: table or json")
}

// session is what a client command runs with.
type session struct {
	cl  *mapper.Client
	out *output
}

// addTLSFlags adds the flags of a mapper client's certificates.
func (a *app) addTLSFlags(f *pflag.FlagSet) {
	f.StringVar(&a.client.tlsCA, "tls-ca", a.getenv(envTLSCA), "the registry's CA: talk to the mappers over TLS, trusting those it signed ($"+envTLSCA+")")
	f.StringVar(&a.client.tlsCert, "tls-cert", a.getenv(envTLSCert), "this client's certificate, for mappers that require one ($"+envTLSCert+"; daoli ca issue makes it)")
	f.StringVar(&a.client.tlsKey, "tls-key", a.getenv(envTLSKey), "the key of --tls-cert ($"+envTLSKey+")")
}

// mapperClient returns a client of the mappers in --mapper over transport
// (nil: the default one), over TLS with the --tls-* files when any is set.
func (a *app) mapperClient(transport *http.Transport) (*mapper.Client, error) {
	f := a.client
	secure := f.tlsCA != "" || f.tlsCert != "" || f.tlsKey != ""
	if transport == nil {
		transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if secure {
		cfg, err := mapper.ClientTLS(f.tlsCA, f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca, --tls-cert, --tls-key: %w", err)
		}
		transport.TLSClientConfig = cfg
	}
	cl, err := newClient(f.mapper, secure)
	if err != nil {
		return nil, err
	}
	return cl.WithHTTPClient(&http.Client{Transport: transport}), nil
}

// newClient returns a client of the mappers at addrs: "host:port" or an
// http(s) URL, or several of them separated by commas (mappers of one
// registry on etcd; the client moves to the next when one is down). An
// address without a scheme is https with secure, else http.
func newClient(addrs string, secure bool) (*mapper.Client, error) {
	if strings.TrimSpace(addrs) == "" {
		return nil, fmt.Errorf("--mapper: missing; want host:port or a URL such as http://%s", mapper.DefaultAddr)
	}
	var urls []string
	for _, addr := range strings.Split(addrs, ",") {
		addr = strings.TrimSpace(addr)
		if addr == "" {
			return nil, fmt.Errorf("--mapper %q: an empty address between commas", addrs)
		}
		raw := addr
		if !strings.Contains(raw, "://") {
			if secure {
				raw = "https://" + raw
			} else {
				raw = "http://" + raw
			}
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("--mapper %q: %w", addr, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("--mapper %q: scheme %q, want http or https", addr, u.Scheme)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("--mapper %q: no host; want host:port such as %s", addr, mapper.DefaultAddr)
		}
		urls = append(urls, raw)
	}
	return mapper.NewClient(strings.Join(urls, ","), nil), nil
}

// withClient adapts fn to a cobra RunE: it builds the client and the
// output from the flags and bounds the call by --timeout.
func (a *app) withClient(fn func(ctx context.Context, s *session, args []string) error) func(*cobra.Command, []string) error {
	return a.clientRun(false, fn)
}

// streamClient is withClient for commands that run until interrupted:
// --timeout does not apply.
func (a *app) streamClient(fn func(ctx context.Context, s *session, args []string) error) func(*cobra.Command, []string) error {
	return a.clientRun(true, fn)
}

func (a *app) clientRun(stream bool, fn func(ctx context.Context, s *session, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		out, err := newOutput(a.stdout, a.client.output)
		if err != nil {
			return err
		}
		cl, err := a.mapperClient(nil)
		if err != nil {
			return err
		}
		if a.client.timeout < 0 {
			return fmt.Errorf("--timeout %s: want 0 or more", a.client.timeout)
		}
		ctx := cmd.Context()
		if !stream && a.client.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, a.client.timeout)
			defer cancel()
		}
		return fn(ctx, &session{cl: cl, out: out}, args)
	}
}
