package testbed

import (
	"errors"
	"os"
	"path/filepath"
)

// RemoveCgroups removes the cgroup directory parent (such as
// "/daoli-test-1234") from every hierarchy, v1 and v2, that has it: what a
// runtime the test started (dockerd, containerd) left when its containers
// went. A directory still holding processes is an error of the test.
func RemoveCgroups(t TB, parent string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", parent)); err == nil {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", parent))
	}
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", d, err)
		}
	}
}

// RemoveCreatedDirs removes at cleanup those of dirs (deepest first) that
// do not exist now and are empty then: what the test's runtimes created
// outside the test's own directories.
func RemoveCreatedDirs(t TB, dirs ...string) {
	var created []string
	for _, d := range dirs {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			created = append(created, d)
		}
	}
	t.Cleanup(func() {
		for _, d := range created {
			os.Remove(d) // fails, rightly, when something else put a file there
		}
	})
}
