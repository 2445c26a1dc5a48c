# wgmesh — every developer and CI entry point. `make help` lists the targets.
SHELL        := /bin/bash
GO           ?= go
BIN          := bin/wgmesh
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT       ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS      := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Tests get a generous per-package timeout: privileged data-plane tests move
# tens of MiB through userspace WireGuard on a shared 2-core machine.
TEST_TIMEOUT ?= 20m

.PHONY: help build test unit e2e demo demo-k8s bench lint fuzz graph-example manifests clean

help:
	@echo "make demo      live 3-node encrypted mesh in network namespaces (root)"
	@echo "make test      lint + unit + privileged + e2e tests"
	@echo "make build     build $(BIN)"
	@echo "make bench     benchmarks; writes bench/RESULTS.md"
	@echo "make lint      gofmt + go vet"
	@echo "make fuzz      every Fuzz test of both modules, 20 s each"
	@echo "make e2e       end-to-end scenarios against a real kube-apiserver"
	@echo "make manifests regenerate deploy/kubernetes (the kustomize base) from the Helm chart deploy/helm/wgmesh"
	@echo "make graph-example  redraw docs/mesh.svg (the README's picture) from the graph golden test (needs Graphviz)"

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/wgmesh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if [ -d e2e ]; then cd e2e && $(GO) vet ./...; fi

unit:
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...

test: lint unit e2e

# -parallel 4: only the UML kernel scenarios are parallel tests; they wait on
# their guests, not on CPU, so four at once overlap after the other tests.
e2e: build
	@if [ -d e2e ]; then cd e2e && WGMESH_BIN=$(CURDIR)/$(BIN) $(GO) test -timeout 85m -count=1 -parallel 4 -v ./... 2>&1 | tee /tmp/wgmesh-e2e.log | awk -f testfilter.awk; exit $${PIPESTATUS[0]}; fi

demo: build
	cd e2e && $(GO) run ./cmd/demo --wgmesh $(CURDIR)/$(BIN)

demo-k8s: build
	cd e2e && $(GO) run ./cmd/demo --wgmesh $(CURDIR)/$(BIN) --k8s

bench: build
	$(GO) run ./bench/cmd/benchrun --wgmesh $(CURDIR)/$(BIN) --out bench/RESULTS.md

# Both modules: the e2e module holds the lab's parsers and the Helm chart's.
fuzz:
	@for mod in . e2e; do ( cd $$mod && for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
	  done; done ) || exit 1; done

# The README's picture is the golden local view of `wgmesh graph`, rendered
# by Graphviz: the same renderer the command uses, on fixed input.
graph-example:
	$(GO) test -count=1 -run '^TestGraphGolden$$' ./cmd/wgmesh -update
	dot -Tsvg cmd/wgmesh/testdata/graph/local.dot -o docs/mesh.svg

# The kustomize base is the Helm chart rendered with its default values (and
# the chart's alert rules a copy of deploy/monitoring/alerts.yaml); the Helm
# SDK lives in the e2e module. e2e/helmchart's tests fail when they differ.
manifests:
	cd e2e && $(GO) run ./cmd/manifests --root $(CURDIR)

clean:
	rm -rf bin
