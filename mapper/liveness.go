package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/daolinet/daoli/mapper/store"
)

// RunLiveness marks servers gone when their liveness lease runs out, and
// runs until ctx ends. Every mapper runs it: a mark is a transaction that
// writes only when the server is still marked alive and still has no
// live key, so several mappers agree without electing one.
//
// A mapper that just started marks nothing gone for one ServerTTL plus a
// second: leases that ran out while no mapper was there to take
// heartbeats (every mapper down, the registry's file copied elsewhere)
// are not deaths, and every live agent renews its lease within that
// time. Marks that wait are made by the sweep that ends the grace.
func (r *Registry) RunLiveness(ctx context.Context) {
	grace := time.NewTimer(r.cfg.ServerTTL + time.Second)
	defer grace.Stop()
	judging := false
	sweep := time.NewTicker(r.cfg.ServerTTL)
	defer sweep.Stop()
	events := r.st.Watch(ctx, livePrefix, 0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-grace.C:
			judging = true
			r.sweepLiveness(ctx)
		case <-sweep.C:
			if judging {
				r.sweepLiveness(ctx) // what a broken watch missed
			}
		case resp, ok := <-events:
			if !ok || resp.Err != nil {
				if ctx.Err() != nil {
					return
				}
				r.log.Warn("liveness watch ended; watching again", "error", resp.Err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
				events = r.st.Watch(ctx, livePrefix, 0)
				if judging {
					r.sweepLiveness(ctx)
				}
				continue
			}
			for _, ev := range resp.Events {
				if ev.Type == store.EventDelete && judging {
					r.markGone(ctx, strings.TrimPrefix(ev.KV.Key, livePrefix))
				}
			}
		}
	}
}

// sweepLiveness marks gone every server marked alive without a live key.
func (r *Registry) sweepLiveness(ctx context.Context) {
	live, _, err := r.st.List(ctx, livePrefix)
	if err != nil {
		r.log.Warn("liveness sweep", "error", err)
		return
	}
	alive := map[string]bool{}
	for _, kv := range live {
		alive[strings.TrimPrefix(kv.Key, livePrefix)] = true
	}
	servers, _, err := r.st.List(ctx, serverPrefix)
	if err != nil {
		r.log.Warn("liveness sweep", "error", err)
		return
	}
	for _, kv := range servers {
		var s Server
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			r.log.Error("liveness sweep", "error", fmt.Errorf("%w %s: %v", errCorrupt, kv.Key, err))
			continue
		}
		if !s.Gone && !alive[s.Name] {
			r.markGone(ctx, s.Name)
		}
	}
}

// markGone marks a server gone if it is still marked alive and still has
// no live key.
func (r *Registry) markGone(ctx context.Context, name string) {
	marked := false
	_, err := r.update(ctx, func(t tx) error {
		marked = false
		var srv Server
		if !t.get(serverKey(name), &srv) || srv.Gone {
			return nil
		}
		if _, live := t.Get(liveKey(name)); live {
			return nil
		}
		srv.Gone, srv.Since = true, r.now().UTC()
		t.put(serverKey(name), srv)
		marked = true
		return nil
	})
	switch {
	case err != nil:
		r.log.Warn("mark server gone", "server", name, "error", err)
	case marked:
		r.log.Info("server gone: its liveness lease ran out", "server", name)
	}
}
