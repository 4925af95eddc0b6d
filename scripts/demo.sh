#!/usr/bin/env bash
# demo.sh: the main job. Until the multi-server demo lands it is the
# registry walkthrough: networks, shared IPs, 6-tuples, a move, a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
exec examples/walkthrough/walkthrough.sh "$@"
