package testbed

import "fmt"

// Stack is a TB for callers that are not tests, such as the demo and the
// benchmarks: Cleanup pushes onto a stack that Unwind runs newest first.
// Fatal and Fatalf panic with a Fatal, which the caller recovers with
// Recovered before it unwinds; Errorf records an error (Errors). The zero
// value is ready to use. A Stack is not safe for concurrent use: Fatal
// must only be called on the goroutine that recovers it.
type Stack struct {
	cleanups []func()
	errs     []string
}

// Fatal is what Stack.Fatal panics with.
type Fatal struct{ Msg string }

func (f Fatal) Error() string { return f.Msg }

func (s *Stack) Helper()                           {}
func (s *Stack) Cleanup(f func())                  { s.cleanups = append(s.cleanups, f) }
func (s *Stack) Logf(format string, args ...any)   {}
func (s *Stack) Failed() bool                      { return len(s.errs) > 0 }
func (s *Stack) Fatal(args ...any)                 { panic(Fatal{fmt.Sprint(args...)}) }
func (s *Stack) Fatalf(format string, args ...any) { panic(Fatal{fmt.Sprintf(format, args...)}) }
func (s *Stack) Errorf(format string, args ...any) {
	s.errs = append(s.errs, fmt.Sprintf(format, args...))
}

// Errors returns what Errorf recorded.
func (s *Stack) Errors() []string { return s.errs }

// Unwind runs the cleanups, newest first, and forgets them.
func (s *Stack) Unwind() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
}

// Recovered turns a value recovered from a panic into an error when it is
// a Fatal, and panics again with any other value (after nil: nil).
func Recovered(r any) error {
	if r == nil {
		return nil
	}
	if f, ok := r.(Fatal); ok {
		return f
	}
	panic(r)
}
