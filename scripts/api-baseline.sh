#!/usr/bin/env bash
# Records the current protobuf API as the baseline that `buf breaking`
# checks every change against (scripts/check.sh). Run it only when a
# breaking change is intended, e.g. for a new major version, and say so in
# the commit message.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/tools.sh"
export PATH="$(go env GOPATH)/bin:$PATH"
buf build -o api/baseline.binpb
echo "api/baseline.binpb now holds the API of proto/ ($(git rev-parse --short HEAD 2>/dev/null || echo 'uncommitted'))"
