package mapper_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/daolinet/daoli/mapper"
	"github.com/daolinet/daoli/mapper/store"
)

// envServe makes the test binary serve a mapper on the database it names,
// for the crash test to kill.
const envServe = "DAOLI_TEST_SERVE_DB"

func TestMain(m *testing.M) {
	if db := os.Getenv(envServe); db != "" {
		if err := serve(db); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serve runs a mapper on db and prints its address; it runs until killed.
func serve(db string) error {
	st, err := store.OpenBolt(store.BoltConfig{Path: db})
	if err != nil {
		return err
	}
	reg, err := mapper.New(mapper.Config{Store: st, BlockSize: 16})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	return http.Serve(ln, mapper.NewAPI(reg, nil))
}

// TestSIGKILLLosesNoAcknowledgedWrite kills a mapper process with SIGKILL
// while many clients write, then reopens its file: every write the mapper
// acknowledged must be there, unchanged, and the file must be sound.
func TestSIGKILLLosesNoAcknowledgedWrite(t *testing.T) {
	db := filepath.Join(t.TempDir(), "registry.db")
	start := func() (*exec.Cmd, *mapper.Client) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envServe+"="+db)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		addr, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatalf("mapper process printed no address: %v", err)
		}
		return cmd, mapper.NewClient(strings.TrimSpace(addr), &http.Client{Timeout: 5 * time.Second})
	}

	proc, c := start()
	must[mapper.Network](t)(c.CreateNetwork(ctx, mapper.NetworkSpec{Name: "net1", Subnet: prefix("10.0.0.0/8")}))
	for i := 1; i <= 4; i++ {
		must[mapper.Server](t)(c.RegisterServer(ctx, mapper.ServerSpec{Name: fmt.Sprintf("s%d", i),
			IPs: []netip.Addr{ip(fmt.Sprintf("192.0.2.%d", i))}, MAC: mac(fmt.Sprintf("52:54:00:00:00:%02x", i))}))
	}

	const clients = 8
	var (
		mu    sync.Mutex
		acked []mapper.Endpoint
		wg    sync.WaitGroup
	)
	enough := make(chan struct{})
	var once sync.Once
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				e, err := c.CreateEndpoint(context.Background(), mapper.EndpointSpec{
					Name: fmt.Sprintf("w%d-%d", w, i), Network: "net1",
					IP:     netip.AddrFrom4([4]byte{10, byte(w), byte(i >> 8), byte(i&0xff | 1)}),
					Server: fmt.Sprintf("s%d", 1+i%4), Ports: []mapper.PortSpec{{Port: 80, Protocol: mapper.TCP}},
				})
				if err != nil {
					return // the mapper died under us: this write was not acknowledged
				}
				mu.Lock()
				acked = append(acked, e)
				if len(acked) >= 400 {
					once.Do(func() { close(enough) })
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(30 * time.Second):
		t.Fatal("fewer than 400 writes acknowledged in 30 s")
	}
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	wg.Wait()
	t.Logf("%d writes acknowledged before SIGKILL", len(acked))

	st, err := store.OpenBolt(store.BoltConfig{Path: db})
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	if err := st.Check(); err != nil {
		t.Fatal(err)
	}
	reg := must[*mapper.Registry](t)(mapper.New(mapper.Config{Store: st, BlockSize: 16}))
	snap := must[mapper.Snapshot](t)(reg.Snapshot(ctx))
	byID := map[uint32]mapper.Endpoint{}
	for _, e := range snap.Endpoints {
		byID[e.ID] = e
	}
	for _, want := range acked {
		got, ok := byID[want.ID]
		if !ok {
			t.Errorf("acknowledged endpoint %d (%s) is missing after SIGKILL", want.ID, want.Name)
			continue
		}
		if d := diff(want, got); d != "" {
			t.Errorf("endpoint %d changed across SIGKILL (-acked +stored):\n%s", want.ID, d)
		}
	}
	// The change log holds every stored endpoint's creation.
	w := reg.Watch(ctx, 1)
	created := 0
	for created < len(snap.Endpoints) {
		r := <-w
		if r.Err != nil {
			t.Fatalf("change log after SIGKILL: %v", r.Err)
		}
		for _, ch := range r.Changes {
			if ch.Kind == mapper.KindEndpoint && ch.Type == "put" {
				created++
			}
		}
	}
	st.Close()

	// And the mapper starts again on the file and goes on allocating.
	_, c = start()
	e := must[mapper.Endpoint](t)(c.CreateEndpoint(ctx, web("after", "s1")))
	if _, dup := byID[e.ID]; dup {
		t.Errorf("endpoint ID %d was handed out twice across the crash", e.ID)
	}
}
