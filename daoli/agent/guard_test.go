package agent

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/daolinet/daoli/internal/testbed"
	"github.com/daolinet/daoli/mapper"
)

// TestGuardWireRange runs the guard in a server namespace of its own: a
// listener inside the wire range, IPv4 or dual-stack, stops the agent; a
// free range is reserved, keeping what was reserved before.
func TestGuardWireRange(t *testing.T) {
	w := testbed.New(t, 1)
	s := w.Servers[0]
	wire := mapper.PortRange{First: 20000, Last: 20255}
	for _, addr := range []string{"0.0.0.0:20001", "[::]:20002"} {
		err := s.Do(func() error {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			defer ln.Close()
			return guardWireRange(wire)
		})
		if err == nil || !strings.Contains(err.Error(), "inside the wire range") {
			t.Errorf("a listener on %s: guard said %v, want a refusal", addr, err)
		}
	}
	var reserved []byte
	err := s.Do(func() error {
		if err := os.WriteFile(reservedPortsPath, []byte("8080"), 0o644); err != nil {
			return err
		}
		if err := guardWireRange(wire); err != nil {
			return err
		}
		if err := guardWireRange(wire); err != nil { // twice: no duplicate entry
			return err
		}
		var err error
		reserved, err = os.ReadFile(reservedPortsPath)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(reserved)); got != "8080,20000-20255" {
		t.Errorf("reserved ports %q, want the old entry and the wire range once", got)
	}
}
