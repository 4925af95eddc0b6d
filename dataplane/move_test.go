package dataplane

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/daolinet/daoli/internal/testbed"
)

// TestLiveMove moves a backend to another server under an open TCP
// connection from a client on a third server: the container keeps its
// namespace (and socket), gets a new veth on the new server, and one Apply
// re-points the flow, since conntrack holds endpoint ids, not locations.
func TestLiveMove(t *testing.T) {
	tw := buildWorld(t, testbed.New(t, 3), Config{}, []placed{
		{Endpoint{ID: 1, Network: 7, IP: netip.MustParseAddr("10.1.0.2"), WireBase: 32768, IdentityBase: 1024}, 0},
		{Endpoint{ID: 2, Network: 7, IP: trafficS, WireBase: 32768, IdentityBase: 1024, Ports: []Port{{8080, TCP}}}, 1},
	})
	client, m := tw.containers[1], tw.containers[2]
	accepted := serveEcho(t, m, 8080)
	conn := dialEcho(t, client, netip.AddrPortFrom(trafficS, 8080))
	defer conn.Close()
	for i := range 3 {
		echo(t, conn, fmt.Sprintf("before the move %d", i))
	}

	tw.move(t, 2, 2, 33024) // a new wire block on the new server

	for i := range 3 {
		echo(t, conn, fmt.Sprintf("after the move %d", i))
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("the backend accepted %d connections, want 1: the connection must survive the move", n)
	}
	for i, want := range []bool{false, false, true} {
		c, err := tw.dps[i].EndpointCounters()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c[2]; ok != want {
			t.Errorf("server %d counts the moved endpoint: %v, want %v", i, ok, want)
		}
		if want && c[2].RxPackets == 0 {
			t.Errorf("new server delivered nothing to the moved endpoint: %+v", c[2])
		}
	}
}
