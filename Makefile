# pushmesh: the common commands. Everything is plain Go underneath.

.PHONY: test check gen tools build bench dev

## test: every test of every module, with the race detector
test:
	./scripts/test.sh

## check: generated code fresh, buf lint, gofmt, go vet, modules build alone
check:
	./scripts/check.sh

## gen: regenerate gen/ from proto/ (offline, pinned plugins)
gen:
	./scripts/gen.sh

## tools: install the pinned buf and protoc plugins
tools:
	./scripts/tools.sh

## build: the service binaries, pushctl and pushemu into bin/
build:
	go build -o bin/ ./profilesvc/cmd/profilesvc ./deliverysvc/cmd/deliverysvc ./trackingsvc/cmd/trackingsvc ./pushctl/cmd/pushctl ./emulator/cmd/pushemu

## bench: the headline benchmarks of every service, as a table (QUICK=1 for a smoke run)
bench:
	./scripts/bench.sh

## dev: the whole system locally, with the emulators and a demo journey
dev:
	go run ./pushctl/cmd/pushctl dev
