// Package servicekit is the shared runtime of the pushmesh services: one gRPC
// server bootstrap (health, reflection, OpenTelemetry, tenancy, per-connection
// stream and keepalive limits, bounded graceful shutdown), one client dialer
// (with keepalive pings the servers accept), one place that builds TLS
// configurations from PEM files (tlsconfig, reloading rotated certificates),
// one telemetry setup, one mapping from domain
// errors to gRPC status, small helpers for configuration and bbolt, and
// writebatch, which merges the frame writes of busy HTTP/2 connections.
//
// Domain packages depend only on the gRPC-free parts: fault and tenant.
package servicekit
