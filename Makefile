# The everyday targets. The README's two commands are scripts/demo.sh and
# scripts/test.sh; these targets call the same scripts.

GO ?= go

.PHONY: build demo test lint generate check-generate bench clean

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

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s -count 5 ./mapper/

clean:
	rm -rf bin .tools
