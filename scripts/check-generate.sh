#!/usr/bin/env bash
# check-generate.sh: rebuilds the eBPF objects with the pinned clang and
# fails if they differ from the ones in the tree. The rebuilt files stay in
# the tree, ready to commit.
set -euo pipefail
cd "$(dirname "$0")/.."

generated=(dataplane/daoli_bpfel.go dataplane/daoli_bpfel.o)
before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
cp "${generated[@]}" "$before/"
go generate ./dataplane
for f in "${generated[@]}"; do
	if ! cmp -s "$f" "$before/$(basename "$f")"; then
		echo "check-generate: $f is stale: rebuilt from dataplane/bpf; commit the rebuilt file" >&2
		exit 1
	fi
done
echo "generated objects are fresh"
