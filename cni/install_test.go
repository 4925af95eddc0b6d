package cni_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/daolinet/daoli/cni"
)

// TestInstallWritesTheExample: the install step writes the plugin and the
// list the docs show (deploy/kubernetes/10-daoli.conflist), a list libcni
// loads; bad flags write nothing.
func TestInstallWritesTheExample(t *testing.T) {
	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	var out bytes.Buffer
	if err := cni.Install([]string{"--bin-dir", bin, "--conf-dir", conf, "--network", "blue", "--ports", "8080/tcp"}, &out); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(bin, cni.Type)); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("installed plugin: %v, %v", st, err)
	}
	got := filepath.Join(conf, "10-daoli.conflist")
	if _, err := libcni.ConfListFromFile(got); err != nil {
		t.Fatalf("libcni cannot load the installed list: %v", err)
	}
	var a, b any
	for f, v := range map[string]*any{got: &a, "../deploy/kubernetes/10-daoli.conflist": &b} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("the installed list differs from the documented example:\n%v\n%v", a, b)
	}
	entries, _ := os.ReadDir(conf)
	if len(entries) != 1 {
		t.Errorf("the configuration directory holds %d files, want the list alone (no temporary file left)", len(entries))
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y")}, "--network is required"},
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y"), "--network", "blue", "--ports", "http"}, "--ports"},
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y"), "--network", "blue", "--cni-version", "2.0"}, "--cni-version"},
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y"), "--network", "blue", "--file", "../10-daoli.conflist"}, "inside --conf-dir"},
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y"), "--network", "blue", "--file", "daoli.json"}, "ending in .conflist"},
		{[]string{"--bin-dir", filepath.Join(dir, "x"), "--conf-dir", filepath.Join(dir, "y"), "--network", "blue", "--agent-socket", "node1.sock"}, "absolute path"},
	} {
		err := cni.Install(tc.args, &out)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("install %v: %v, want an error saying %q", tc.args, err, tc.says)
		}
	}
	for _, d := range []string{"x", "y"} {
		if _, err := os.Stat(filepath.Join(dir, d)); err == nil {
			t.Errorf("a refused install created %s", d)
		}
	}
}
