package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/daolinet/daoli/mapper"
)

// Both files are per network namespace: the agent reads and writes its
// server's.
const (
	reservedPortsPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"
	tcpTablePath      = "/proc/thread-self/net/tcp"
	udpTablePath      = "/proc/thread-self/net/udp"
	tcp6TablePath     = "/proc/thread-self/net/tcp6" // dual-stack listeners ([::]) show only here
	udp6TablePath     = "/proc/thread-self/net/udp6"
)

// guardWireRange keeps the server's own sockets out of the wire range,
// where from_network owns every packet: it adds the range to
// ip_local_reserved_ports, so the kernel never picks such a port for an
// outgoing connection, and refuses to start while a local socket is bound
// inside it, since that socket would never see a packet.
func guardWireRange(r mapper.PortRange) error {
	for _, table := range []string{tcpTablePath, udpTablePath, tcp6TablePath, udp6TablePath} {
		ports, err := boundPorts(table)
		if err != nil {
			return err
		}
		for _, p := range ports {
			if p >= r.First && p <= r.Last {
				return fmt.Errorf("a local socket is bound to port %d (%s), inside the wire range %s that the dataplane owns: move it, or start the mapper with another --wire-ports", p, table, r)
			}
		}
	}
	cur, err := os.ReadFile(reservedPortsPath)
	if err != nil {
		return fmt.Errorf("read reserved ports: %w", err)
	}
	want := fmt.Sprintf("%d-%d", r.First, r.Last)
	have := strings.TrimSpace(string(cur))
	if reserved(have, r) {
		return nil
	}
	if have != "" {
		want = have + "," + want
	}
	if err := os.WriteFile(reservedPortsPath, []byte(want), 0o644); err != nil {
		return fmt.Errorf("reserve the wire range %s in %s: %w", r, reservedPortsPath, err)
	}
	return nil
}

// reserved reports whether the ip_local_reserved_ports value list covers r.
func reserved(list string, r mapper.PortRange) bool {
	for item := range strings.SplitSeq(list, ",") {
		lo, hi, found := strings.Cut(item, "-")
		if !found {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && a <= int(r.First) && b >= int(r.Last) {
			return true
		}
	}
	return false
}

// boundPorts returns the local ports of the sockets in a /proc/net/{tcp,udp}
// table that accept traffic: TCP listeners, and every bound UDP socket.
func boundPorts(path string) ([]uint16, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && (path == tcp6TablePath || path == udp6TablePath) {
		return nil, nil // a kernel without IPv6
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	var out []uint16
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		const tcpListen = "0A"
		if (path == tcpTablePath || path == tcp6TablePath) && fields[3] != tcpListen {
			continue
		}
		_, port, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err == nil {
			out = append(out, uint16(p))
		}
	}
	return out, sc.Err()
}
