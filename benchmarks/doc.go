// Package benchmarks holds daoli's side-by-side benchmarks: daoli's eBPF
// dataplane against server-to-server, plain host routes, a Linux VXLAN
// overlay and a bridge with iptables NAT; daoli's egress against a
// bridge with MASQUERADE (a container to a host outside the cluster); and
// daoli's ingress against a bridge with iptables DNAT, Docker's -p (a host
// outside dialling a published port of a server, whose backend runs on
// that server or, for daoli, on another). All are built in network
// namespaces on one machine and measured in the same run, plus daoli's
// control plane and mobility. README.md has the published results and the
// command that reproduces them (make bench).
//
//	netbench/   the load tools: rr, crr, stream, udp, and their server
//	paths/      each path built in namespaces (internal/testbed), daoli's with real agents
//	harness/    the run: rounds, control plane, mobility, map memory, the report
//	cmd/bench/  the command; its netbench subcommands run inside the namespaces
//
// This package itself only holds the smoke test that runs the whole
// harness in quick mode (as root; see internal/testbed.RequirePrivileged).
package benchmarks
