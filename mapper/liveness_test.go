package mapper_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

// TestLiveness: a server whose heartbeats stop is marked gone once its
// lease runs out; heartbeats write nothing while a server stays alive;
// a gone server that heartbeats again is alive again.
func TestLiveness(t *testing.T) {
	reg, st := newRegistry(t, mapper.Config{ServerTTL: time.Second})
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The silent server's name sorts first, so that the scheduler would
	// choose it were it not gone.
	for i, name := range []string{"b-beating", "a-silent"} {
		must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{
			Name: name, IPs: []netip.Addr{ip("192.0.2." + string(rune('1'+i)))}, MAC: mac("02:00:00:00:00:0" + string(rune('1'+i)))}))
	}
	go reg.RunLiveness(lctx)
	rev, _ := revision(t, st)
	deadline := time.Now().Add(10 * time.Second)
	for {
		must[mapper.Server](t)(reg.Heartbeat(ctx, "b-beating"))
		silent := must[mapper.Server](t)(reg.Server(ctx, "a-silent"))
		if silent.Gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a server without heartbeats was not marked gone")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s := must[mapper.Server](t)(reg.Server(ctx, "b-beating")); s.Gone {
		t.Error("a server that heartbeats was marked gone")
	}
	// The only writes since the heartbeats began are the lease's expiry
	// and the mark: heartbeats fill no change log.
	if now, _ := revision(t, st); now != rev+2 {
		t.Errorf("revision %d after heartbeats, an expiry and a mark, want %d", now, rev+2)
	}
	var got []string
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	for resp := range st.Watch(wctx, "", rev+1) {
		for _, ev := range resp.Events {
			got = append(got, ev.Type.String()+" "+ev.KV.Key)
		}
		if len(got) >= 2 || resp.Err != nil {
			break
		}
	}
	if want := []string{"delete /daoli/live/a-silent", "put /daoli/obj/servers/a-silent"}; diff(want, got) != "" {
		t.Errorf("change log since the heartbeats began: %q, want %q", got, want)
	}
	// The scheduler places nothing on a gone server.
	must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "n", Subnet: prefix("10.1.0.0/24")}))
	svc, _ := must2(t)(reg.PlaceService(ctx, mapper.ServiceKey{Network: "n", IP: ip("10.1.0.9"), Port: 80, Protocol: mapper.TCP},
		mapper.PlaceRequest{Name: "web", Replicas: 1}))
	if svc.Replicas[0].Server != "b-beating" {
		t.Errorf("a replica was placed on %s, want the live b-beating", svc.Replicas[0].Server)
	}
	back := must[mapper.Server](t)(reg.Heartbeat(ctx, "a-silent"))
	if back.Gone || must[mapper.Server](t)(reg.Server(ctx, "a-silent")).Gone {
		t.Error("a gone server that heartbeats again is still gone")
	}
}

// TestLivenessGrace: a mapper that starts after every lease ran out (the
// mappers were all down) marks nothing gone while agents come back within
// a TTL.
func TestLivenessGrace(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{ServerTTL: time.Second})
	must[mapper.Server](t)(reg.RegisterServer(ctx, mapper.ServerSpec{Name: "s", IPs: []netip.Addr{ip("192.0.2.1")}, MAC: mac("02:00:00:00:00:01")}))
	time.Sleep(2500 * time.Millisecond) // the lease expires: no mapper was judging
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go reg.RunLiveness(lctx)
	time.Sleep(500 * time.Millisecond)
	must[mapper.Server](t)(reg.Heartbeat(ctx, "s")) // the agent reaches the new mapper
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		must[mapper.Server](t)(reg.Heartbeat(ctx, "s"))
		if must[mapper.Server](t)(reg.Server(ctx, "s")).Gone {
			t.Fatal("a server whose lease ran out while no mapper ran was marked gone though it heartbeats")
		}
	}
}

func revision(t *testing.T, st store.Store) (int64, int64) {
	t.Helper()
	rev, c, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rev, c
}

func must2(t *testing.T) func(mapper.ScheduledService, bool, error) (mapper.ScheduledService, bool) {
	return func(s mapper.ScheduledService, created bool, err error) (mapper.ScheduledService, bool) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s, created
	}
}
