#!/usr/bin/env bash
# demo.sh: the main job. Builds daoli and runs `daoli demo` (as root): a
# three-server cluster on this machine, made of network namespaces, that
# shows fixed identities across servers, shared IPs, failover and live
# migration with measured numbers, then removes itself.
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build demo
mkdir -p bin
go build -o bin/daoli ./daoli
exec bin/daoli demo "$@"
