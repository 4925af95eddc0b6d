// Package netbench is the load generator of daoli's benchmarks: one
// server, and the clients that measure what iperf3 does not.
//
//	RR      request/response over one TCP connection: latency p50/p99, transactions/s
//	CRR     connect, request, response, close: new connections/s
//	Stream  bulk TCP over N connections, optionally at a fixed rate: Gbit/s
//	UDP     small datagrams as fast as one socket sends them: packets/s received
//	Name    who answers: the server's name (failover probes)
//
// A Server serves all of them on one port number, TCP and UDP. Every TCP
// connection starts with one opcode byte that says what the client wants;
// the protocol is private to this package and both ends are built from
// the same source.
//
// The clients take a Dial function so a caller can open their sockets
// inside another network namespace; nil means net.Dialer. They measure
// for a fixed duration and return plain numbers (JSON-tagged), never
// judging them: thresholds belong to the reader of the results.
//
// Nothing here needs root; the harness runs servers and clients inside
// network namespaces, pinned to CPUs, as separate processes (the netbench
// subcommands of benchmarks/cmd/bench).
package netbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
)

// Opcodes: the first byte of every TCP connection.
const (
	opEcho = 'E' // uint32 size; then echo size-byte messages until EOF
	opCRR  = 'C' // uint32 size and size bytes; answered with size bytes, then closed
	opSink = 'S' // bytes until EOF; answered with their count (uint64)
	opName = 'N' // answered with the server's name and a newline, then closed
	opUDP  = 'U' // one byte: 0 resets the UDP counters, 1 reads them (2 × uint64)
)

// maxSize bounds a request size a server accepts.
const maxSize = 1 << 20

// Dial opens a connection; see net.Dialer.DialContext.
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

func dialer(d Dial) Dial {
	if d != nil {
		return d
	}
	var nd net.Dialer
	return nd.DialContext
}

// Server answers every client of this package. Its zero value is usable
// (with an empty name); it is safe for concurrent use.
type Server struct {
	// Name is what Name answers.
	Name string

	udpPackets, udpBytes atomic.Uint64
}

// ListenAndServe serves TCP and UDP on port of every address until ctx
// ends.
func (s *Server) ListenAndServe(ctx context.Context, port int) error {
	addr := fmt.Sprintf(":%d", port)
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen tcp %s: %w", addr, err)
	}
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		l.Close()
		return fmt.Errorf("listen udp %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		l.Close()
		pc.Close()
	}()
	errs := make(chan error, 2)
	go func() { errs <- s.ServeTCP(l) }()
	go func() { errs <- s.ServeUDP(pc.(*net.UDPConn)) }()
	err = <-errs
	l.Close()
	pc.Close()
	<-errs
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ServeTCP accepts connections on l until it is closed.
func (s *Server) ServeTCP(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		go s.handle(c)
	}
}

// ServeUDP counts the datagrams arriving on c until it is closed.
func (s *Server) ServeUDP(c *net.UDPConn) error {
	err := recvCount(c, func(packets, bytes uint64) {
		s.udpPackets.Add(packets)
		s.udpBytes.Add(bytes)
	})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func readSize(r io.Reader) (int, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(b[:])
	if n == 0 || n > maxSize {
		return 0, fmt.Errorf("size %d: want 1 to %d", n, maxSize)
	}
	return int(n), nil
}

func (s *Server) handle(c net.Conn) {
	defer c.Close()
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case opEcho:
		size, err := readSize(c)
		if err != nil {
			return
		}
		buf := make([]byte, size)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case opCRR:
		size, err := readSize(c)
		if err != nil {
			return
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(buf)
		// The server closes first, so TIME_WAIT stays here and the
		// client's port space never runs out during a long run.
	case opSink:
		buf := make([]byte, 256<<10)
		var n uint64
		for {
			k, err := c.Read(buf)
			n += uint64(k)
			if err != nil {
				break
			}
		}
		binary.Write(c, binary.BigEndian, n)
	case opName:
		fmt.Fprintf(c, "%s\n", s.Name)
	case opUDP:
		var cmd [1]byte
		if _, err := io.ReadFull(c, cmd[:]); err != nil {
			return
		}
		if cmd[0] == 0 {
			s.udpPackets.Store(0)
			s.udpBytes.Store(0)
		}
		binary.Write(c, binary.BigEndian, [2]uint64{s.udpPackets.Load(), s.udpBytes.Load()})
	}
}
