package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/daolinet/daoli/mapper"
)

// flagError says which flag had a bad value, and why.
type flagError struct {
	Flag  string // without dashes
	Value string
	Err   error
}

func (e *flagError) Error() string {
	return fmt.Sprintf("--%s %q: %s", e.Flag, e.Value, trimValue(e.Err.Error(), e.Value))
}

func (e *flagError) Unwrap() error { return e.Err }

// trimValue drops the prefix that parsers put before their reason, such
// as `port "80/sctp": ` or `ParseAddr("x"): `, since flagError already
// shows the value.
func trimValue(msg, value string) string {
	q := strconv.Quote(value)
	i := strings.Index(msg, q)
	if i < 0 || i > 20 {
		return msg
	}
	rest := strings.TrimPrefix(msg[i+len(q):], ")")
	if r, ok := strings.CutPrefix(rest, ": "); ok && r != "" {
		return r
	}
	return msg
}

func badFlag(flag, value string, err error) error {
	return &flagError{Flag: flag, Value: value, Err: err}
}

func badFlagf(flag, value, format string, args ...any) error {
	return &flagError{Flag: flag, Value: value, Err: fmt.Errorf(format, args...)}
}

func parseAddrFlag(flag, s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, badFlag(flag, s, fmt.Errorf("%w; want an IPv4 address such as 10.1.0.5", err))
	}
	return ip, nil
}

func parseAddrsFlag(flag string, ss []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		ip, err := parseAddrFlag(flag, s)
		if err != nil {
			return nil, err
		}
		out = append(out, ip)
	}
	return out, nil
}

func parsePrefixFlag(flag, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, badFlag(flag, s, fmt.Errorf("%w; want a CIDR such as 10.1.0.0/24", err))
	}
	return p, nil
}

func parseMACFlag(flag, s string) (mapper.MAC, error) {
	m, err := mapper.ParseMAC(s)
	if err != nil {
		return mapper.MAC{}, badFlag(flag, s, err)
	}
	return m, nil
}

func parsePortsFlag(flag string, ss []string) ([]mapper.PortSpec, error) {
	out := make([]mapper.PortSpec, 0, len(ss))
	for _, s := range ss {
		p, err := mapper.ParsePortSpec(s)
		if err != nil {
			return nil, badFlag(flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePublishedFlag(flag string, ss []string) ([]mapper.PublishedPort, error) {
	var out []mapper.PublishedPort
	for _, s := range ss {
		p, err := mapper.ParsePublishedPort(s)
		if err != nil {
			return nil, badFlag(flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parseModeFlag(flag, s string) (mapper.Mode, error) {
	switch m := mapper.Mode(strings.ToLower(s)); m {
	case mapper.Balance, mapper.Failover:
		return m, nil
	}
	return "", badFlagf(flag, s, "unknown mode, want %s or %s", mapper.Balance, mapper.Failover)
}

// parsePortRangeFlag parses "FIRST-LAST".
func parsePortRangeFlag(flag, s string) (mapper.PortRange, error) {
	first, last, ok := strings.Cut(s, "-")
	a, errA := strconv.ParseUint(first, 10, 16)
	b, errB := strconv.ParseUint(last, 10, 16)
	if !ok || errA != nil || errB != nil || a == 0 || a > b {
		return mapper.PortRange{}, badFlagf(flag, s, "want FIRST-LAST with 1 <= FIRST <= LAST <= 65535, such as 16384-32767")
	}
	return mapper.PortRange{First: uint16(a), Last: uint16(b)}, nil
}
