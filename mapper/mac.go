package mapper

import (
	"crypto/rand"
	"fmt"
	"net"
)

// MAC is an Ethernet address. Unlike net.HardwareAddr it has a fixed size,
// so it is comparable and usable as a map key, and its JSON form is the
// usual "02:42:0a:01:00:05" rather than base64. The zero value means
// "none".
type MAC [6]byte

// ParseMAC parses a 48-bit MAC in any form net.ParseMAC accepts.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, fmt.Errorf("mac %q: want six hex bytes such as 02:42:0a:01:00:05", s)
	}
	if len(hw) != 6 {
		return MAC{}, fmt.Errorf("mac %q: want a 48-bit address, got %d bits", s, 8*len(hw))
	}
	return MAC(hw), nil
}

// IsZero reports whether m is unset.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsUnicast reports whether m may be a station's address: not group and
// not zero.
func (m MAC) IsUnicast() bool { return m[0]&1 == 0 && !m.IsZero() }

// HardwareAddr returns m as a net.HardwareAddr.
func (m MAC) HardwareAddr() net.HardwareAddr { return net.HardwareAddr(m[:]) }

func (m MAC) String() string {
	if m.IsZero() {
		return ""
	}
	return m.HardwareAddr().String()
}

// MarshalText implements encoding.TextMarshaler.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; "" is the zero MAC.
func (m *MAC) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*m = MAC{}
		return nil
	}
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// randomMAC returns a locally administered unicast MAC.
func randomMAC() MAC {
	var m MAC
	rand.Read(m[:])
	m[0] = m[0]&^1 | 2
	return m
}
