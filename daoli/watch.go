package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/daolinet/daoli/mapper"
	"github.com/spf13/cobra"
)

func newWatchCmd(a *app) *cobra.Command {
	var rev int64
	cmd := &cobra.Command{
		Use:   "watch [--revision N]",
		Short: "Stream the registry's changes until interrupted",
		Long: `Stream the registry's changes, one line each: revision, type (put or
delete), kind (network, server, endpoint) and the object; with -o json,
one JSON object per line. Runs until interrupted (Ctrl-C).

Without --revision it starts at the next change. To follow the registry
without a gap, read a snapshot (GET /v1/snapshot) and watch from its
revision plus one; after a disconnect, from the last revision seen plus
one, which the error message names.`,
		Example: "  daoli watch --revision 1",
		Args:    cobra.NoArgs,
		RunE: a.streamClient(func(ctx context.Context, s *session, _ []string) error {
			if rev < 0 {
				return badFlagf("revision", strconv.FormatInt(rev, 10), "want 0 (the next change) or more")
			}
			return watch(ctx, s, rev)
		}),
	}
	a.addClientFlags(cmd)
	cmd.Flags().Int64Var(&rev, "revision", 0, "start at this revision (0: at the next change)")
	return cmd
}

// watch prints changes until ctx ends (a clean stop) or the stream fails.
func watch(ctx context.Context, s *session, rev int64) error {
	enc := json.NewEncoder(s.out.w)
	var last int64
	for resp := range s.cl.Watch(ctx, rev) {
		for _, c := range resp.Changes {
			last = c.Revision
			var err error
			if s.out.format == formatJSON {
				err = enc.Encode(c)
			} else {
				err = writeChange(s.out.w, c)
			}
			if err != nil {
				return fmt.Errorf("print change %d: %w", c.Revision, err)
			}
		}
		if resp.Err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if _, ok := errors.AsType[*mapper.APIError](resp.Err); ok {
				return resp.Err
			}
			if last > 0 {
				return fmt.Errorf("%w (resume with --revision %d)", resp.Err, last+1)
			}
			return fmt.Errorf("%w (is the mapper running at %s?)", resp.Err, s.cl.URL())
		}
	}
	return nil
}
