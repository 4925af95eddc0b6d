package swarmhook

import (
	"context"
	"strconv"

	"github.com/daolinet/daoli/agentapi"
)

// detach asks the agent to remove endpoint id and its veth pair. The
// plugin speaks agentapi, the agent socket's protocol, rather than
// importing the agent: swarmhook must not depend on the command, which
// depends on it (internal/layering).
func detach(ctx context.Context, c *agentapi.Client, id uint32) error {
	_, err := c.Detach(ctx, agentapi.DetachRequest{Endpoint: strconv.FormatUint(uint64(id), 10)})
	return err
}
