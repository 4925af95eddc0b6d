package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strconv"
	"testing"

	"github.com/daolinet/daoli/benchmarks/netbench"
)

func TestNetbenchCmd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Skipf("udp port taken: %v", err)
	}
	defer pc.Close()
	s := &netbench.Server{Name: "x"}
	go s.ServeTCP(l)
	go s.ServeUDP(pc.(*net.UDPConn))
	addr := l.Addr().String()

	tests := []struct {
		args []string
		key  string // a figure that must be positive
	}{
		{[]string{"rr", "--to", addr, "--duration", "100ms"}, "tps"},
		{[]string{"crr", "--to", addr, "--duration", "100ms"}, "cps"},
		{[]string{"stream", "--to", addr, "--duration", "100ms", "--streams", "2"}, "gbps"},
		{[]string{"udp", "--to", addr, "--duration", "100ms"}, "pps"},
		{[]string{"udp", "--to", addr, "--duration", "100ms", "--send-only"}, "sent_pps"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if err := netbenchCmd(context.Background(), &out, tt.args); err != nil {
			t.Errorf("netbench %v: %v", tt.args, err)
			continue
		}
		var res map[string]any
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Errorf("netbench %v printed %q: %v", tt.args, out.String(), err)
			continue
		}
		if v, _ := res[tt.key].(float64); !(v > 0) {
			t.Errorf("netbench %v: %s = %v, want > 0", tt.args, tt.key, res[tt.key])
		}
	}
}

func TestBadArguments(t *testing.T) {
	tests := [][]string{
		{"--only", "routes,bogus"},
		{"--skip", "datapath"},
		{"--memory", "10k"},
		{"extra"},
		{"netbench"},
		{"netbench", "ping"},
	}
	for _, args := range tests {
		if err := run(context.Background(), args); err == nil {
			t.Errorf("bench %v succeeded", args)
		}
	}
}
