package mapper_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/daolinet/daoli/mapper"
)

// TestReach: connections, groups and exports, each refused with a reason
// when it would let a network see two overlapping subnets, and forgotten
// with the network they name.
func TestReach(t *testing.T) {
	reg, _ := newRegistry(t, mapper.Config{})
	mk := func(name, subnet string, groups ...string) {
		t.Helper()
		must[mapper.Network](t)(reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: name, Subnet: prefix(subnet), Groups: groups}))
	}
	mk("blue", "10.1.0.0/24")
	mk("red", "10.2.0.0/24")
	mk("wide", "10.0.0.0/8")
	mk("shop", "10.3.0.0/24", "prod")
	net := func(name string) mapper.Network { t.Helper(); return must[mapper.Network](t)(reg.Network(ctx, name)) }
	reach := func() mapper.Reach {
		t.Helper()
		return mapper.ReachOf(must[mapper.Snapshot](t)(reg.Snapshot(ctx)).Networks)
	}

	t.Run("connect", func(t *testing.T) {
		n := must[mapper.Network](t)(reg.ConnectNetworks(ctx, "blue", "red"))
		if !slices.Equal(n.Connected, []string{"red"}) || !slices.Equal(net("red").Connected, []string{"blue"}) {
			t.Errorf("after connect: blue %v, red %v; want each the other", n.Connected, net("red").Connected)
		}
		must[mapper.Network](t)(reg.ConnectNetworks(ctx, "red", "blue")) // the same, again
		if r := reach(); !slices.Equal(r.Full["blue"], []string{"red"}) || !slices.Equal(r.Full["red"], []string{"blue"}) {
			t.Errorf("reach %+v", r.Full)
		}
		_, err := reg.ConnectNetworks(ctx, "blue", "wide")
		wantErr(t, err, mapper.ErrConflict, "network", "network blue (10.1.0.0/24) would reach network wide (10.0.0.0/8): their subnets overlap")
		_, err = reg.ConnectNetworks(ctx, "blue", "blue")
		wantErr(t, err, mapper.ErrInvalid, "to", "reaches its own services already")
		_, err = reg.ConnectNetworks(ctx, "blue", "nope")
		wantErr(t, err, mapper.ErrNotFound, "to", "network nope does not exist")
		must[mapper.Network](t)(reg.DisconnectNetworks(ctx, "red", "blue"))
		if len(net("blue").Connected)+len(net("red").Connected) != 0 {
			t.Errorf("after disconnect: blue %v, red %v", net("blue").Connected, net("red").Connected)
		}
		_, err = reg.DisconnectNetworks(ctx, "red", "blue")
		wantErr(t, err, mapper.ErrNotFound, "network", "network red is not connected to blue")
	})

	t.Run("groups", func(t *testing.T) {
		prod := []string{"prod"}
		must[mapper.Network](t)(reg.UpdateNetwork(ctx, "blue", mapper.NetworkUpdate{Groups: &prod}))
		if r := reach(); !slices.Equal(r.Full["shop"], []string{"blue"}) {
			t.Errorf("shop reaches %v, want blue (group prod)", r.Full["shop"])
		}
		_, err := reg.UpdateNetwork(ctx, "wide", mapper.NetworkUpdate{Groups: &prod})
		wantErr(t, err, mapper.ErrConflict, "network", "their subnets overlap")
		_, err = reg.CreateNetwork(ctx, mapper.NetworkSpec{Name: "wide2", Subnet: prefix("10.0.0.0/8"), Groups: prod})
		wantErr(t, err, mapper.ErrConflict, "network", "their subnets overlap")
		bad := []string{"prod", "prod"}
		_, err = reg.UpdateNetwork(ctx, "blue", mapper.NetworkUpdate{Groups: &bad})
		wantErr(t, err, mapper.ErrInvalid, "groups[1]", `group "prod" listed twice`)
		none := []string{}
		must[mapper.Network](t)(reg.UpdateNetwork(ctx, "blue", mapper.NetworkUpdate{Groups: &none}))
		if r := reach(); len(r.Full["shop"]) != 0 {
			t.Errorf("after blue left the group, shop reaches %v", r.Full["shop"])
		}
	})

	t.Run("exports", func(t *testing.T) {
		spec := mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 5432, To: "red"}
		n := must[mapper.Network](t)(reg.ExportService(ctx, "blue", spec))
		if len(n.Exports) != 1 || n.Exports[0].Protocol != mapper.TCP || !slices.Equal(n.Exports[0].To, []string{"red"}) {
			t.Errorf("exports %+v", n.Exports)
		}
		spec.To = "shop"
		must[mapper.Network](t)(reg.ExportService(ctx, "blue", spec))
		must[mapper.Network](t)(reg.ExportService(ctx, "blue", spec)) // again: no change
		r := reach()
		if got := r.Only["red"]["blue"]; len(got) != 1 || got[0].Port != 5432 || len(r.Full["red"]) != 0 {
			t.Errorf("red reaches %+v of blue (and all of %v), want 10.1.0.5:5432 alone", got, r.Full["red"])
		}
		for _, tc := range []struct {
			spec   mapper.ExportSpec
			sent   error
			field  string
			saying string
		}{
			{mapper.ExportSpec{IP: ip("10.2.0.5"), Port: 80, To: "red"}, mapper.ErrInvalid, "ip", "outside network blue's subnet"},
			{mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 0, To: "red"}, mapper.ErrInvalid, "port", "missing"},
			{mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 80, Protocol: "sctp", To: "red"}, mapper.ErrInvalid, "protocol", `"sctp"`},
			{mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 80, To: "wide"}, mapper.ErrConflict, "network", "their subnets overlap"},
			{mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 80}, mapper.ErrInvalid, "to", "missing"},
		} {
			_, err := reg.ExportService(ctx, "blue", tc.spec)
			wantErr(t, err, tc.sent, tc.field, tc.saying)
		}
		must[mapper.Network](t)(reg.UnexportService(ctx, "blue", mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 5432, To: "shop"}))
		if to := net("blue").Exports[0].To; !slices.Equal(to, []string{"red"}) {
			t.Errorf("after unexporting from shop: to %v, want red", to)
		}
		_, err := reg.UnexportService(ctx, "blue", mapper.ExportSpec{IP: ip("10.1.0.5"), Port: 5432, Protocol: mapper.UDP})
		wantErr(t, err, mapper.ErrNotFound, "service", "network blue does not export 10.1.0.5:5432/udp")
	})

	t.Run("a removed network is forgotten", func(t *testing.T) {
		must[mapper.Network](t)(reg.ConnectNetworks(ctx, "blue", "red"))
		rev := must[mapper.Snapshot](t)(reg.Snapshot(ctx)).Revision
		if err := reg.DeleteNetwork(ctx, "red"); err != nil {
			t.Fatal(err)
		}
		blue := net("blue")
		if len(blue.Connected) != 0 || len(blue.Exports) != 0 {
			t.Errorf("blue still names red: connected %v, exports %+v", blue.Connected, blue.Exports)
		}
		// Watchers learn it from blue's own change.
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		changes := reg.Watch(wctx, rev+1)
		resp := <-changes
		var sawBlue bool
		for _, c := range resp.Changes {
			sawBlue = sawBlue || c.Network != nil && c.Network.Name == "blue"
		}
		if resp.Err != nil || !sawBlue {
			t.Errorf("the watch after removing red: %+v, want blue's change", resp)
		}
	})
	if _, err := reg.ConnectNetworks(ctx, "blue", "gone"); !errors.Is(err, mapper.ErrNotFound) {
		t.Errorf("connect to a removed network: %v", err)
	}
}
