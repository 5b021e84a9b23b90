#!/usr/bin/env bash
# Runs every test of every module in the workspace, with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -race -count=1 -timeout 15m "$@" github.com/pushmesh/pushmesh/...
