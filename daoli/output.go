package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/daolinet/daoli/mapper"
)

// format is how a command prints what it got from the mapper.
type format string

// Formats of -o.
const (
	// formatTable prints aligned columns for people.
	formatTable format = "table"
	// formatJSON prints the API's JSON, indented.
	formatJSON format = "json"
)

// output is where a command prints, and how.
type output struct {
	w      io.Writer
	format format
}

// newOutput parses the value of -o.
func newOutput(w io.Writer, s string) (*output, error) {
	switch f := format(strings.ToLower(s)); f {
	case formatTable, formatJSON:
		return &output{w: w, format: f}, nil
	}
	return nil, fmt.Errorf("-o %q: want table or json", s)
}

// print writes v as indented JSON with -o json, else calls table.
func (o *output) print(v any, table func(io.Writer) error) error {
	if o.format == formatJSON {
		return writeJSON(o.w, v)
	}
	return table(o.w)
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// table writes aligned columns. An empty cell prints as "-", so that rows
// also split cleanly on white space; a cell of " " stays blank.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// ---- cells ----

func itoa[T ~uint16 | ~uint32 | ~int64](v T) string { return strconv.FormatInt(int64(v), 10) }

func joinStrings[T fmt.Stringer](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

// backendRef names a backend the way the CLI takes it: name, else ID.
func backendRef(b mapper.Backend) string {
	if b.Name != "" {
		return b.Name
	}
	return itoa(b.Endpoint)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// ---- networks, servers, endpoints, services ----

func sortNetworks(ns []mapper.Network) {
	slices.SortFunc(ns, func(a, b mapper.Network) int { return cmp.Compare(a.Name, b.Name) })
}

func writeNetworks(w io.Writer, ns []mapper.Network) error {
	t := newTable(w, "NAME", "ID", "SUBNET", "GATEWAY", "EGRESS")
	for _, n := range ns {
		t.row(n.Name, itoa(n.ID), n.Subnet.String(), n.Gateway.String(), n.Egress.String())
	}
	return t.flush()
}

func sortServers(ss []mapper.Server) {
	slices.SortFunc(ss, func(a, b mapper.Server) int { return cmp.Compare(a.Name, b.Name) })
}

func writeServers(w io.Writer, ss []mapper.Server) error {
	t := newTable(w, "NAME", "SERVER IPS", "SERVER MAC", "UPLINK", "STATE", "SINCE")
	for _, s := range ss {
		state := "alive"
		if s.Gone {
			state = "gone"
		}
		t.row(s.Name, joinStrings(s.IPs), s.MAC.String(), s.Uplink, state, formatTime(s.Since))
	}
	return t.flush()
}

func sortEndpoints(es []mapper.Endpoint) {
	slices.SortFunc(es, func(a, b mapper.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
}

func writeEndpoints(w io.Writer, es []mapper.Endpoint) error {
	t := newTable(w, "ID", "NAME", "NETWORK", "IP", "MAC", "PORTS", "MODE", "PRIORITY", "STATE", "SERVER", "WIRE BLOCK")
	for _, e := range es {
		t.row(itoa(e.ID), e.Name, e.Network, e.IP.String(), e.MAC.String(), joinStrings(e.Ports),
			string(e.Mode), itoa(e.Priority), string(e.State), e.Server, e.Wire.String())
	}
	return t.flush()
}

// writeEndpointDetail prints one endpoint as fields, then its 6-tuples.
func writeEndpointDetail(w io.Writer, d mapper.EndpointDetail) error {
	e := d.Endpoint
	t := newTable(w)
	for _, f := range [][2]string{
		{"ID", itoa(e.ID)},
		{"Name", e.Name},
		{"Network", fmt.Sprintf("%s (id %d)", e.Network, e.NetworkID)},
		{"IP", e.IP.String()},
		{"MAC", e.MAC.String()},
		{"Ports", joinStrings(e.Ports)},
		{"Published", joinStrings(e.Published)},
		{"Mode", string(e.Mode)},
		{"Priority", itoa(e.Priority)},
		{"State", string(e.State)},
		{"Server", e.Server},
		{"Interface", e.Interface},
		{"Wire block", e.Wire.String()},
		{"Identity block", e.Identity.String()},
	} {
		t.row(f[0]+":", f[1])
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "SERVER MAC", "SERVER IP", "SERVER PORT", "MAC", "IP", "PORT", "PROTO")
	for _, s := range d.SixTuples {
		t.row(s.ServerMAC.String(), s.ServerIP.String(), itoa(s.ServerPort),
			s.MAC.String(), s.IP.String(), itoa(s.Port), string(s.Protocol))
	}
	return t.flush()
}

// writeServices prints one row per backend; a service's own columns are
// filled on its first row only, so each service reads as a group.
func writeServices(w io.Writer, svcs []mapper.Service) error {
	t := newTable(w, "NETWORK", "SERVICE", "MODE", "PUBLISHED", "BACKEND", "SERVER", "PRIORITY", "STATE", "6-TUPLE")
	for _, s := range svcs {
		network, addr, mode := s.Network, fmt.Sprintf("%s:%d/%s", s.IP, s.Port, s.Protocol), string(s.Mode)
		hostPorts := make([]string, len(s.Published))
		for i, hp := range s.Published {
			hostPorts[i] = itoa(hp)
		}
		published := cmp.Or(strings.Join(hostPorts, ","), "-")
		for _, b := range s.Backends {
			t.row(network, addr, mode, published, backendRef(b), b.Server, itoa(b.Priority), string(b.State), b.Tuple.String())
			network, addr, mode, published = " ", " ", " ", " "
		}
	}
	return t.flush()
}

// writeChange prints one change of the watch stream on one line.
func writeChange(w io.Writer, c mapper.Change) error {
	_, err := fmt.Fprintf(w, "%-6d %-6s %-8s %s\n", c.Revision, c.Type, c.Kind, changeSummary(c))
	return err
}

func changeSummary(c mapper.Change) string {
	dash := func(s string) string { return cmp.Or(s, "-") }
	switch {
	case c.Network != nil:
		n := c.Network
		line := fmt.Sprintf("%s id=%d subnet=%s gateway=%s", n.Name, n.ID, n.Subnet, n.Gateway)
		if !n.Egress.IsZero() {
			line += " egress=" + n.Egress.String()
		}
		if len(n.Connected) > 0 {
			line += " connected=" + strings.Join(n.Connected, ",")
		}
		if len(n.Groups) > 0 {
			line += " groups=" + strings.Join(n.Groups, ",")
		}
		for _, e := range n.Exports {
			line += fmt.Sprintf(" export=%s:%d/%s>%s", e.IP, e.Port, e.Protocol, strings.Join(e.To, ","))
		}
		return line
	case c.Server != nil:
		s := c.Server
		line := fmt.Sprintf("%s ips=%s mac=%s uplink=%s", s.Name, joinStrings(s.IPs), s.MAC, dash(s.Uplink))
		if s.Gone {
			line += " gone"
		}
		return line
	case c.Endpoint != nil:
		e := c.Endpoint
		return fmt.Sprintf("%s id=%d network=%s ip=%s mac=%s ports=%s mode=%s priority=%d state=%s server=%s wire=%s",
			e.Ref(), e.ID, e.Network, e.IP, e.MAC, dash(joinStrings(e.Ports)), e.Mode, e.Priority, e.State, e.Server, e.Wire)
	}
	return "-"
}

// printList prints items sorted by sortFn, as a table by write or as JSON;
// no items is an empty JSON array, not null.
func printList[T any](s *session, items []T, sortFn func([]T), write func(io.Writer, []T) error) error {
	if items == nil {
		items = []T{}
	}
	sortFn(items)
	return s.out.print(items, func(w io.Writer) error { return write(w, items) })
}

// removeEach calls rm for every name, going on past failures, and prints
// each name removed in table output.
func removeEach(s *session, names []string, rm func(name string) error) error {
	var errs []error
	for _, name := range names {
		if err := rm(name); err != nil {
			errs = append(errs, err)
			continue
		}
		if s.out.format == formatTable {
			fmt.Fprintln(s.out.w, name)
		}
	}
	return errors.Join(errs...)
}
