package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// newAppCmd is a small workload for demos, examples and tests, run inside
// container namespaces: a server that answers with its name and what it
// saw of the client, and a client that keeps asking and reports gaps.
func newAppCmd(a *app) *cobra.Command {
	cmd := groupCmd("app", "A tiny TCP/UDP/HTTP server and client to run inside containers")
	cmd.Long = `A tiny workload for trying daoli out, run inside container namespaces:
"app serve" answers every request with its name and the client's address
as it saw it; "app ask" keeps asking and prints one timestamped line per
request, so gaps and failures show.`
	cmd.Example = `  ip netns exec web daoli app serve --port 8080 --name web-1
  ip netns exec client daoli app ask --to 10.1.0.5:8080 --count 0 --interval 10ms --keep`
	cmd.AddCommand(newAppServeCmd(a), newAppAskCmd(a), newAppPauseCmd())
	return cmd
}

func newAppServeCmd(a *app) *cobra.Command {
	var port int
	var name string
	cmd := &cobra.Command{
		Use:   "serve --port N --name NAME",
		Short: "Answer on TCP (line or HTTP) and UDP port N with 'NAME saw CLIENT-IP:PORT'",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serveApp(cmd.Context(), port, name)
		},
	}
	cmd.Flags().IntVar(&port, "port", 8080, "port to serve on, TCP and UDP")
	cmd.Flags().StringVar(&name, "name", "", "name to answer with (default: hostname)")
	return cmd
}

func serveApp(ctx context.Context, port int, name string) error {
	if name == "" {
		name, _ = os.Hostname()
	}
	addr := fmt.Sprintf(":%d", port)
	tl, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ul, err := net.ListenPacket("udp", addr)
	if err != nil {
		tl.Close()
		return err
	}
	go func() { <-ctx.Done(); tl.Close(); ul.Close() }()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			ul.WriteTo(fmt.Appendf(nil, "%s saw %s: %s", name, from, buf[:n]), from)
		}
	}()
	for {
		c, err := tl.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go serveConn(c, name)
	}
}

// serveConn answers every line with one line; a connection that starts
// with an HTTP request gets one HTTP response.
func serveConn(c net.Conn, name string) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(line, "GET ") {
			for l := line; err == nil && strings.TrimSpace(l) != ""; l, err = r.ReadString('\n') {
			}
			body := fmt.Sprintf("%s saw %s\n", name, c.RemoteAddr())
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			return
		}
		fmt.Fprintf(c, "%s saw %s: %s", name, c.RemoteAddr(), line)
	}
}

func newAppAskCmd(a *app) *cobra.Command {
	var (
		to, proto string
		count     int
		interval  time.Duration
		timeout   time.Duration
		keep      bool
	)
	cmd := &cobra.Command{
		Use:   "ask --to IP:PORT [--proto tcp|udp|http] [--count N] [--interval D] [--timeout D] [--keep]",
		Short: "Ask a server N times, printing each answer (or error) with a timestamp",
		Long: `Ask a server --count times (0: until interrupted), one line per attempt:
"<unix-ms> ok <answer>" or "<unix-ms> err <error>". Without --keep every
request is a new connection (tcp) or a new socket (udp), so a new flow
with a new client port. With --keep one socket carries every request,
which shows whether a flow survives: tcp opens a new connection only
after the old one failed, udp keeps its socket (and client port) even
through timeouts. --proto http makes one HTTP GET per request.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return askApp(cmd.Context(), a.stdout, to, proto, count, interval, timeout, keep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "server address IP:PORT")
	f.StringVar(&proto, "proto", "tcp", "tcp, udp or http")
	f.IntVar(&count, "count", 1, "requests to make; 0 means until interrupted")
	f.DurationVar(&interval, "interval", 100*time.Millisecond, "time between requests")
	f.DurationVar(&timeout, "timeout", time.Second, "time to wait for each answer")
	f.BoolVar(&keep, "keep", false, "send every request on one socket: tcp reconnects only after an error, udp keeps its client port")
	return cmd
}

func askApp(ctx context.Context, w io.Writer, to, proto string, count int, interval, timeout time.Duration, keep bool) error {
	if _, _, err := net.SplitHostPort(to); err != nil {
		return badFlag("to", to, err)
	}
	var conn net.Conn
	var reader *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	hc := &http.Client{Timeout: timeout}
	once := func(i int) (string, error) {
		switch proto {
		case "http":
			resp, err := hc.Get("http://" + to + "/")
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return strings.TrimSpace(string(b)), err
		case "udp":
			if conn == nil {
				c, err := net.DialTimeout("udp", to, timeout)
				if err != nil {
					return "", err
				}
				conn = c
			}
			if !keep {
				defer func() { conn.Close(); conn = nil }()
			}
			conn.SetDeadline(time.Now().Add(timeout))
			if _, err := fmt.Fprintf(conn, "request %d", i); err != nil {
				return "", err
			}
			// A late answer to an earlier request may still arrive on a
			// kept socket: read until the answer to this one.
			want := fmt.Sprintf(": request %d", i)
			buf := make([]byte, 2048)
			for {
				n, err := conn.Read(buf)
				if err != nil || !keep || strings.HasSuffix(string(buf[:n]), want) {
					return string(buf[:n]), err
				}
			}
		case "tcp":
			if conn == nil {
				c, err := net.DialTimeout("tcp", to, timeout)
				if err != nil {
					return "", err
				}
				conn, reader = c, bufio.NewReader(c)
			}
			conn.SetDeadline(time.Now().Add(timeout))
			_, err := fmt.Fprintf(conn, "request %d\n", i)
			var line string
			if err == nil {
				line, err = reader.ReadString('\n')
			}
			if err != nil || !keep {
				conn.Close()
				conn = nil
			}
			return strings.TrimSpace(line), err
		}
		return "", fmt.Errorf("--proto %q: want tcp, udp or http", proto)
	}
	for i := 1; count == 0 || i <= count; i++ {
		answer, err := once(i)
		now := time.Now().UnixMilli()
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			fmt.Fprintf(w, "%d err %v\n", now, err)
		} else {
			fmt.Fprintf(w, "%d ok %s\n", now, answer)
		}
		if count != 0 && i == count {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
	return nil
}

// newAppPauseCmd is a pod sandbox's process, like Kubernetes' pause image:
// it holds the pod's namespaces, reaps the orphans it inherits as the
// first process of a PID namespace, and exits on SIGTERM or SIGINT.
func newAppPauseCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pause",
		Short: "Hold a pod sandbox's namespaces until told to stop",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reap := make(chan os.Signal, 1)
			signal.Notify(reap, syscall.SIGCHLD)
			for {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-reap:
					for {
						var ws syscall.WaitStatus
						if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
							break
						}
					}
				}
			}
		},
	}
}
