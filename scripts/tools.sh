#!/usr/bin/env bash
# Installs the pinned code-generation and lint tools into $(go env GOPATH)/bin.
# Building and testing need none of them: generated code is committed.
set -euo pipefail
BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

bin="$(go env GOPATH)/bin"
have() { [ -x "$bin/$1" ] && "$bin/$1" --version 2>/dev/null | grep -q -- "${2#v}"; }

have buf "$BUF_VERSION" || GOWORK=off go install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
have protoc-gen-go "$PROTOC_GEN_GO_VERSION" || GOWORK=off go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
have protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION" || GOWORK=off go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
