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

// netnsBook remembers, per local endpoint, its container's namespace and
// whether the health checks took it down, in a file beside the socket, so
// a restarted agent goes on checking (and can bring back what its checks
// took down).
type netnsBook struct {
	mu      sync.Mutex
	path    string
	entries map[uint32]bookEntry
}

type bookEntry struct {
	Netns    string `json:"netns"`
	TookDown bool   `json:"took_down,omitempty"`
}

func openNetnsBook(runDir, name string) *netnsBook {
	b := &netnsBook{path: filepath.Join(runDir, name+".netns.json"), entries: map[uint32]bookEntry{}}
	if data, err := os.ReadFile(b.path); err == nil {
		json.Unmarshal(data, &b.entries)
	}
	return b
}

// update changes id's entry with f (delete it when f leaves no netns) and
// writes the book atomically.
func (b *netnsBook) update(id uint32, f func(*bookEntry)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[id]
	f(&e)
	if e.Netns == "" {
		delete(b.entries, id)
	} else {
		b.entries[id] = e
	}
	data, _ := json.Marshal(b.entries)
	tmp := b.path + ".tmp"
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, b.path)
	}
}

func (b *netnsBook) set(id uint32, path string) {
	b.update(id, func(e *bookEntry) { *e = bookEntry{Netns: path} })
}

func (b *netnsBook) get(id uint32) bookEntry {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.entries[id]
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
type healthState struct{ fails, oks int }

func (a *Agent) checkHealth(ctx context.Context) {
	if a.cfg.HealthInterval <= 0 {
		return
	}
	state := map[uint32]*healthState{}
	every(ctx, a.cfg.HealthInterval, func() {
		seen := map[uint32]bool{}
		for _, e := range a.model.local(a.cfg.Name) {
			book := a.netns.get(e.ID)
			path := book.Netns
			if path == "" || e.Interface == "" || a.vethIndex(e.Interface) == 0 {
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
			// At least, not exactly, the threshold: a failed call to the
			// mapper is tried again on the next round.
			switch {
			case !healthy && hs.fails >= a.cfg.HealthFailures && e.State == mapper.Active:
				if a.setState(ctx, e, mapper.Down, "health check failed "+strconv.Itoa(hs.fails)+" times") {
					a.netns.update(e.ID, func(b *bookEntry) { b.TookDown = true })
				}
			case healthy && hs.oks >= a.cfg.HealthFailures && e.State == mapper.Down && book.TookDown:
				if a.setState(ctx, e, mapper.Active, "health check passed "+strconv.Itoa(hs.oks)+" times") {
					a.netns.update(e.ID, func(b *bookEntry) { b.TookDown = false })
				}
			}
		}
		for id := range state {
			if !seen[id] {
				delete(state, id)
			}
		}
	})
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
