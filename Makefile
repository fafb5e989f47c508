# Switchboard. Two commands set everything up on a fresh machine:
#   make run    the whole system in one process (switchboard dev)
#   make test   every test, with the race detector
GO      ?= go
BIN     := bin/switchboard
PKGS    := ./...

.PHONY: run build test vet compose-check bench fmt clean

run: build
	./$(BIN) dev

build:
	$(GO) build -o $(BIN) ./services/cmd/switchboard

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l events schemas services)" || { gofmt -l events schemas services; echo "gofmt needed"; exit 1; }

test: vet compose-check
	$(GO) test -race -count=1 -timeout 30m $(PKGS)
	@# The race detector slows the 10,000-job end-to-end test down to 2,000
	@# jobs; run it once more at full size without it.
	$(GO) test -count=1 -timeout 10m -run TestTenThousandJobsSurviveFailures ./services/internal/e2e/

# docker-compose.yml must stay valid; CI installs docker-compose to check it.
compose-check:
	@if command -v docker-compose >/dev/null 2>&1; then \
		docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid"; \
	else echo "docker-compose not installed: docker-compose.yml not checked"; fi

# Benchmarks: every target of the issues, each beside its baseline measured
# in the same run. Each line sets the iterations its benchmark needs.
BENCH = $(GO) test -run '^$$' -benchmem -timeout 30m
bench:
	$(BENCH) -bench . ./events/
	$(BENCH) -bench Prober1000 -benchtime 10x ./services/prober/
	$(BENCH) -bench Evaluator -benchtime 5000x ./services/evaluator/
	$(BENCH) -bench DurableVsBare -benchtime 3000x ./services/worker/
	$(BENCH) -bench Interactive -benchtime 20000x ./services/gateway/

fmt:
	gofmt -w events schemas services

clean:
	rm -rf bin
