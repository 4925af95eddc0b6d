package mapper_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

// benchWorld is a registry on a real file (every acknowledged write is
// fsynced) with a /8 network and enough servers for n endpoints.
func benchWorld(b *testing.B, n int) *mapper.Registry {
	b.Helper()
	st, err := store.OpenBolt(store.BoltConfig{Path: filepath.Join(b.TempDir(), "bench.db")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	// 16-port blocks: 1024 endpoints per server address.
	reg, err := mapper.New(mapper.Config{Store: st, BlockSize: 16,
		WirePorts: mapper.PortRange{First: 16384, Last: 32767}, IdentityPorts: mapper.PortRange{First: 32768, Last: 65535}})
	if err != nil {
		b.Fatal(err)
	}
	must[mapper.Network](b)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.0.0.0/8")}))
	for i := 0; i <= n/1000; i++ {
		must[mapper.Server](b)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: fmt.Sprintf("s%d", i),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)})}, MAC: mac("52:54:00:00:00:01")}))
	}
	return reg
}

// benchSpec is the i-th endpoint: its own IP, two served ports.
func benchSpec(i int) mapper.EndpointSpec {
	v := i + 2 // past the network address and the gateway
	return mapper.EndpointSpec{
		Network: "net1",
		IP:      netip.AddrFrom4([4]byte{10, byte(v >> 16), byte(v >> 8), byte(v)}),
		Server:  fmt.Sprintf("s%d", i/1000),
		Ports:   []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}, {Port: 53, Protocol: mapper.UDP}},
	}
}

func report(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "endpoints/s")
}

// BenchmarkRegisterEndpoint is one writer: each registration waits for its
// own fsync.
func BenchmarkRegisterEndpoint(b *testing.B) {
	reg := benchWorld(b, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := reg.CreateEndpoint(ctx, benchSpec(i)); err != nil {
			b.Fatal(err)
		}
	}
	report(b)
}

// BenchmarkRegisterEndpointParallel has 64 concurrent writers, as many
// agents and hooks registering at once: group commit shares each fsync.
func BenchmarkRegisterEndpointParallel(b *testing.B) {
	reg := benchWorld(b, b.N)
	var next atomic.Int64
	b.SetParallelism(32) // 32 × GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := reg.CreateEndpoint(ctx, benchSpec(int(next.Add(1)-1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	report(b)
}

// BenchmarkRegisterEndpointHTTP is the parallel case through the HTTP API.
func BenchmarkRegisterEndpointHTTP(b *testing.B) {
	reg := benchWorld(b, b.N)
	srv := httptest.NewServer(mapper.NewAPI(reg, nil))
	defer srv.Close()
	c := mapper.NewClient(srv.URL, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}})
	var next atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.CreateEndpoint(ctx, benchSpec(int(next.Add(1)-1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	report(b)
}

// BenchmarkRegisterEndpointBatchHTTP registers 100 endpoints per request,
// as an orchestrator placing a service does.
func BenchmarkRegisterEndpointBatchHTTP(b *testing.B) {
	const batch = 100
	reg := benchWorld(b, b.N+batch)
	srv := httptest.NewServer(mapper.NewAPI(reg, nil))
	defer srv.Close()
	c := mapper.NewClient(srv.URL, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		specs := make([]mapper.EndpointSpec, 0, batch)
		for j := i; j < i+batch && j < b.N; j++ {
			specs = append(specs, benchSpec(j))
		}
		if _, err := c.CreateEndpoints(ctx, specs); err != nil {
			b.Fatal(err)
		}
	}
	report(b)
}
