package netbench

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// RRConfig configures RR.
type RRConfig struct {
	// Addr is the server, IP:port. Required.
	Addr string
	// Size is the request and response size in bytes. Zero means 1, as
	// netperf's TCP_RR.
	Size int
	// Duration is how long to measure. Zero means one second.
	Duration time.Duration
	// Dial opens the connection. Nil means net.Dialer.
	Dial Dial
}

// RRResult is what RR measured. Latencies are round trips as the client
// sees them, in microseconds.
type RRResult struct {
	Transactions int64   `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	TPS          float64 `json:"tps"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	MeanUs       float64 `json:"mean_us"`
}

// RR sends one request at a time over one TCP connection and waits for
// each response: latency and transactions per second.
func RR(ctx context.Context, cfg RRConfig) (RRResult, error) {
	size := cmp.Or(cfg.Size, 1)
	dur := cmp.Or(cfg.Duration, time.Second)
	c, err := dialer(cfg.Dial)(ctx, "tcp", cfg.Addr)
	if err != nil {
		return RRResult{}, fmt.Errorf("rr: dial %s: %w", cfg.Addr, err)
	}
	defer c.Close()
	hdr := make([]byte, 5)
	hdr[0] = opEcho
	binary.BigEndian.PutUint32(hdr[1:], uint32(size))
	if _, err := c.Write(hdr); err != nil {
		return RRResult{}, fmt.Errorf("rr: %w", err)
	}
	req, resp := make([]byte, size), make([]byte, size)
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(dur)
	c.SetDeadline(end.Add(5 * time.Second))
	for now := start; now.Before(end); {
		if _, err := c.Write(req); err != nil {
			return RRResult{}, fmt.Errorf("rr: send: %w", err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return RRResult{}, fmt.Errorf("rr: receive: %w", err)
		}
		t := time.Now()
		lat = append(lat, t.Sub(now))
		now = t
		if ctx.Err() != nil {
			return RRResult{}, ctx.Err()
		}
	}
	secs := time.Since(start).Seconds()
	r := RRResult{Transactions: int64(len(lat)), Seconds: secs, TPS: float64(len(lat)) / secs}
	r.P50us, r.P99us, r.MeanUs = percentiles(lat)
	return r, nil
}

// percentiles returns p50, p99 and the mean of d in microseconds.
func percentiles(d []time.Duration) (p50, p99, mean float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	slices.Sort(d)
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	us := func(v time.Duration) float64 { return float64(v.Nanoseconds()) / 1e3 }
	return us(d[len(d)/2]), us(d[len(d)*99/100]), us(sum) / float64(len(d))
}

// CRRConfig configures CRR.
type CRRConfig struct {
	// Addr is the server, IP:port. Required.
	Addr string
	// Size is the request and response size. Zero means 1.
	Size int
	// Duration is how long to measure. Zero means one second.
	Duration time.Duration
	// Timeout bounds one connection, from dial to close. Zero means one
	// second: a dropped SYN fails it rather than waiting for the kernel's
	// retransmission.
	Timeout time.Duration
	// Dial opens the connections. Nil means net.Dialer.
	Dial Dial
}

// CRRResult is what CRR measured.
type CRRResult struct {
	Connections int64   `json:"connections"`
	Errors      int64   `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	CPS         float64 `json:"cps"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
}

// CRR opens one connection at a time, sends a request, reads the response
// and the server's close: new connections per second. Failed connections
// are counted, not retried.
func CRR(ctx context.Context, cfg CRRConfig) (CRRResult, error) {
	size := cmp.Or(cfg.Size, 1)
	dur := cmp.Or(cfg.Duration, time.Second)
	timeout := cmp.Or(cfg.Timeout, time.Second)
	dial := dialer(cfg.Dial)
	msg := make([]byte, 5+size)
	msg[0] = opCRR
	binary.BigEndian.PutUint32(msg[1:], uint32(size))
	buf := make([]byte, size+1)
	var r CRRResult
	lat := make([]time.Duration, 0, 1<<14)
	one := func() error {
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		c, err := dial(cctx, "tcp", cfg.Addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(t0.Add(timeout))
		if _, err := c.Write(msg); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf[:size]); err != nil {
			return err
		}
		// Wait for the server's FIN: the connection is over only then.
		if n, err := c.Read(buf); n != 0 || err != io.EOF {
			return fmt.Errorf("want the server's close, got %d bytes, %v", n, err)
		}
		lat = append(lat, time.Since(t0))
		return nil
	}
	start := time.Now()
	for time.Since(start) < dur {
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		if err := one(); err != nil {
			r.Errors++
			if r.FirstError == "" {
				r.FirstError = err.Error()
			}
			continue
		}
		r.Connections++
	}
	r.Seconds = time.Since(start).Seconds()
	r.CPS = float64(r.Connections) / r.Seconds
	r.P50us, r.P99us, _ = percentiles(lat)
	return r, nil
}

// StreamConfig configures Stream.
type StreamConfig struct {
	// Addr is the server, IP:port. Required.
	Addr string
	// Streams is the number of connections. Zero means 1.
	Streams int
	// Duration is how long to send. Zero means one second.
	Duration time.Duration
	// Rate caps the total in bits per second, shared evenly by the
	// streams. Zero means as fast as possible.
	Rate float64
	// Dial opens the connections. Nil means net.Dialer.
	Dial Dial
}

// StreamResult is what Stream measured: bytes the server received, over
// the time from the first write to the last stream's count.
type StreamResult struct {
	Streams int     `json:"streams"`
	Bytes   uint64  `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Gbps    float64 `json:"gbps"`
}

// Stream sends bulk data over Streams TCP connections, like iperf3 -P.
func Stream(ctx context.Context, cfg StreamConfig) (StreamResult, error) {
	n := cmp.Or(cfg.Streams, 1)
	dur := cmp.Or(cfg.Duration, time.Second)
	dial := dialer(cfg.Dial)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := dial(ctx, "tcp", cfg.Addr)
		if err != nil {
			return StreamResult{}, fmt.Errorf("stream: dial %s: %w", cfg.Addr, err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte{opSink}); err != nil {
			return StreamResult{}, fmt.Errorf("stream: %w", err)
		}
	}
	start := time.Now()
	end := start.Add(dur)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total uint64
		errs  []error
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := sink(ctx, c, start, end, cfg.Rate/float64(n))
			mu.Lock()
			total += got
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return StreamResult{}, fmt.Errorf("stream: %w", err)
	}
	return StreamResult{Streams: n, Bytes: total, Seconds: secs, Gbps: float64(total) * 8 / secs / 1e9}, nil
}

// sink writes to c until end, at most rate bits/s (0: unlimited), then
// reads the server's count of what it received.
func sink(ctx context.Context, c net.Conn, start, end time.Time, rate float64) (uint64, error) {
	buf := make([]byte, 128<<10)
	var sent float64
	c.SetDeadline(end.Add(10 * time.Second))
	for now := time.Now(); now.Before(end) && ctx.Err() == nil; now = time.Now() {
		if rate > 0 {
			if due := start.Add(time.Duration(sent * 8 / rate * float64(time.Second))); due.After(now) {
				time.Sleep(min(due.Sub(now), end.Sub(now)))
				continue
			}
		}
		k, err := c.Write(buf)
		sent += float64(k)
		if err != nil {
			return 0, err
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return 0, err
	}
	var got uint64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		return 0, fmt.Errorf("read the server's count: %w", err)
	}
	return got, nil
}

// UDPConfig configures UDP.
type UDPConfig struct {
	// Addr is the server, IP:port; its TCP port of the same number reads
	// the counters. Required.
	Addr string
	// Size is the payload of each datagram. Zero means 18 bytes: a
	// 60-byte Ethernet frame, the smallest there is.
	Size int
	// Duration is how long to send. Zero means one second.
	Duration time.Duration
	// SendOnly leaves the server's counters alone: the caller reads them
	// (UDPCounters), as it must when Addr is a service balanced over
	// several servers.
	SendOnly bool
	// Dial opens the sockets. Nil means net.Dialer.
	Dial Dial
}

// UDPResult is what UDP measured. PPS counts datagrams the server
// received (zero with SendOnly); SentPPS those the client sent.
type UDPResult struct {
	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	Seconds  float64 `json:"seconds"`
	PPS      float64 `json:"pps"`
	SentPPS  float64 `json:"sent_pps"`
}

// UDPCounters reads the datagrams and bytes the server at addr received
// since its counters were last reset, and resets them when reset is set.
func UDPCounters(ctx context.Context, dial Dial, addr string, reset bool) (packets, bytes uint64, err error) {
	c, err := dialer(dial)(ctx, "tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cmd := byte(1)
	if reset {
		cmd = 0
	}
	if _, err := c.Write([]byte{opUDP, cmd}); err != nil {
		return 0, 0, err
	}
	var v [2]uint64
	if err := binary.Read(c, binary.BigEndian, &v); err != nil {
		return 0, 0, err
	}
	return v[0], v[1], nil
}

// UDP sends small datagrams from one socket, in batches (sendmmsg), as
// fast as the path takes them, and reads how many the server counted.
func UDP(ctx context.Context, cfg UDPConfig) (UDPResult, error) {
	size := cmp.Or(cfg.Size, 18)
	dur := cmp.Or(cfg.Duration, time.Second)
	dial := dialer(cfg.Dial)
	if !cfg.SendOnly {
		if _, _, err := UDPCounters(ctx, dial, cfg.Addr, true); err != nil {
			return UDPResult{}, fmt.Errorf("udp: reset the server's counters: %w", err)
		}
	}
	c, err := dial(ctx, "udp", cfg.Addr)
	if err != nil {
		return UDPResult{}, fmt.Errorf("udp: dial %s: %w", cfg.Addr, err)
	}
	defer c.Close()
	start := time.Now()
	sent, err := sendFor(ctx, c.(*net.UDPConn), size, start.Add(dur))
	secs := time.Since(start).Seconds()
	if err != nil {
		return UDPResult{}, fmt.Errorf("udp: send: %w", err)
	}
	r := UDPResult{Sent: sent, Seconds: secs, SentPPS: float64(sent) / secs}
	if cfg.SendOnly {
		return r, nil
	}
	time.Sleep(100 * time.Millisecond) // what is queued still arrives
	if r.Received, _, err = UDPCounters(ctx, dial, cfg.Addr, false); err != nil {
		return UDPResult{}, fmt.Errorf("udp: read the server's counters: %w", err)
	}
	r.PPS = float64(r.Received) / secs
	return r, nil
}

// Name asks the server at addr for its name.
func Name(ctx context.Context, dial Dial, addr string) (string, error) {
	c, err := dialer(dial)(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := c.Write([]byte{opName}); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// Pinger keeps one TCP connection and measures each round trip on it: the
// probe of a live migration, where the connection must survive.
type Pinger struct {
	c   net.Conn
	buf [1]byte
}

// NewPinger connects to the server at addr.
func NewPinger(ctx context.Context, dial Dial, addr string) (*Pinger, error) {
	c, err := dialer(dial)(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{opEcho, 0, 0, 0, 1}); err != nil {
		c.Close()
		return nil, err
	}
	return &Pinger{c: c}, nil
}

// Ping makes one round trip, waiting at most timeout.
func (p *Pinger) Ping(timeout time.Duration) error {
	p.c.SetDeadline(time.Now().Add(timeout))
	if _, err := p.c.Write(p.buf[:]); err != nil {
		return err
	}
	_, err := io.ReadFull(p.c, p.buf[:])
	return err
}

// Close closes the connection.
func (p *Pinger) Close() error { return p.c.Close() }
