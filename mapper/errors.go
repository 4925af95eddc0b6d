package mapper

import (
	"errors"
	"fmt"
)

// Errors returned by the registry, and by the client for the matching HTTP
// statuses, so errors.Is works on both sides of the API.
var (
	// ErrInvalid is returned when a request is malformed or breaks a rule
	// of the model (an IP outside the subnet, a port of 0, ...).
	ErrInvalid = errors.New("invalid")
	// ErrNotFound is returned when a named network, server or endpoint
	// does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when creating something whose name is taken.
	ErrExists = errors.New("already exists")
	// ErrConflict is returned when a request is valid on its own but
	// clashes with the registry's state: a MAC already used in the
	// network, a service mode other endpoints disagree with.
	ErrConflict = errors.New("conflict")
	// ErrInUse is returned when removing a network or server that
	// endpoints still use.
	ErrInUse = errors.New("in use")
	// ErrPortSpaceFull is returned when a server has no free wire block,
	// or a (network, IP) no free identity block.
	ErrPortSpaceFull = errors.New("port space full")
	// ErrNetworkFull is returned when an endpoint without an address
	// needs one and every address of its network is held.
	ErrNetworkFull = errors.New("network full")
	// ErrUnauthenticated is returned when a mapper that requires client
	// certificates gets a request without a valid one.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden is returned when the request's identity may not do
	// what it asks (docs/security.md).
	ErrForbidden = errors.New("forbidden")
	// ErrTooManyRequests is returned when a client goes over one of the
	// mapper's Limits: its request rate or its watch streams.
	ErrTooManyRequests = errors.New("too many requests")
	// ErrCompacted is returned by a watch whose start revision was
	// compacted away: list again and watch from the listed revision.
	ErrCompacted = errors.New("revision compacted")
)

// FieldError says which field of a request was wrong and why. It wraps one
// of the sentinel errors above.
type FieldError struct {
	Field string // JSON name of the field, such as "ip" or "ports[1].port"
	Err   error  // ErrInvalid, ErrNotFound, ErrConflict, ...
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap returns the sentinel error.
func (e *FieldError) Unwrap() error { return e.Err }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: ErrInvalid, Msg: fmt.Sprintf(format, args...)}
}

func fieldErr(field string, sentinel error, format string, args ...any) error {
	return &FieldError{Field: field, Err: sentinel, Msg: fmt.Sprintf(format, args...)}
}
