#!/usr/bin/env bash
# Regenerates gen/ from proto/ with the pinned local plugins, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/tools.sh"
export PATH="$(go env GOPATH)/bin:$PATH"
buf lint
# buf's `clean: true` would delete gen/go.mod, so clear only generated trees.
rm -rf gen/pushmesh
buf generate
