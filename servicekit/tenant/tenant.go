// Package tenant carries the tenant every pushmesh call is scoped to. The
// tenant travels in the `x-pushmesh-tenant` gRPC metadata; without it a call
// belongs to the "default" tenant. Stores key everything by tenant, so adding
// authentication later only changes who may name which tenant, not the data.
package tenant

import (
	"context"
	"fmt"
)

// MetadataKey is the gRPC metadata key (and HTTP header) naming the tenant.
const MetadataKey = "x-pushmesh-tenant"

// Default is the tenant of calls that name none.
const Default = "default"

// MaxLen bounds a tenant id so it stays cheap as a key prefix.
const MaxLen = 64

type ctxKey struct{}

// With returns ctx scoped to tenant id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the tenant of ctx, or Default.
func FromContext(ctx context.Context) string {
	if id, ok := ctx.Value(ctxKey{}).(string); ok && id != "" {
		return id
	}
	return Default
}

// Validate checks a tenant id: 1 to 64 characters of lowercase letters,
// digits, '-' and '_', starting with a letter or digit.
func Validate(id string) error {
	if id == "" || len(id) > MaxLen {
		return fmt.Errorf("tenant id must be 1 to %d characters, got %d", MaxLen, len(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return fmt.Errorf("tenant id %q: character %q at %d is not allowed (use a-z, 0-9, '-' and '_')", id, c, i)
		}
	}
	return nil
}
