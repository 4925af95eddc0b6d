package demo

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"github.com/daolinet/daoli/internal/testbed"
	"golang.org/x/sys/unix"
)

// capture records what crosses one interface of the fabric: the
// addresses on the wire, the largest frame, and anything encapsulated.
type capture struct {
	mu        sync.Mutex
	frames    int
	pairs     map[[2]netip.Addr]int
	inner     map[netip.Addr]bool // addresses inside the containers' subnet
	encap     int
	maxFrame  int
	stop      chan struct{}
	once      sync.Once
	done      chan struct{}
	container netip.Prefix
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startCapture listens on ifname in ns with an AF_PACKET socket.
func startCapture(ns *testbed.Namespace, ifname string, containers netip.Prefix) (*capture, error) {
	l, err := ns.Link(ifname)
	if err != nil {
		return nil, err
	}
	var fd int
	err = ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		tv := unix.Timeval{Usec: 100000}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index})
	})
	if err != nil {
		return nil, err
	}
	c := &capture{pairs: map[[2]netip.Addr]int{}, inner: map[netip.Addr]bool{}, stop: make(chan struct{}), done: make(chan struct{}), container: containers}
	go c.read(fd)
	return c, nil
}

func (c *capture) read(fd int) {
	defer close(c.done)
	defer unix.Close(fd)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue // the receive timeout: look at stop again
			}
			return
		}
		if n < 34 || binary.BigEndian.Uint16(buf[12:]) != 0x0800 {
			continue
		}
		ip := buf[14:n]
		src, _ := netip.AddrFromSlice(ip[12:16])
		dst, _ := netip.AddrFromSlice(ip[16:20])
		if dst.IsMulticast() {
			continue // the servers' own IGMP reports
		}
		c.mu.Lock()
		c.frames++
		c.maxFrame = max(c.maxFrame, n)
		if src.Compare(dst) > 0 {
			src, dst = dst, src
		}
		c.pairs[[2]netip.Addr{src, dst}]++
		for _, a := range []netip.Addr{src, dst} {
			if c.container.Contains(a) {
				c.inner[a] = true
			}
		}
		ihl := int(ip[0]&0xf) * 4
		switch proto := ip[9]; {
		case proto == 4 || proto == 41 || proto == 47 || proto == 50: // IPIP, 6in4, GRE, ESP
			c.encap++
		case proto == 17 && len(ip) >= ihl+4:
			if port := binary.BigEndian.Uint16(ip[ihl+2:]); port == 4789 || port == 8472 || port == 6081 { // VXLAN, flannel, Geneve
				c.encap++
			}
		}
		c.mu.Unlock()
	}
}

// finish stops the capture and returns what it saw. It may be called
// more than once.
func (c *capture) finish() captureResult {
	c.once.Do(func() { close(c.stop) })
	select {
	case <-c.done:
	case <-time.After(time.Second):
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := captureResult{Frames: c.frames, Encapsulated: c.encap, MaxFrame: c.maxFrame}
	for p := range c.pairs {
		r.Pairs = append(r.Pairs, p)
	}
	for a := range c.inner {
		r.ContainerAddrs = append(r.ContainerAddrs, a)
	}
	return r
}

type captureResult struct {
	Frames, Encapsulated, MaxFrame int
	Pairs                          [][2]netip.Addr
	ContainerAddrs                 []netip.Addr
}
