package main

import (
	"context"
	"time"

	"github.com/daolinet/daoli/benchmarks/netbench"
)

type netbenchServer struct{ name string }

func (s *netbenchServer) run(ctx context.Context, port int) error {
	srv := &netbench.Server{Name: s.name}
	return srv.ListenAndServe(ctx, port)
}

func rrRun(ctx context.Context, to string, size int, d time.Duration) (any, error) {
	return netbench.RR(ctx, netbench.RRConfig{Addr: to, Size: size, Duration: d})
}

func crrRun(ctx context.Context, to string, size int, d, timeout time.Duration) (any, error) {
	return netbench.CRR(ctx, netbench.CRRConfig{Addr: to, Size: size, Duration: d, Timeout: timeout})
}

func streamRun(ctx context.Context, to string, streams int, d time.Duration, rate float64) (any, error) {
	return netbench.Stream(ctx, netbench.StreamConfig{Addr: to, Streams: streams, Duration: d, Rate: rate})
}

func udpRun(ctx context.Context, to string, size int, d time.Duration, sendOnly bool) (any, error) {
	return netbench.UDP(ctx, netbench.UDPConfig{Addr: to, Size: size, Duration: d, SendOnly: sendOnly})
}
