package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/vishvananda/netns"
)

// Health checks: with Config.HealthInterval set, the agent connects to
// every served TCP port of its local endpoints, from inside the
// container's network namespace, so the check sees the service and not
// the network. HealthFailures failures in a row mark the endpoint down;
// HealthFailures successes in a row mark an endpoint it took down active
// again. Endpoints marked down for another reason (their veth vanished,
// an operator) are left alone.

// netnsBook remembers each local endpoint's container namespace, in a file
// beside the socket, so a restarted agent can still check its endpoints.
type netnsBook struct {
	mu    sync.Mutex
	path  string
	paths map[uint32]string
}

func openNetnsBook(runDir, name string) *netnsBook {
	b := &netnsBook{path: filepath.Join(runDir, name+".netns.json"), paths: map[uint32]string{}}
	if data, err := os.ReadFile(b.path); err == nil {
		json.Unmarshal(data, &b.paths)
	}
	return b
}

func (b *netnsBook) set(id uint32, path string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if path == "" {
		delete(b.paths, id)
	} else {
		b.paths[id] = path
	}
	data, _ := json.Marshal(b.paths)
	tmp := b.path + ".tmp"
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, b.path)
	}
}

func (b *netnsBook) get(id uint32) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.paths[id]
}

// dialInNetns connects to addr from inside the network namespace at path.
func dialInNetns(path string, addr netip.AddrPort, timeout time.Duration) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", path, err)
	}
	c, derr := net.DialTimeout("tcp", addr.String(), timeout)
	if err := netns.Set(orig); err != nil {
		// Stay locked: the runtime retires the thread with the goroutine.
		return errors.Join(derr, fmt.Errorf("leave %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	if derr != nil {
		return derr
	}
	return c.Close()
}

// healthState counts consecutive results per endpoint.
type healthState struct {
	fails, oks int
	tookDown   bool // this checker marked it down
}

func (a *Agent) checkHealth(ctx context.Context) {
	if a.cfg.HealthInterval <= 0 {
		return
	}
	state := map[uint32]*healthState{}
	t := time.NewTicker(a.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		seen := map[uint32]bool{}
		for _, e := range a.model.local(a.cfg.Name) {
			path := a.netns.get(e.ID)
			if path == "" || e.Interface == "" || ifindexOf(e.Interface) == 0 {
				continue // not attached by this agent, or its container is gone
			}
			seen[e.ID] = true
			hs := state[e.ID]
			if hs == nil {
				hs = &healthState{}
				state[e.ID] = hs
			}
			healthy := true
			for _, p := range e.Ports {
				if p.Protocol != mapper.TCP {
					continue
				}
				if err := dialInNetns(path, netip.AddrPortFrom(e.IP, p.Port), a.cfg.HealthInterval/2); err != nil {
					healthy = false
					a.log.Debug("health check failed", "endpoint", e.Ref(), "port", p.Port, "error", err)
					break
				}
			}
			if healthy {
				hs.fails, hs.oks = 0, hs.oks+1
			} else {
				hs.fails, hs.oks = hs.fails+1, 0
			}
			switch {
			case !healthy && hs.fails == a.cfg.HealthFailures && e.State == mapper.Active:
				if a.setState(ctx, e, mapper.Down, "health check failed "+strconv.Itoa(hs.fails)+" times") {
					hs.tookDown = true
				}
			case healthy && hs.oks == a.cfg.HealthFailures && e.State == mapper.Down && hs.tookDown:
				if a.setState(ctx, e, mapper.Active, "health check passed "+strconv.Itoa(hs.oks)+" times") {
					hs.tookDown = false
				}
			}
		}
		for id := range state {
			if !seen[id] {
				delete(state, id)
			}
		}
	}
}

// setState changes a local endpoint's state, guarded by its server and
// interface. It reports whether the change was made.
func (a *Agent) setState(ctx context.Context, e mapper.Endpoint, s mapper.State, why string) bool {
	_, err := a.mc.SetEndpointState(ctx, e.Ref(), mapper.StateRequest{State: s, IfServer: a.cfg.Name, IfInterface: e.Interface})
	if err != nil {
		a.log.Warn("health: set state", "endpoint", e.Ref(), "state", s, "error", err)
		return false
	}
	a.log.Info("health: endpoint "+string(s), "endpoint", e.Ref(), "why", why)
	a.m.healthChanges.Add(1)
	return true
}
