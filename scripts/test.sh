#!/usr/bin/env bash
# test.sh: the whole test suite. Run it as root: the dataplane, testbed and
# (later) Docker tests need network namespaces and eBPF. With
# DAOLI_REQUIRE_PRIVILEGED=1 (CI sets it) a test that would skip for lack
# of privileges fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh build test generate docker kubernetes bench
export PATH="$PWD/.tools:$PATH"

if [ "$(id -u)" != 0 ]; then
	echo "test.sh: not root: privileged tests will skip (or fail with DAOLI_REQUIRE_PRIVILEGED=1)" >&2
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"
	echo "$unformatted"
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== staticcheck"
staticcheck ./...

echo "== generated eBPF objects match their C"
scripts/check-generate.sh

echo "== go test"
go test -count=1 "$@" ./...
