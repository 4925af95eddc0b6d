package testbed

import (
	"errors"
	"testing"
)

func TestStack(t *testing.T) {
	var s Stack
	var order []int
	for i := 1; i <= 3; i++ {
		s.Cleanup(func() { order = append(order, i) })
	}
	err := func() (err error) {
		defer func() { err = Recovered(recover()) }()
		s.Fatalf("stop at %d", 7)
		return nil
	}()
	var f Fatal
	if !errors.As(err, &f) || f.Msg != "stop at 7" {
		t.Errorf("Recovered: %v, want the Fatal", err)
	}
	s.Errorf("cleanup %s", "failed")
	if !s.Failed() || len(s.Errors()) != 1 {
		t.Errorf("after Errorf: failed %v, errors %v", s.Failed(), s.Errors())
	}
	s.Unwind()
	s.Unwind() // nothing left: runs nothing twice
	if len(order) != 3 || order[0] != 3 || order[2] != 1 {
		t.Errorf("cleanups ran in order %v, want newest first, once", order)
	}
	defer func() {
		if r := recover(); r != "other" {
			t.Errorf("Recovered of another panic: %v, want it panicking on", r)
		}
	}()
	Recovered("other")
}
