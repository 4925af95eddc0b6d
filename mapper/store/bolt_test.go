package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/daolinet/daoli/mapper/store"
	"github.com/daolinet/daoli/mapper/store/storetest"
)

func openBolt(t *testing.T, path string, retain int64) *store.Bolt {
	t.Helper()
	s, err := store.OpenBolt(store.BoltConfig{Path: path, Retain: retain})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openBolt(t, filepath.Join(t.TempDir(), "db"), 0)
	})
}

func TestBoltReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	s := openBolt(t, path, 0)
	storetest.Fill(t, s, "k/", 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(context.Background(), func(store.STM) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("update on a closed store: %v, want ErrClosed", err)
	}
	s = openBolt(t, path, 0)
	defer s.Close()
	kvs, rev, err := s.List(context.Background(), "k/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 20 || rev != 20 {
		t.Errorf("after reopening: %d keys at revision %d, want 20 at 20", len(kvs), rev)
	}
	// The change log survives too: a watcher resumes across the restart.
	r := <-s.Watch(context.Background(), "k/", 15)
	if r.Err != nil || len(r.Events) != 6 || r.Events[0].KV.ModRevision != 15 {
		t.Errorf("watch from 15 after reopening: %d events, err %v; want 6 from revision 15", len(r.Events), r.Err)
	}
}

func TestBoltRetainCompactsOldRevisions(t *testing.T) {
	s := openBolt(t, filepath.Join(t.TempDir(), "db"), 10)
	defer s.Close()
	storetest.Fill(t, s, "k/", 1100) // past Retain plus the compaction slack
	rev, compacted, err := s.Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if compacted == 0 || rev-compacted > 10+1024 {
		t.Errorf("revision %d, compacted %d: the log was not trimmed to its retention", rev, compacted)
	}
	if r := <-s.Watch(context.Background(), "", 1); !errors.Is(r.Err, store.ErrCompacted) {
		t.Errorf("watch from revision 1: %v, want ErrCompacted", r.Err)
	}
}

func TestBoltSecondOpenFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	s := openBolt(t, path, 0)
	defer s.Close()
	_, err := store.OpenBolt(store.BoltConfig{Path: path, OpenTimeout: 50_000_000})
	if err == nil {
		t.Fatal("a second open of a locked file succeeded")
	}
}
