package testbed

// AddNamespace creates an empty namespace (only lo, up), removed at
// cleanup like the rest of the World: a container for an agent to plumb.
func (w *World) AddNamespace(role string) *Namespace {
	w.t.Helper()
	return w.namespace(role)
}
