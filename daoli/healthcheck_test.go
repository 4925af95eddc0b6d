package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestHealthcheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	drain := filepath.Join(t.TempDir(), "drain")
	present := filepath.Join(t.TempDir(), "present")
	if err := os.WriteFile(present, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		tcp   []string
		drain string
		want  string // "" is healthy
	}{
		{"listening", []string{l.Addr().String()}, "", ""},
		{"no drain file", []string{l.Addr().String()}, drain, ""},
		{"drain file", []string{l.Addr().String()}, present, "exists"},
		{"refused", []string{l.Addr().String(), closed.Addr().String()}, "", "connection refused"},
		{"bad address", []string{"8080"}, "", "--tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := healthcheck(context.Background(), tt.tcp, tt.drain, time.Second)
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("healthcheck: %v, want %q", err, tt.want)
			}
		})
	}
}
