# The everyday targets. The README's two commands are scripts/demo.sh and
# scripts/test.sh; these targets call the same scripts.

GO ?= go

.PHONY: build demo test lint generate check-generate bench bench-quick clean

build:
	$(GO) build -o bin/daoli ./daoli

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint:
	scripts/setup.sh test
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	$(GO) vet ./...
	.tools/staticcheck ./...

# Rebuild the committed eBPF objects with the pinned clang (see scripts/setup.sh).
generate:
	scripts/setup.sh generate
	$(GO) generate ./dataplane

check-generate:
	scripts/setup.sh generate
	scripts/check-generate.sh

# daoli side by side with plain routing, VXLAN and bridge + NAT, in one run
# (as root, under 15 minutes): publishes benchmarks/README.md's table and
# benchmarks/results.json. bench-quick is the smoke test: numbers printed,
# nothing published.
bench:
	scripts/setup.sh bench
	$(GO) build -o bin/daoli ./daoli
	$(GO) build -o bin/bench ./benchmarks/cmd/bench
	bin/bench --daoli bin/daoli --json benchmarks/results.json --readme benchmarks/README.md

bench-quick:
	scripts/setup.sh bench
	$(GO) build -o bin/daoli ./daoli
	$(GO) build -o bin/bench ./benchmarks/cmd/bench
	bin/bench --quick --daoli bin/daoli

clean:
	rm -rf bin .tools
