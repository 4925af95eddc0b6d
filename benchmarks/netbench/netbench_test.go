package netbench_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/daolinet/daoli/benchmarks/netbench"
)

// serve starts a Server on a free loopback port, TCP and UDP.
func serve(t *testing.T, name string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		l.Close()
		t.Skipf("udp port %d is taken: %v", port, err)
	}
	s := &netbench.Server{Name: name}
	go s.ServeTCP(l)
	go s.ServeUDP(pc.(*net.UDPConn))
	t.Cleanup(func() {
		l.Close()
		pc.Close()
	})
	return l.Addr().String()
}

func TestClients(t *testing.T) {
	addr := serve(t, "web-1")
	ctx := context.Background()
	const d = 200 * time.Millisecond

	tests := []struct {
		name string
		run  func() (float64, error)
	}{
		{"rr", func() (float64, error) {
			r, err := netbench.RR(ctx, netbench.RRConfig{Addr: addr, Duration: d, Size: 64})
			if err == nil && (r.P50us <= 0 || r.P99us < r.P50us) {
				t.Errorf("rr percentiles p50 %v p99 %v", r.P50us, r.P99us)
			}
			return r.TPS, err
		}},
		{"crr", func() (float64, error) {
			r, err := netbench.CRR(ctx, netbench.CRRConfig{Addr: addr, Duration: d})
			if err == nil && r.Errors != 0 {
				t.Errorf("crr: %d errors, first %s", r.Errors, r.FirstError)
			}
			return r.CPS, err
		}},
		{"stream", func() (float64, error) {
			r, err := netbench.Stream(ctx, netbench.StreamConfig{Addr: addr, Duration: d, Streams: 3})
			return r.Gbps, err
		}},
		{"stream at a fixed rate", func() (float64, error) {
			r, err := netbench.Stream(ctx, netbench.StreamConfig{Addr: addr, Duration: 500 * time.Millisecond, Rate: 100e6})
			// Paced at 100 Mbit/s: far below what loopback carries.
			if err == nil && (r.Gbps > 0.15 || r.Gbps < 0.05) {
				t.Errorf("stream at 100 Mbit/s ran at %.3f Gbit/s", r.Gbps)
			}
			return r.Gbps, err
		}},
		{"udp", func() (float64, error) {
			r, err := netbench.UDP(ctx, netbench.UDPConfig{Addr: addr, Duration: d})
			if err == nil && r.Received > r.Sent {
				t.Errorf("udp: received %d of %d sent", r.Received, r.Sent)
			}
			return r.PPS, err
		}},
		{"udp send only, counters read apart", func() (float64, error) {
			if _, _, err := netbench.UDPCounters(ctx, nil, addr, true); err != nil {
				return 0, err
			}
			r, err := netbench.UDP(ctx, netbench.UDPConfig{Addr: addr, Duration: d, SendOnly: true})
			if err != nil {
				return 0, err
			}
			if r.Received != 0 || r.PPS != 0 {
				t.Errorf("send only read the counters: %+v", r)
			}
			time.Sleep(50 * time.Millisecond)
			n, bytes, err := netbench.UDPCounters(ctx, nil, addr, false)
			if err == nil && bytes != 18*n {
				t.Errorf("udp: %d bytes in %d datagrams, want 18 each", bytes, n)
			}
			return float64(n), err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.run()
			if err != nil {
				t.Fatal(err)
			}
			if !(v > 0) {
				t.Errorf("figure %v, want > 0", v)
			}
		})
	}
}

func TestNameAndPinger(t *testing.T) {
	addr := serve(t, "backup")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	name, err := netbench.Name(ctx, nil, addr)
	if err != nil || name != "backup" {
		t.Fatalf("Name = %q, %v; want backup", name, err)
	}
	p, err := netbench.NewPinger(ctx, nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 10 {
		if err := p.Ping(time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCRRCountsFailures(t *testing.T) {
	// A port nobody listens on: every connection fails, and CRR says so
	// instead of failing.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r, err := netbench.CRR(context.Background(), netbench.CRRConfig{Addr: addr, Duration: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Connections != 0 || r.Errors == 0 || r.FirstError == "" {
		t.Errorf("CRR to a closed port: %+v, want only errors", r)
	}
}
