#!/usr/bin/env bash
# Runs every test of every module in the workspace, with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
# The race detector needs cgo, which Go turns off when it finds no C
# compiler: say so instead of go's "-race requires cgo".
if [ "$(go env CGO_ENABLED)" != 1 ]; then
	echo "the tests run with -race, which needs cgo and a C compiler: install gcc or clang (e.g. apt-get install gcc), or set CC" >&2
	exit 1
fi
go test -race -count=1 -timeout 15m "$@" github.com/pushmesh/pushmesh/...
