#!/usr/bin/env bash
# Static checks: generated code fresh, buf lint, no breaking API change
# (buf breaking against api/baseline.binpb), gofmt, go vet, and every
# module building on its own (GOWORK=off, siblings through replace).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== generated code is fresh"
./scripts/gen.sh
if [ -n "$(git status --porcelain -- gen proto)" ]; then
	git status --porcelain -- gen proto
	git diff --stat -- gen proto
	echo "generated code differs from proto/: run scripts/gen.sh and commit" >&2
	exit 1
fi

echo "== buf breaking against the published API (api/README.md)"
PATH="$(go env GOPATH)/bin:$PATH" buf breaking --against api/baseline.binpb

echo "== gofmt"
unformatted=$(git ls-files '*.go' | grep -v '^gen/' | xargs -r gofmt -l)
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

echo "== go vet (workspace)"
go vet github.com/pushmesh/pushmesh/...

echo "== each module builds and vets alone (GOWORK=off)"
for mod in $(go list -m -f '{{.Dir}}'); do
	(cd "$mod" && GOWORK=off go build ./... && GOWORK=off go vet ./...) || {
		echo "module $mod does not build on its own" >&2
		exit 1
	}
done
